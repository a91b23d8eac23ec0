"""The model files the bundled workflows name: what each is, where it goes, where it comes from, its licence.

One table for everything a user meets when a file is missing: the workflows' `properties.models` (ComfyUI's
Missing Models dialog), the loaders' errors, the headless runner's list and the README's "Which path needs what".
Nothing here downloads anything; URLs are only shown.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFile:
    name: str  # the file name the workflows use (inside `directory`)
    directory: str  # ComfyUI model folder name (folder_paths), e.g. "checkpoints"
    what: str
    url: str | None  # public download; None = no public source exists
    size: str
    licence: str
    note: str = ""  # e.g. "rename it to ..."
    bundled: bool = False  # ships inside the pack (RealisID-Mini): nothing to download or train


INSIGHTFACE_PACK_FILES = {
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx"),
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx"),
}
# The file of each pack that stands for the whole pack in the frontend's Missing Models dialog (one download:
# the dialog keys entries by URL, so one entry per pack). The runner and the node check all five.
INSIGHTFACE_PACK_MARKER = {"antelopev2": "glintr100.onnx", "buffalo_l": "w600k_r50.onnx"}
INSIGHTFACE_LICENCE = "insightface models: non-commercial research use only"

SDXL_BASE = ModelFile(
    "sd_xl_base_1.0.safetensors", "checkpoints", "Stable Diffusion XL 1.0 base checkpoint",
    "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
    "6.9 GB", "CreativeML Open RAIL++-M")
CLIP_VISION_H = ModelFile(
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision", "OpenCLIP ViT-H/14 vision encoder (LAION-2B)",
    "https://huggingface.co/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors",
    "2.5 GB", "MIT (LAION OpenCLIP weights)",
    "downloads as model.safetensors: rename it to CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
INSTANTID_CONTROLNET = ModelFile(
    "instantid_controlnet.safetensors", "controlnet", "InstantID's IdentityNet (an SDXL ControlNet)",
    "https://huggingface.co/InstantX/InstantID/resolve/main/ControlNetModel/diffusion_pytorch_model.safetensors",
    "2.5 GB", "Apache-2.0 (InstantID README and model card)",
    "downloads as diffusion_pytorch_model.safetensors: rename it to instantid_controlnet.safetensors")
INSTANTID_IP_ADAPTER = ModelFile(
    "ip-adapter.bin", "instantid", "InstantID's IP-Adapter (Resampler + cross-attention weights)",
    "https://huggingface.co/InstantX/InstantID/resolve/main/ip-adapter.bin",
    "1.7 GB", "Apache-2.0 (InstantID README and model card)")
REALISID_SDXL = ModelFile(
    "realisid_sdxl.safetensors", "realisid",
    "a RealisID checkpoint for SDXL (local branch, global branch, identity projector)",
    None, "about 5 GB (fp16)", "yours (you train it)")
ANTELOPEV2 = ModelFile(
    "models/antelopev2/" + INSIGHTFACE_PACK_MARKER["antelopev2"], "insightface",
    "insightface antelopev2 pack (detector, ArcFace glintr100, landmarks): five .onnx files",
    # the download InstantID's README links (insightface's own release URL for antelopev2 is gone)
    "https://drive.google.com/file/d/18wEUfMNohBJ4K3Ly5wpTejPfDzp-8fI8/view",
    "0.4 GB unzipped", INSIGHTFACE_LICENCE,
    "unzip so the five .onnx files sit directly in models/insightface/models/antelopev2/")
BUFFALO_L = ModelFile(
    "models/buffalo_l/" + INSIGHTFACE_PACK_MARKER["buffalo_l"], "insightface",
    "insightface buffalo_l pack (detector, ArcFace w600k_r50, landmarks): five .onnx files",
    "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
    "0.3 GB unzipped", INSIGHTFACE_LICENCE,
    "unzip so the five .onnx files sit directly in models/insightface/models/buffalo_l/")
MINI_BASE = ModelFile(
    "realisid_mini_base.safetensors", "checkpoints",
    "the RealisID-Mini base model (a small SDXL-architecture model of the Mini cartoon world, 256 px)",
    None, "27 MB (fp16)", "GPL-3.0 (this pack's licence)", "in the pack's models/mini/checkpoints/", bundled=True)
MINI_REALISID = ModelFile(
    "realisid_mini.safetensors", "realisid",
    "the RealisID-Mini model (local branch, global branch, identity projector) for the Mini base",
    None, "12 MB (fp16)", "GPL-3.0 (this pack's licence)", "in the pack's models/mini/realisid/",
    bundled=True)

CATALOGUE = (SDXL_BASE, CLIP_VISION_H, INSTANTID_CONTROLNET, INSTANTID_IP_ADAPTER, REALISID_SDXL, ANTELOPEV2,
             BUFFALO_L, MINI_BASE, MINI_REALISID)
INSIGHTFACE_PACKS = {"antelopev2": ANTELOPEV2, "buffalo_l": BUFFALO_L}

# (node type, input) -> the ComfyUI model folder the file named by that input belongs in
MODEL_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("RealisIDModelLoader", "model_name"): "realisid",
    ("RealisIDInstantIDLoader", "control_net_name"): "controlnet",
    ("RealisIDInstantIDLoader", "ip_adapter_name"): "instantid",
}
FACE_ANALYSIS = "RealisIDFaceAnalysis"

MINI_NOTE = ("RealisID-Mini, the pack's own miniature model, needs no download: its files ship inside the pack "
             "(models/mini/; see models/mini/README.md)")


def lookup(directory: str, name: str) -> ModelFile | None:
    return next((m for m in CATALOGUE if m.directory == directory and m.name == name), None)


def insightface_pack(backend: str) -> str | None:
    """The pack a Face Analysis backend value needs ('insightface antelopev2' -> 'antelopev2'), or None."""
    if isinstance(backend, str) and backend.startswith("insightface "):
        return backend.split()[-1]
    return None


def where_from(entry: ModelFile | None) -> str:
    """One line: where the file comes from (or that it has no public source), its size and licence."""
    if entry is None:
        return "not a file this pack knows: see the workflow's notes"
    if entry.bundled:
        return (f"{entry.what}; it ships inside the pack ({entry.note}): if it is missing, the pack's copy is "
                f"incomplete (reinstall it, or rebuild it with `python -m realisid.mini`, models/mini/README.md)")
    if entry.url is None:
        return (f"{entry.what}; no public download exists: train one with `python -m realisid.train` "
                f"(docs/training.md). {MINI_NOTE}")
    extra = f"; {entry.note}" if entry.note else ""
    return f"{entry.what}, {entry.size}, {entry.licence}: {entry.url}{extra}"


def missing_file_message(directory: str, name: str, searched: list[str]) -> str:
    """What a loader says when `name` is not in any of the `searched` folders of `directory`."""
    entry = lookup(directory, name)
    folders = ", ".join(searched) if searched else f"models/{directory}"
    head = f"'{name}' is not in models/{directory} (searched: {folders})."
    return f"{head} It is {where_from(entry)}" if entry else f"{head} Put the file there or pick another one."


def workflow_model_entries(prompt: dict) -> tuple[dict[str, list[dict]], list[dict]]:
    """The `properties.models` of each node of an API prompt (node id -> entries whose name is one of the node's
    widget values, the form the frontend matches) and the workflow-level entries (insightface packs: their
    files are not widget values). Only files with a public URL: the frontend's schema requires one."""
    per_node: dict[str, list[dict]] = {}
    top: list[dict] = []
    for node_id, node in prompt.items():
        for (class_type, input_name), directory in MODEL_INPUTS.items():
            value = node["inputs"].get(input_name)
            if node["class_type"] != class_type or not isinstance(value, str):
                continue
            entry = lookup(directory, value)
            if entry is not None and entry.url:
                per_node.setdefault(node_id, []).append(
                    {"name": entry.name, "url": entry.url, "directory": entry.directory})
        if node["class_type"] == FACE_ANALYSIS:
            pack = insightface_pack(node["inputs"].get("backend"))
            entry = INSIGHTFACE_PACKS.get(pack)
            if entry is not None and all(e["name"] != entry.name for e in top):
                top.append({"name": entry.name, "url": entry.url, "directory": entry.directory})
    return per_node, top
