#!/usr/bin/env bash
# The main job: run a bundled workflow headlessly in the ComfyUI host (default: one person, single face).
# Extra arguments go to the runner, e.g. --set 12.image=me.png --output out/
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
REALISID_HOME="${REALISID_HOME:-$HOME/.cache/comfyui-realisid}"
export COMFYUI_DIR="${COMFYUI_DIR:-$(cat "$REALISID_HOME/comfyui-dir")}"
WORKFLOW="${WORKFLOW:-$REPO/workflows/api/realisid_single_person.json}"
cd "$REPO"
exec "$REALISID_HOME/venv/bin/python" -m realisid run "$WORKFLOW" --comfyui "$COMFYUI_DIR" "$@"
