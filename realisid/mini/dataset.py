"""The RealisID-Mini training set on disk: single-person scenes of training identities, as a manifest that
`python -m realisid.train prepare --manifest` reads.

Each line also names a second render of the same identity (another portrait: other place, pose, expression and
clothing), the reference the "other render" recipe trains with; the paper's recipe uses the target itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from realisid.mini import head, world

MANIFEST = "manifest.jsonl"  # each scene with its other render as the reference ("other")
MANIFEST_SELF = "manifest_self.jsonl"  # the same scenes without one: the target is its own reference ("self")
SETTINGS = "scenes.json"  # the seed and split the folder's images were rendered with


def reference_scene(identity, rng: np.random.Generator) -> world.Scene:
    """Another portrait of `identity`, as a user's reference photo: side 0.25-0.35, a random pose and expression."""
    spec = world.portrait_spec(identity, rng, side_fraction=float(rng.uniform(0.25, 0.35)),
                               pose=head.random_pose(rng, 0.5), expression=str(rng.choice(head.EXPRESSIONS)))
    return world.render_scene(spec)


def _claim(folder: Path, settings: dict) -> None:
    """Resuming keeps the images already written, so a folder serves one (seed, split) only: another one would
    pair the old images with the new captions and references."""
    record = folder / SETTINGS
    if record.exists():
        held = json.loads(record.read_text())
        if held != settings:
            raise ValueError(f"{folder} holds scenes of {held}, not {settings}: choose another --out, or pass "
                             f"--seed {held['seed']} --split {held['split']} to resume it")
    elif (folder / "images").is_dir() and any((folder / "images").iterdir()):
        raise ValueError(f"{folder} holds scene images without {SETTINGS} (their seed and split are unknown): "
                         "choose another --out, or remove the folder")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "references").mkdir(exist_ok=True)
    record.write_text(json.dumps(settings))


def write_scenes(out: str | Path, n: int, seed: int = 0, split: str = "train") -> Path:
    """n single-person scenes of `split` identities ("train", or "held_out" for measurements), deterministic in
    (seed, index), with their references; resumable: an image already written is kept. Returns the "other"
    manifest; the "self" manifest of the same scenes is written beside it."""
    folder = Path(out)
    _claim(folder, {"seed": seed, "split": split})
    lines = []
    for i in tqdm(range(n), desc="mini scenes"):
        name = f"{i:06d}.png"
        rng = np.random.default_rng([seed, 6007, i])
        spec = world.random_spec(rng, n_people=1, split=split)
        image, reference = folder / "images" / name, folder / "references" / name
        if not (image.exists() and reference.exists()):  # a resumed run renders only what is missing
            ref = reference_scene(spec.people[0].identity, rng)
            cv2.imwrite(str(reference), cv2.cvtColor(ref.image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(image), cv2.cvtColor(world.render_scene(spec).image, cv2.COLOR_RGB2BGR))
        lines.append(json.dumps({"image": f"images/{name}", "caption": world.caption(spec),
                                 "reference": f"references/{name}"}))
    manifest = folder / MANIFEST
    manifest.write_text("\n".join(lines) + "\n")
    own = [json.dumps({k: v for k, v in json.loads(line).items() if k != "reference"}) for line in lines]
    (folder / MANIFEST_SELF).write_text("\n".join(own) + "\n")
    return manifest
