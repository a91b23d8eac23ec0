"""Writes the bundled RealisID workflows: API prompts (workflows/api) and their UI twins (workflows/ui).

The API prompts are defined here once; the UI files are rendered from them with the node schemas of the real
host, so the twins cannot drift (tests/test_workflows.py checks both). InstantID workflows are kept as API
files in workflows/api and only get their UI twin from here.

    COMFYUI_DIR=... python workflows/build.py             # both forms
    COMFYUI_DIR=... python workflows/build.py --ui-only   # the UI files from the API files as they are

Each UI file gets three groups (identity, layout, sampling), a Note saying what to set, and its model files'
sources in properties.models (see realisid/host/workflow_format.py and realisid/model_files.py).
"""

from __future__ import annotations

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
SDXL = "sd_xl_base_1.0.safetensors"
REALISID = "realisid_sdxl.safetensors"
CLIP_VISION = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
NEGATIVE = "blurry, lowres, deformed, bad anatomy, watermark"
MINI_BASE = "realisid_mini_base.safetensors"
MINI_MODEL = "realisid_mini.safetensors"
MINI_BACKEND = "mini (RealisID-Mini world, bundled)"
MINI_SIZE = 256  # the Mini world's image side


class Graph:
    """A tiny API-prompt builder: node() returns the id; out(id, i) is a link."""

    def __init__(self):
        self.prompt: dict = {}

    def node(self, class_type: str, title: str | None = None, **inputs) -> str:
        node_id = str(len(self.prompt) + 1)
        self.prompt[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title or class_type}}
        return node_id

    @staticmethod
    def out(node_id: str, index: int = 0) -> list:
        return [node_id, index]


def base(g: Graph, prompt: str, width: int, height: int, ckpt_name: str = SDXL, negative: str = NEGATIVE):
    ckpt = g.node("CheckpointLoaderSimple", "Base model", ckpt_name=ckpt_name)
    pos = g.node("CLIPTextEncode", "Prompt", text=prompt, clip=g.out(ckpt, 1))
    neg = g.node("CLIPTextEncode", "Negative", text=negative, clip=g.out(ckpt, 1))
    latent = g.node("EmptyLatentImage", "Size", width=width, height=height, batch_size=1)
    return ckpt, pos, neg, latent


def realisid_inputs(g: Graph):
    model = g.node("RealisIDModelLoader", "RealisID model", model_name=REALISID)
    clip_vision = g.node("CLIPVisionLoader", "CLIP vision", clip_name=CLIP_VISION)
    analysis = g.node("RealisIDFaceAnalysis", "Face analysis", backend="embedded (MTCNN + dlib, offline)",
                      provider="CPU")
    return model, clip_vision, analysis


def encode(g: Graph, image_name: str, title: str, model: str, analysis: str, clip_vision: str | None) -> str:
    """A Face Encoder for one reference photo; clip_vision None for models whose identity is the face backend's
    own embedding (RealisID-Mini)."""
    image = g.node("LoadImage", title, image=image_name)
    extra = {} if clip_vision is None else {"clip_vision": g.out(clip_vision)}
    return g.node("RealisIDFaceEncoder", f"Encode {title.lower()}", image=g.out(image), face_analysis=g.out(analysis),
                  realisid_model=g.out(model), selection="largest", index=0, on_no_face="error",
                  references="each image is a different person", **extra)


def encode_people(g: Graph, references: list[str], model: str, analysis: str, clip_vision: str | None) -> str:
    """One Face Encoder per reference photo, combined in order (person i = reference i)."""
    faces = None
    for i, name in enumerate(references):
        encoded = encode(g, name, f"Person {i + 1}", model, analysis, clip_vision)
        faces = encoded if faces is None else g.node("RealisIDFacesCombine", f"People 1-{i + 1}",
                                                     faces_1=g.out(faces), faces_2=g.out(encoded))
    return faces


def place(g: Graph, faces: list[tuple[float, float, float]]) -> str:
    """Chained numbers layouts; they hold no size (the boxes are fitted to the latent when sampling)."""
    layout = None
    for i, (x, y, size) in enumerate(faces):
        extra = {"previous": g.out(layout)} if layout else {}
        layout = g.node("RealisIDLayoutFromNumbers", f"Face {i + 1}", x=x, y=y, size=size, **extra)
    return layout


SDXL_SAMPLING = {"sampler": "ddim", "scheduler": "ddim_uniform", "steps": 30, "text_scale": 7.5, "id_scale": 5.0}
# the Mini base samples as its gate does (euler, normal, 20 steps, text CFG 4)
MINI_SAMPLING = {"sampler": "euler", "scheduler": "normal", "steps": 20, "text_scale": 4.0, "id_scale": 3.0}


