"""A test-only custom node pack: makes a ComfyUI server process recognise the tiny test checkpoints."""

import importlib.util
import os
import sys

# Loaded by file path: `tests` would resolve to ComfyUI's own tests/ package inside the server process.
_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "tiny_host_models.py")
_SPEC = importlib.util.spec_from_file_location("realisid_tiny_host_models", _PATH)
tiny_host_models = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = tiny_host_models
_SPEC.loader.exec_module(tiny_host_models)
tiny_host_models.register_tiny_families()

NODE_CLASS_MAPPINGS: dict = {}
