"""Model folders, registered through folder_paths so that extra_model_paths.yaml works for them."""

import os

import folder_paths

# name -> (default folder under ComfyUI's models dir, file extensions listed in the loaders)
MODEL_FOLDERS = {
    "realisid": ("realisid", {".safetensors"}),
    "instantid": ("instantid", {".safetensors", ".bin"}),
    "insightface": ("insightface", set()),
}


def register_model_folders() -> None:
    """Add our folders, keeping any path a user's extra_model_paths.yaml registered first."""
    for name, (subdir, extensions) in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, subdir)
        paths, known = folder_paths.folder_names_and_paths.get(name, ([], set()))
        if default not in paths:
            paths = [*paths, default]
        folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)


def register_mini() -> None:
    """RealisID-Mini ships inside the pack: its folders join ComfyUI's lists (after the user's own folders) and
    ComfyUI's checkpoint detection learns the Mini family, so the stock loaders read the bundled files."""
    from realisid.mini import family, files

    family.register()
    for name, folder in (("checkpoints", files.CHECKPOINTS_DIR), ("realisid", files.REALISID_DIR)):
        if folder.is_dir():
            folder_paths.add_model_folder_path(name, str(folder))


def insightface_root() -> str:
    """The insightface root: packs live in <root>/models/<pack>/ (the layout ComfyUI_InstantID uses)."""
    for path in folder_paths.get_folder_paths("insightface"):
        if os.path.isdir(os.path.join(path, "models")):
            return path
    return folder_paths.get_folder_paths("insightface")[0]