def sample(g: Graph, ckpt: str, pos_neg: tuple[list, list], latent: str, seed: int = 42,
           settings: dict = SDXL_SAMPLING, prefix: str = "realisid") -> str:
    guider = g.node("RealisIDGuider", "Three-way guidance", model=g.out(ckpt), positive=pos_neg[0],
                    negative=pos_neg[1], text_scale=settings["text_scale"], id_scale=settings["id_scale"],
                    id_delay=0.2)
    sampler = g.node("KSamplerSelect", "Sampler", sampler_name=settings["sampler"])
    sigmas = g.node("BasicScheduler", "Schedule", model=g.out(ckpt), scheduler=settings["scheduler"],
                    steps=settings["steps"], denoise=1.0)
    noise = g.node("RandomNoise", "Seed", noise_seed=seed)
    samples = g.node("SamplerCustomAdvanced", "Sample", noise=g.out(noise), guider=g.out(guider),
                     sampler=g.out(sampler), sigmas=g.out(sigmas), latent_image=g.out(latent))
    image = g.node("VAEDecode", "Decode", samples=g.out(samples), vae=g.out(ckpt, 2))
    g.node("SaveImage", "Save", images=g.out(image), filename_prefix=prefix)
    return image


def composite(g: Graph, pos, neg, model, faces, layout) -> str:
    return g.node("RealisIDMultiFaceComposite", "RealisID (local + global)", positive=g.out(pos),
                  negative=g.out(neg), realisid_model=g.out(model), faces=g.out(faces), layout=g.out(layout),
                  local_strength=1.0, global_strength=1.0, start_percent=0.0, end_percent=1.0, crop_size=0,
                  global_mode="per_person", feather=0.0)


def local_then_global(g: Graph, pos, neg, model, faces, layout) -> str:
    """The two branches as separate nodes: Local Branch Apply, then Global Location Apply on its outputs."""
    local = g.node("RealisIDLocalBranchApply", "Local branch", positive=g.out(pos), negative=g.out(neg),
                   realisid_model=g.out(model), faces=g.out(faces), layout=g.out(layout), strength=1.0,
                   start_percent=0.0, end_percent=1.0, crop_size=0, feather=0.0)
    return g.node("RealisIDGlobalLocationApply", "Global branch", positive=g.out(local, 0),
                  negative=g.out(local, 1), realisid_model=g.out(model), faces=g.out(faces), layout=g.out(layout),
                  strength=1.0, start_percent=0.0, end_percent=1.0, mode="per_person")


def preview(g: Graph, layout: str, image: str, faces: str) -> None:
    shown = g.node("RealisIDLayoutPreview", "Boxes and landmarks", layout=g.out(layout), image=g.out(image),
                   faces=g.out(faces))
    g.node("PreviewImage", "Preview", images=g.out(shown))


def people_workflow(prompt: str, placements: list[tuple[float, float, float]], width: int, height: int,
                    references: list[str]) -> dict:
    g = Graph()
    ckpt, pos, neg, latent = base(g, prompt, width, height)
    model, clip_vision, analysis = realisid_inputs(g)
    faces = encode_people(g, references, model, analysis, clip_vision)
    layout = place(g, placements)
    comp = composite(g, pos, neg, model, faces, layout)
    g.node("PreviewImage", "Face-to-box mapping", images=g.out(comp, 2))
    image = sample(g, ckpt, (g.out(comp, 0), g.out(comp, 1)), latent)
    preview(g, layout, image, faces)
    return g.prompt


def small_face_workflow() -> dict:
    """A full-body shot (face 1/6 of the shorter side) with the two branches as separate nodes."""
    g = Graph()
    width, height = 832, 1216
    ckpt, pos, neg, latent = base(g, "full-body photo of a woman walking on a beach at sunset, wide shot", width,
                                  height)
    model, clip_vision, analysis = realisid_inputs(g)
    faces = encode(g, "astronaut.jpg", "Person 1", model, analysis, clip_vision)
    layout = place(g, [(0.5, 0.18, 1 / 6)])
    glob = local_then_global(g, pos, neg, model, faces, layout)
    image = sample(g, ckpt, (g.out(glob, 0), g.out(glob, 1)), latent)
    preview(g, layout, image, faces)
    return g.prompt


