"""Synthetic single-person training images for the trainer tests: skimage's astronaut (public domain, NASA)
cropped, flipped, shifted and rescaled onto random smooth backgrounds, plus the inputs `prepare` must skip."""

from __future__ import annotations

import json
import pathlib

import cv2
import numpy as np
from skimage import data

HEAD = (slice(0, 300), slice(90, 360))  # the astronaut's head and shoulders in the 512 x 512 original


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    noise = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
    return cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)


def person_image(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One astronaut head at a random scale/position/mirror on a random background (RGB uint8)."""
    head = data.astronaut()[HEAD]
    if rng.random() < 0.5:
        head = head[:, ::-1]
    scale = rng.uniform(0.55, 0.8) * size / head.shape[0]
    head = cv2.resize(np.ascontiguousarray(head), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = _background(rng, size)
    y = int(rng.integers(0, size - head.shape[0] + 1))
    x = int(rng.integers(0, size - head.shape[1] + 1))
    canvas[y:y + head.shape[0], x:x + head.shape[1]] = head
    return canvas


def portrait(rng: np.random.Generator, width: int = 256, height: int = 512) -> np.ndarray:
    """A full-body-style portrait: the head at the top of a tall frame, which a centre crop cuts off."""
    head = cv2.resize(data.astronaut()[HEAD], None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA)
    canvas = _background(rng, height)[:, :width].copy()
    x = (width - head.shape[1]) // 2
    canvas[8:8 + head.shape[0], x:x + head.shape[1]] = head
    return canvas


def two_people(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Two astronaut heads side by side in a square image (survives the centre crop)."""
    head = data.astronaut()[HEAD]
    pair = np.concatenate([head, head[:, ::-1]], axis=1)
    scale = size / pair.shape[1]
    pair = cv2.resize(np.ascontiguousarray(pair), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = _background(rng, size)
    canvas[:pair.shape[0], :pair.shape[1]] = pair
    return canvas


def tiny_face(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A face the detector finds but smaller than any sensible --min-face."""
    head = cv2.resize(data.astronaut()[HEAD], None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    canvas = _background(rng, size)
    canvas[10:10 + head.shape[0], 10:10 + head.shape[1]] = head
    return canvas


def _write(path: pathlib.Path, rgb: np.ndarray, caption: str | None) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)


def write_dataset(folder: pathlib.Path, people: int = 6, seed: int = 0, size: int = 256) -> dict:
    """Folder of images + .txt captions; returns the expected skip counts per reason."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(people):
        _write(folder / f"person{i:02d}.png", person_image(rng, size), f"a photo of an astronaut, view {i}")
    _write(folder / "two_people.png", two_people(rng, size), "two astronauts")
    _write(folder / "noise.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "static noise")
    _write(folder / "small_face.png", tiny_face(rng, size), "a tiny astronaut")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (folder / "corrupt.txt").write_text("a broken file")
    _write(folder / "uncaptioned.png", person_image(rng, size), None)
    return {"corrupt": 1, "no_caption": 1, "no_face": 1, "multiple_faces": 1, "face_too_small": 1}


def write_manifest(folder: pathlib.Path) -> pathlib.Path:
    """A JSONL manifest over the captioned images of `folder`."""
    rows = [{"image": p.name, "caption": p.with_suffix(".txt").read_text()}
            for p in sorted(folder.glob("*.png")) if p.with_suffix(".txt").exists()]
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


TINY_PROJECTOR = {"dim": 32, "depth": 1, "dim_head": 16, "heads": 2, "num_queries": 4, "ff_mult": 2}


def training_env(root: pathlib.Path, people: int = 6) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """(root, base checkpoint, CLIP vision) with a prepared cache in root/cache: tiny SDXL models, embedded faces."""
    from realisid.train import sources
    from realisid.train.prepare import PrepareOptions, make_analyzer, prepare_cache
    from tests.helpers import tiny_host_models as tiny

    tiny.register_tiny_families()
    base = tiny.write_checkpoint(root / "base_sdxl.safetensors", "sdxl")
    vision = tiny.write_clip_vision(root / "clip_vision.safetensors")
    write_dataset(root / "images", people=people)
    opts = PrepareOptions(size=64, detect_size=256, min_face=8, hint_size=0)
    prepare_cache(sources.from_folder(root / "images"), make_analyzer("embedded"), root / "cache", opts, progress=False)
    return root, base, vision


def train_config(env, out, **overrides):
    """A TrainConfig for the tiny models: CPU, in-process data loading, no periodic saves."""
    from realisid.train.config import TrainConfig

    root, base, vision = env
    args = dict(base=str(base), cache=str(root / "cache"), out=str(out), identity_space="clip", clip_vision=str(vision),
                steps=30, batch_size=2, lr=1e-3, crop_size=4, projector=TINY_PROJECTOR, save_every=0, log_every=10,
                cache_latents=True, cpu=True, workers=0, progress=False)
    return TrainConfig(**{**args, **overrides})
