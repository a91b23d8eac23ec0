#!/usr/bin/env bash
# The main job: run a bundled workflow headlessly in the ComfyUI host. Default: RealisID-Mini, two people from two
# bundled reference images placed by a layout (one a small face, one driven by a bundled photo's pose and
# expression); every file it needs ships in the pack. WORKFLOW=workflows/api/<name>.json runs another one.
# Extra arguments go to the runner, e.g. --set "Person 1.image=me.png" --output out/
# Needs the environment scripts/setup.sh builds. Inside a ComfyUI install, run the runner with ComfyUI's own
# Python instead: python -m realisid run workflows/api/mini_two_people.json (it finds ComfyUI itself).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
REALISID_HOME="${REALISID_HOME:-$HOME/.cache/comfyui-realisid}"
PY="$REALISID_HOME/venv/bin/python"
if [ ! -x "$PY" ]; then
  cat >&2 <<EOF
run.sh: no environment at $REALISID_HOME (no $PY).
Run the set-up first; it builds a Python environment and a ComfyUI host there (a few minutes, PyPI only):

    bash scripts/setup.sh && bash scripts/run.sh

If this pack is installed in ComfyUI/custom_nodes, use ComfyUI's own Python instead:

    cd $REPO && python -m realisid run workflows/api/mini_two_people.json
EOF
  exit 2
fi
if [ -z "${COMFYUI_DIR:-}" ] && [ -f "$REALISID_HOME/comfyui-dir" ]; then
  COMFYUI_DIR="$(cat "$REALISID_HOME/comfyui-dir")"
fi
# Without COMFYUI_DIR the runner looks for the ComfyUI whose custom_nodes holds this pack.
[ -n "${COMFYUI_DIR:-}" ] && export COMFYUI_DIR
WORKFLOW="${WORKFLOW:-$REPO/workflows/api/mini_two_people.json}"
cd "$REPO"
exec "$PY" -m realisid run "$WORKFLOW" "$@"