def pose_workflow() -> dict:
    """The reference's identity with the pose and expression of a driving photo."""
    g = Graph()
    width = height = 1024
    ckpt, pos, neg, latent = base(g, "portrait photo of a woman in a garden, soft light", width, height)
    model, clip_vision, analysis = realisid_inputs(g)
    faces = encode(g, "astronaut.jpg", "Person 1", model, analysis, clip_vision)
    layout = place(g, [(0.5, 0.4, 0.3)])
    driver = g.node("LoadImage", "Driving photo", image="astronaut_driver.jpg")
    driven = g.node("RealisIDLayoutDrivers", "Pose from photo", layout=g.out(layout), image=g.out(driver),
                    face_analysis=g.out(analysis))
    comp = composite(g, pos, neg, model, faces, driven)
    image = sample(g, ckpt, (g.out(comp, 0), g.out(comp, 1)), latent)
    preview(g, driven, image, faces)
    return g.prompt


def mini_workflow(caption: str, placements: list[tuple[float, float, float]], references: list[str],
                  drive_first: bool = False, separate_branches: bool = False) -> dict:
    """A RealisID-Mini workflow: everything it needs ships in the pack (models/mini, workflows/inputs).
    drive_first: person 1 takes the pose and expression of the bundled driving face; separate_branches: Local
    Branch Apply -> Global Location Apply instead of the Multi-Face Composite."""
    g = Graph()
    ckpt, pos, neg, latent = base(g, caption, MINI_SIZE, MINI_SIZE, ckpt_name=MINI_BASE, negative="")
    model = g.node("RealisIDModelLoader", "RealisID model", model_name=MINI_MODEL)
    analysis = g.node("RealisIDFaceAnalysis", "Face analysis", backend=MINI_BACKEND, provider="CPU")
    faces = encode_people(g, references, model, analysis, None)
    layout = place(g, placements)
    if drive_first:
        driver = g.node("LoadImage", "Driving photo", image="mini_driver.png")
        layout = g.node("RealisIDLayoutDrivers", "Pose from photo", layout=g.out(layout), image=g.out(driver),
                        face_analysis=g.out(analysis))
    if separate_branches:
        conds = local_then_global(g, pos, neg, model, faces, layout)
    else:
        conds = composite(g, pos, neg, model, faces, layout)
        # saved, not previewed: the headless main job writes it beside the image
        g.node("SaveImage", "Face-to-box mapping", images=g.out(conds, 2), filename_prefix="realisid_mini_mapping")
    image = sample(g, ckpt, (g.out(conds, 0), g.out(conds, 1)), latent, settings=MINI_SAMPLING, prefix="realisid_mini")
    preview(g, layout, image, faces)
    return g.prompt


def mini_workflows() -> dict[str, dict]:
    a, b, c = "mini_person_a.png", "mini_person_b.png", "mini_person_c.png"
    return {
        # the main job (scripts/run.sh): two people, person 1 driven, person 2 a small face (1/7)
        "mini_two_people": mini_workflow(
            "two people, half-body shot, in a park, the left one in a red shirt, the right one in a blue shirt",
            [(0.3, 0.3, 0.26), (0.72, 0.5, 1 / 7)], [a, b], drive_first=True),
        "mini_single_person": mini_workflow("one person, close-up portrait, in a city street, wearing a yellow shirt",
                                            [(0.5, 0.35, 0.3)], [a]),
        "mini_three_people": mini_workflow(
            "three people, half-body shot, on a beach, in red, green and purple shirts from left to right",
            [(0.2, 0.35, 0.18), (0.5, 0.3, 0.18), (0.8, 0.35, 0.18)], [a, b, c]),
        "mini_small_face": mini_workflow("one person, full-body shot, in a room, wearing a green shirt",
                                         [(0.5, 0.25, 1 / 7)], [c], separate_branches=True),
        "mini_pose_from_photo": mini_workflow("one person, close-up portrait, in a park, wearing a blue shirt",
                                              [(0.5, 0.35, 0.3)], [b], drive_first=True),
    }


def realisid_workflows() -> dict[str, dict]:
    return {
        "realisid_single_person": people_workflow(
            "photo of a woman astronaut standing in a busy city street", [(0.5, 0.3, 0.25)], 1024, 1024,
            ["astronaut.jpg"]),
        "realisid_two_people": people_workflow(
            "two people sitting on a park bench, candid photo", [(0.3, 0.35, 0.18), (0.7, 0.35, 0.18)], 1216, 832,
            ["astronaut.jpg", "astronaut_driver.jpg"]),
        "realisid_three_people": people_workflow(
            "three friends standing in front of a mountain lake, group photo",
            [(0.2, 0.3, 0.15), (0.5, 0.28, 0.15), (0.8, 0.3, 0.15)], 1216, 832,
            ["astronaut.jpg", "astronaut_driver.jpg", "astronaut.jpg"]),
        "realisid_small_face": small_face_workflow(),
        "realisid_pose_from_photo": pose_workflow(),
    }


