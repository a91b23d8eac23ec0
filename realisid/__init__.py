"""RealisID: identity customization with local and global ControlNet branches (method code, no ComfyUI glue)."""
