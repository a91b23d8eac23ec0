"""ComfyUI-RealisID. ComfyUI imports this package; the V3 entry point lives in nodes/."""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
# Appended, not prepended: ComfyUI's own `nodes` module must keep winning over this pack's nodes/ folder,
# while `import realisid` resolves to the one copy the nodes, the runner and the tests share.
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

# pytest imports this file as a plain module (no parent package) when the checkout's folder name is not a valid
# identifier; there is no node system to register with then.
if __package__:
    from .nodes import comfy_entrypoint  # noqa: F401

    WEB_DIRECTORY = "./web"  # web/realisid.js: UI graphs saved by earlier versions load with the right values
    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