def note_for(prompt: dict) -> str:
    """The Note node's text: what to set, node by node (by title), and which model files go where."""
    from realisid import model_files
    from realisid.host import workflow_format

    def titles(kind, group=None):
        return [n["_meta"]["title"] for nid, n in prompt.items() if n["class_type"] == kind
                and (group is None or workflow_format.group_of(prompt, nid) == group)]

    people, drivers = titles("LoadImage", "identity"), titles("LoadImage", "layout")
    faces = titles("RealisIDLayoutFromNumbers")
    sized = titles("EmptyLatentImage") + [n["_meta"]["title"] for n in prompt.values()
                                          if n["class_type"].startswith("RealisIDLayout") and "width" in n["inputs"]]
    lines = ["What to set (left to right, top to bottom):",
             f"1. Identity: a reference photo with one clear face in {', '.join(repr(t) for t in people)} "
             f"({'one person each' if len(people) > 1 else 'the person to generate'}).",
             f"2. Layout: {', '.join(repr(t) for t in faces)}: x, y = the face's centre, size = its side, as "
             f"fractions of the image" + (" (person i goes to face box i)." if len(faces) > 1 else ".")]
    if drivers:
        lines.append(f"   {', '.join(repr(t) for t in drivers)}: the photo whose pose and expression the face copies.")
    size = (f"the output size in {sized[0]!r}" if len(sized) == 1 else
            f"the output size in {', '.join(repr(t) for t in sized)} (keep their width and height the same)")
    lines += [f"3. Sampling: the scene in 'Prompt', the seed in 'Seed', {size}.",
              "Model files (ComfyUI's Missing Models dialog lists the downloadable ones when they are absent):"]
    for node in prompt.values():
        for (kind, name), folder in model_files.MODEL_INPUTS.items():
            value = node["inputs"].get(name)
            if node["class_type"] == kind and isinstance(value, str):
                entry = model_files.lookup(folder, value)
                what = entry.what if entry else "see the README"
                if entry and entry.bundled:
                    what += f"; ships with the pack ({entry.note}), nothing to download"
                elif entry and entry.url is None:
                    what += ("; no public download: train it (python -m realisid.train, docs/training.md). "
                             "RealisID-Mini needs no download")
                elif entry and entry.note:
                    what += f"; {entry.note}"
                lines.append(f"- models/{folder}/{value}: {what}")
        pack = model_files.insightface_pack(node["inputs"].get("backend")) if node["class_type"] == \
            model_files.FACE_ANALYSIS else None
        if pack:
            lines.append(f"- models/insightface/models/{pack}/: the five .onnx files of insightface {pack} "
                         "(non-commercial licence)")
    lines.append("Sources, sizes, licences and VRAM: README, 'Which path needs what'.")
    return "\n".join(lines)


def write_ui(info: dict) -> list[pathlib.Path]:
    """Every UI file rendered from its API twin (the API files as they are on disk)."""
    from realisid.host import workflow_format

    written = []
    for path in sorted((HERE / "api").glob("*.json")):
        prompt = json.loads(path.read_text())
        ui = workflow_format.api_to_ui(prompt, info, note=note_for(prompt))
        target = HERE / "ui" / path.name
        target.write_text(json.dumps(ui, indent=2) + "\n")
        written.append(target)
    return written


def write_all(ui_only: bool = False) -> list[pathlib.Path]:
    from realisid.host import workflow_format

    info = workflow_format.object_info()
    written = []
    if not ui_only:
        for name, prompt in {**realisid_workflows(), **mini_workflows()}.items():
            path = HERE / "api" / f"{name}.json"
            path.write_text(json.dumps(prompt, indent=2) + "\n")
            written.append(path)
    return written + write_ui(info)


def main() -> None:
    sys.path.insert(0, str(HERE.parent))
    from realisid.host import comfy_host

    comfy_host.boot(comfy_host.find_comfyui(), cpu=True)
    comfy_host.load_all_extras()
    comfy_host.load_pack()
    for path in write_all(ui_only="--ui-only" in sys.argv[1:]):
        sys.stderr.write(f"wrote {path.relative_to(HERE.parent)}\n")


if __name__ == "__main__":
    main()
