"""Model folders, registered through folder_paths so that extra_model_paths.yaml works for them; the example
inputs put where LoadImage finds them; the insightface packs made visible to ComfyUI's model list."""

import logging
import os
import pathlib
import shutil

import folder_paths

log = logging.getLogger("realisid")

PACK_DIR = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE_INPUTS = PACK_DIR / "workflows" / "inputs"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}

# name -> (default folder under ComfyUI's models dir, file extensions listed in the loaders)
MODEL_FOLDERS = {
    "realisid": ("realisid", {".safetensors"}),
    "instantid": ("instantid", {".safetensors", ".bin"}),
    "insightface": ("insightface", set()),
}


def register_model_folders(create: bool = True) -> list[str]:
    """Add our folders, keeping any path a user's extra_model_paths.yaml registered first, and create the
    default ones (models/realisid, models/instantid, models/insightface/models) so a user sees where files go.
    Returns the folders it created."""
    created = []
    for name, (subdir, extensions) in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, subdir)
        paths, known = folder_paths.folder_names_and_paths.get(name, ([], set()))
        if default not in paths:
            paths = [*paths, default]
        folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)
        if create:
            # insightface packs live in <root>/models/<pack>/ (the layout ComfyUI_InstantID uses too)
            target = os.path.join(default, "models") if name == "insightface" else default
            if not os.path.isdir(target):
                try:
                    os.makedirs(target, exist_ok=True)
                    created.append(target)
                except OSError as error:  # a read-only install: the user can still point extra_model_paths here
                    log.warning("RealisID: could not create the model folder %s (%s)", target, error)
    if created:
        log.info("RealisID: created the model folder(s) %s", ", ".join(created))
    return created


def register_mini() -> None:
    """RealisID-Mini ships inside the pack: its folders join ComfyUI's lists (after the user's own folders) and
    ComfyUI's checkpoint detection learns the Mini family, so the stock loaders read the bundled files."""
    from realisid.mini import family, files

    family.register()
    for name, folder in (("checkpoints", files.CHECKPOINTS_DIR), ("realisid", files.REALISID_DIR)):
        if folder.is_dir():
            folder_paths.add_model_folder_path(name, str(folder))


def stage_example_inputs(input_dir: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """Copy the pack's example images (workflows/inputs) into ComfyUI's input folder, where LoadImage lists them.
    A file of the same name that is already there is never overwritten. Returns (copied, kept): the names copied
    and the names left alone because the user's folder holds a different file under that name."""
    target = pathlib.Path(input_dir or folder_paths.get_input_directory())
    copied, kept = [], []
    for source in sorted(EXAMPLE_INPUTS.iterdir()):
        if source.suffix.lower() not in IMAGE_SUFFIXES or not source.is_file():
            continue
        dest = target / source.name
        if dest.exists():
            if dest.read_bytes() != source.read_bytes():
                kept.append(source.name)
            continue
        try:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            copied.append(source.name)
        except OSError as error:
            log.warning("RealisID: could not copy the example input %s to %s (%s)", source.name, target, error)
    if copied:
        log.info("RealisID: copied the example input(s) %s into %s", ", ".join(copied), target)
    if kept:
        log.info("RealisID: kept your own %s in %s (the bundled workflows will load your file)", ", ".join(kept),
                 target)
    return copied, kept


def insightface_root(pack: str | None = None) -> str:
    """The insightface root: packs live in <root>/models/<pack>/ (the layout ComfyUI_InstantID uses). The first
    registered root that holds `pack` (any pack with .onnx files when None), else the first with a models/
    folder, else the first registered."""
    roots = folder_paths.get_folder_paths("insightface")
    for root in roots:
        models = pathlib.Path(root) / "models"
        packs = [models / pack] if pack else (list(models.iterdir()) if models.is_dir() else [])
        if any(p.is_dir() and any(p.glob("*.onnx")) for p in packs):
            return root
    for root in roots:
        if os.path.isdir(os.path.join(root, "models")):
            return root
    return roots[0]


def insightface_model_files() -> list[dict]:
    """Every .onnx file under the insightface roots, in the form ComfyUI's /experiment/models lists files."""
    found = []
    for index, root in enumerate(folder_paths.get_folder_paths("insightface")):
        for dirpath, subdirs, filenames in os.walk(root, followlinks=True):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for file_name in sorted(filenames):
                if not file_name.endswith(".onnx"):
                    continue
                path = os.path.join(dirpath, file_name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                found.append({"name": os.path.relpath(path, root), "pathIndex": index, "modified": stat.st_mtime,
                              "created": stat.st_ctime, "size": stat.st_size})
    return found


def show_insightface_packs_in_model_list() -> bool:
    """ComfyUI's /experiment/models/<folder> lists only torch-style files (.safetensors, .bin, ...), so the
    frontend (its Missing Models dialog, its model library) never sees an installed insightface pack's .onnx
    files. Wrap the listing for the "insightface" folder only; every other folder is untouched. Returns whether
    the wrap is in place (False when this ComfyUI has no such listing)."""
    try:
        from app.model_manager import ModelFileManager
    except Exception as error:  # another ComfyUI layout, or its server dependencies missing: nothing to wrap
        log.debug("RealisID: ComfyUI's model list not found (%s)", error)
        return False
    original = getattr(ModelFileManager, "get_model_file_list", None)
    if original is None:
        return False
    if getattr(original, "_realisid_insightface", False):
        return True

    def get_model_file_list(self, folder_name: str):
        listed = original(self, folder_name)
        if folder_name != "insightface":
            return listed
        names = {item.get("name") for item in listed if isinstance(item, dict)}
        return [*listed, *(item for item in insightface_model_files() if item["name"] not in names)]

    get_model_file_list._realisid_insightface = True
    ModelFileManager.get_model_file_list = get_model_file_list
    return True


def on_load() -> None:
    """What the pack does when ComfyUI loads it (nodes/__init__.py)."""
    register_model_folders()
    register_mini()
    stage_example_inputs()
    show_insightface_packs_in_model_list()
