"""Writes the bundled RealisID workflows: API prompts (workflows/api) and their UI twins (workflows/ui).

The API prompts are defined here once; the UI files are rendered from them with the node schemas of the real
host, so the twins cannot drift (tests/test_workflows.py checks both). InstantID workflows are kept as API
files in workflows/api and only get their UI twin from here.

    COMFYUI_DIR=... python workflows/build.py
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
SDXL = "sd_xl_base_1.0.safetensors"
REALISID = "realisid_sdxl.safetensors"
CLIP_VISION = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
NEGATIVE = "blurry, lowres, deformed, bad anatomy, watermark"


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


def base(g: Graph, prompt: str, width: int, height: int):
    ckpt = g.node("CheckpointLoaderSimple", "Base model", ckpt_name=SDXL)
    pos = g.node("CLIPTextEncode", "Prompt", text=prompt, clip=g.out(ckpt, 1))
    neg = g.node("CLIPTextEncode", "Negative", text=NEGATIVE, clip=g.out(ckpt, 1))
    latent = g.node("EmptyLatentImage", "Size", width=width, height=height, batch_size=1)
    return ckpt, pos, neg, latent


def realisid_inputs(g: Graph):
    model = g.node("RealisIDModelLoader", "RealisID model", model_name=REALISID)
    clip_vision = g.node("CLIPVisionLoader", "CLIP vision", clip_name=CLIP_VISION)
    analysis = g.node("RealisIDFaceAnalysis", "Face analysis", backend="embedded (MTCNN + dlib, offline)",
                      provider="CPU")
    return model, clip_vision, analysis


def encode(g: Graph, image_name: str, title: str, model: str, analysis: str, clip_vision: str) -> str:
    image = g.node("LoadImage", title, image=image_name)
    return g.node("RealisIDFaceEncoder", f"Encode {title.lower()}", image=g.out(image), face_analysis=g.out(analysis),
                  realisid_model=g.out(model), selection="largest", index=0, on_no_face="error",
                  references="each image is a different person", clip_vision=g.out(clip_vision))


def place(g: Graph, faces: list[tuple[float, float, float]], width: int, height: int) -> str:
    layout = None
    for i, (x, y, size) in enumerate(faces):
        extra = {"previous": g.out(layout)} if layout else {}
        layout = g.node("RealisIDLayoutFromNumbers", f"Face {i}", width=width, height=height, x=x, y=y, size=size,
                        **extra)
    return layout


def sample(g: Graph, ckpt: str, pos_neg: tuple[list, list], latent: str, steps: int = 30, seed: int = 42) -> str:
    guider = g.node("RealisIDGuider", "Three-way guidance", model=g.out(ckpt), positive=pos_neg[0],
                    negative=pos_neg[1], text_scale=7.5, id_scale=5.0, id_delay=0.2)
    sampler = g.node("KSamplerSelect", "Sampler", sampler_name="ddim")
    sigmas = g.node("BasicScheduler", "Schedule", model=g.out(ckpt), scheduler="ddim_uniform", steps=steps,
                    denoise=1.0)
    noise = g.node("RandomNoise", "Seed", noise_seed=seed)
    samples = g.node("SamplerCustomAdvanced", "Sample", noise=g.out(noise), guider=g.out(guider),
                     sampler=g.out(sampler), sigmas=g.out(sigmas), latent_image=g.out(latent))
    image = g.node("VAEDecode", "Decode", samples=g.out(samples), vae=g.out(ckpt, 2))
    g.node("SaveImage", "Save", images=g.out(image), filename_prefix="realisid")
    return image


def composite(g: Graph, pos, neg, model, faces, layout) -> str:
    return g.node("RealisIDMultiFaceComposite", "RealisID (local + global)", positive=g.out(pos),
                  negative=g.out(neg), realisid_model=g.out(model), faces=g.out(faces), layout=g.out(layout),
                  local_strength=1.0, global_strength=1.0, start_percent=0.0, end_percent=1.0, crop_size=0,
                  global_mode="per_person", feather=0.0)


def preview(g: Graph, layout: str, image: str, faces: str) -> None:
    shown = g.node("RealisIDLayoutPreview", "Boxes and landmarks", layout=g.out(layout), image=g.out(image),
                   faces=g.out(faces))
    g.node("PreviewImage", "Preview", images=g.out(shown))


def people_workflow(prompt: str, placements: list[tuple[float, float, float]], width: int, height: int,
                    references: list[str]) -> dict:
    g = Graph()
    ckpt, pos, neg, latent = base(g, prompt, width, height)
    model, clip_vision, analysis = realisid_inputs(g)
    faces = None
    for i, name in enumerate(references):
        encoded = encode(g, name, f"Person {i}", model, analysis, clip_vision)
        faces = encoded if faces is None else g.node("RealisIDFacesCombine", f"People 0-{i}",
                                                     faces_1=g.out(faces), faces_2=g.out(encoded))
    layout = place(g, placements, width, height)
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
    faces = encode(g, "astronaut.jpg", "Person 0", model, analysis, clip_vision)
    layout = place(g, [(0.5, 0.18, 1 / 6)], width, height)
    local = g.node("RealisIDLocalBranchApply", "Local branch", positive=g.out(pos), negative=g.out(neg),
                   realisid_model=g.out(model), faces=g.out(faces), layout=g.out(layout), strength=1.0,
                   start_percent=0.0, end_percent=1.0, crop_size=0, feather=0.0)
    glob = g.node("RealisIDGlobalLocationApply", "Global branch", positive=g.out(local, 0),
                  negative=g.out(local, 1), realisid_model=g.out(model), faces=g.out(faces), layout=g.out(layout),
                  strength=1.0, start_percent=0.0, end_percent=1.0, mode="per_person")
    image = sample(g, ckpt, (g.out(glob, 0), g.out(glob, 1)), latent)
    preview(g, layout, image, faces)
    return g.prompt


def pose_workflow() -> dict:
    """The reference's identity with the pose and expression of a driving photo."""
    g = Graph()
    width = height = 1024
    ckpt, pos, neg, latent = base(g, "portrait photo of a woman in a garden, soft light", width, height)
    model, clip_vision, analysis = realisid_inputs(g)
    faces = encode(g, "astronaut.jpg", "Person 0", model, analysis, clip_vision)
    layout = place(g, [(0.5, 0.4, 0.3)], width, height)
    driver = g.node("LoadImage", "Driving photo", image="astronaut_driver.jpg")
    driven = g.node("RealisIDLayoutDrivers", "Pose from photo", layout=g.out(layout), image=g.out(driver),
                    face_analysis=g.out(analysis))
    comp = composite(g, pos, neg, model, faces, driven)
    image = sample(g, ckpt, (g.out(comp, 0), g.out(comp, 1)), latent)
    preview(g, driven, image, faces)
    return g.prompt


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


def write_all() -> list[pathlib.Path]:
    from realisid import workflow_format

    info = workflow_format.object_info()
    written = []
    for name, prompt in realisid_workflows().items():
        path = HERE / "api" / f"{name}.json"
        path.write_text(json.dumps(prompt, indent=2) + "\n")
        written.append(path)
    for path in sorted((HERE / "api").glob("*.json")):
        ui = workflow_format.api_to_ui(json.loads(path.read_text()), info)
        target = HERE / "ui" / path.name
        target.write_text(json.dumps(ui, indent=2) + "\n")
        written.append(target)
    return written


def main() -> None:
    sys.path.insert(0, str(HERE.parent))
    from realisid import comfy_host

    comfy_host.boot(os.environ["COMFYUI_DIR"], cpu=True)
    comfy_host.load_all_extras()
    comfy_host.load_pack()
    for path in write_all():
        sys.stderr.write(f"wrote {path.relative_to(HERE.parent)}\n")


if __name__ == "__main__":
    main()
