"""The fast unit tier: pure geometry, faces, drawing, the Mini world, the data cache and the checkpoint format, no ComfyUI boot.

Alone, in seconds: `python -m pytest tests/unit --confcutdir tests/unit` (the cut keeps tests/conftest.py, which
boots the ComfyUI host, from loading). Inside the whole suite these run with everything else.
"""
