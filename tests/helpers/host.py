"""Boot the real ComfyUI host (0.3.75, unpacked by scripts/setup.sh) inside the test process, on CPU."""

import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def comfyui_dir() -> pathlib.Path:
    """Where scripts/setup.sh unpacked ComfyUI: $COMFYUI_DIR, else the path it recorded."""
    if os.environ.get("COMFYUI_DIR"):
        return pathlib.Path(os.environ["COMFYUI_DIR"])
    home = pathlib.Path(os.environ.get("REALISID_HOME", pathlib.Path.home() / ".cache" / "comfyui-realisid"))
    recorded = home / "comfyui-dir"
    if recorded.exists():
        return pathlib.Path(recorded.read_text().strip())
    raise RuntimeError("ComfyUI host not found: run scripts/setup.sh or set COMFYUI_DIR")


def bootstrap() -> pathlib.Path:
    """Put ComfyUI on sys.path with --cpu semantics. Idempotent; must run before `import comfy.model_management`."""
    root = comfyui_dir()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if str(REPO) not in sys.path:
        sys.path.insert(1, str(REPO))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    # Claim `utils` for ComfyUI's utils/ package before `import nodes` puts comfy/ first on sys.path.
    import utils.extra_config  # noqa: F401

    return root
