"""The Mini judge as a metric: reads identity attributes, expression and pose from faces in any Mini image.

It is trained on other scenes and seeds than the face backend, and only metrics use it.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from realisid.mini import crops, facenets, files, head
from realisid.mini.identity import ATTRIBUTES, Identity


def save_judge(path, judge: facenets.Judge, **info) -> None:
    files.save_networks(path, {"judge": judge}, "judge", **info)


class MiniJudge:
    def __init__(self, path=None):
        self.path = str(path or files.FACES_DIR / files.JUDGE_FILE)
        self.net = facenets.Judge()
        self.info = files.load_networks(self.path, "judge", {"judge": self.net})

    @torch.no_grad()
    def read(self, images: list[np.ndarray], boxes: list, batch: int = 128) -> list[dict]:
        """For face i (box i in image i): attribute indices and probabilities, expression, pose (degrees)."""
        if len(images) != len(boxes):
            raise ValueError(f"MiniJudge.read: {len(images)} images but {len(boxes)} boxes")
        readings = []
        for start in range(0, len(images), batch):
            x = np.stack([crops.crop(im, b) for im, b in zip(images[start:start + batch], boxes[start:start + batch],
                                                              strict=True)])
            out = self.net(facenets.images_to_tensor(x))
            probs = [torch.softmax(lg, 1).numpy() for lg in out["attributes"]]
            expr = torch.softmax(out["expression"], 1).numpy()
            pose = out["pose"].numpy()
            for i in range(x.shape[0]):
                readings.append({
                    "attributes": {name: int(p[i].argmax()) for name, p in zip(ATTRIBUTES, probs, strict=True)},
                    "confidence": {name: float(p[i].max()) for name, p in zip(ATTRIBUTES, probs, strict=True)},
                    "expression": head.EXPRESSIONS[int(expr[i].argmax())],
                    "pose": head.Pose(*map(float, pose[i])),
                })
        return readings


def attribute_match(reading: dict, identity: Identity) -> float:
    """Fraction of the identity's attributes the judge reads right in one face (the Mini identity score)."""
    truth = identity.as_dict()
    return float(np.mean([reading["attributes"][name] == truth[name] for name in ATTRIBUTES]))


@functools.lru_cache(maxsize=2)
def get_judge(path: str | None = None) -> MiniJudge:
    return MiniJudge(path)
