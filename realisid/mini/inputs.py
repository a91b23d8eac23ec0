"""The bundled Mini example inputs: reference portraits of three held-out identities and a driving face.

`python -m realisid.mini inputs` writes them (seeded) into workflows/inputs/ with their ground truth, so workflows
and tests use identities no Mini network was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from realisid.mini import head, world
from realisid.mini.identity import random_identity

INPUTS_DIR = Path(__file__).resolve().parents[2] / "workflows" / "inputs"
REFERENCES = ("mini_person_a.png", "mini_person_b.png", "mini_person_c.png")
DRIVER = "mini_driver.png"
TRUTH_FILE = "mini_inputs.json"
SEED = 2025


def _portrait(identity, rng, pose: head.Pose, expression: str) -> world.Scene:
    return world.render_scene(world.portrait_spec(identity, rng, side_fraction=0.32, pose=pose, expression=expression))


def write_inputs(folder: Path = INPUTS_DIR, seed: int = SEED) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    shots = [(name, random_identity(rng, "held_out"), head.Pose(yaw=float(rng.uniform(-10, 10))), "neutral")
             for name in REFERENCES]
    shots.append((DRIVER, random_identity(rng, "held_out"), head.Pose(yaw=30.0, pitch=8.0, roll=-10.0), "surprise"))
    for name, identity, pose, expression in shots:
        scene = _portrait(identity, rng, pose, expression)
        cv2.imwrite(str(folder / name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        face = scene.faces[0]
        truth[name] = {"identity": identity.as_dict(), "identity_index": identity.index, "box": face.box.tolist(),
                       "pose": [pose.yaw, pose.pitch, pose.roll], "expression": expression}
    (folder / TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    return truth
