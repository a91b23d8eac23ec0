#!/usr/bin/env bash
# The test command: lint, then the whole suite against the real ComfyUI host on CPU. Run scripts/setup.sh first.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
REALISID_HOME="${REALISID_HOME:-$HOME/.cache/comfyui-realisid}"
VENV="$REALISID_HOME/venv"
export COMFYUI_DIR="${COMFYUI_DIR:-$(cat "$REALISID_HOME/comfyui-dir")}"
export PATH="$VENV/bin:$PATH"   # ComfyUI and our server tests spawn plain `python`
cd "$REPO"
ruff check .
python -m pytest "$@"
