"""The Mini face networks: a detector, a face net (box, 68 landmarks, identity embedding) and an independent judge.

* Detector: CenterNet-style heat map, face side and centre offset at stride 8 over the 256 px image.
* Face net: reads a crop around a detection and returns the refined square box, the 68 landmarks and a 64-d
  identity embedding (trained through cosine classifiers of the identity attributes, so it ignores pose,
  expression, clothing and background).
* Judge: another network, other seeds and other scenes, that reads every identity attribute, the expression and the
  pose from a crop. Only metrics use it; the conditioning encoder is never its own judge.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from realisid.mini import crops, head, world
from realisid.mini.identity import ATTRIBUTES

STRIDE = 8
EMBEDDING_DIM = 64
ATTRIBUTE_SIZES = [len(v) for v in ATTRIBUTES.values()]


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.25


class Detector(nn.Module):
    """(B, 3, 256, 256) in [0, 1] -> (B, 4, 32, 32): heat logit, log face side / 32, centre offset x, y (cells)."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.stem = nn.Sequential(_block(3, w // 2, 2), _block(w // 2, w, 2), _block(w, w))  # 64 x 64
        self.down8 = nn.Sequential(_block(w, 2 * w, 2), _block(2 * w, 2 * w))  # 32 x 32
        self.down16 = nn.Sequential(_block(2 * w, 3 * w, 2), _block(3 * w, 3 * w), _block(3 * w, 3 * w))  # 16 x 16
        self.fuse = nn.Sequential(_block(5 * w, 2 * w), _block(2 * w, 2 * w))
        self.head = nn.Conv2d(2 * w, 4, 1)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([-4.0, 0.0, 0.0, 0.0]))  # few faces per cell: start near "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s8 = self.down8(self.stem(_normalise(x)))
        s16 = F.interpolate(self.down16(s8), scale_factor=2, mode="nearest")
        return self.head(self.fuse(torch.cat([s8, s16], 1)))


class CropNet(nn.Module):
    """A 64 x 64 crop -> a flat 8 x 8 feature (shared trunk of the face net and the judge)."""

    def __init__(self, widths=(32, 48, 64, 128)):
        super().__init__()
        a, b, c, d = widths
        self.trunk = nn.Sequential(_block(3, a), _block(a, a), _block(a, b, 2), _block(b, b), _block(b, c, 2),
                                   _block(c, c), _block(c, d, 2), _block(d, d))  # 8 x 8
        self.flat_dim = d * 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(_normalise(x)).flatten(1)

    def with_features(self, x: torch.Tensor, layers: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The flat feature and the outputs of the trunk blocks `layers` (a perceptual loss compares them)."""
        h, kept = _normalise(x), []
        for i, block in enumerate(self.trunk):
            h = block(h)
            if i in layers:
                kept.append(h)
        return h.flatten(1), kept


class CosineHeads(nn.Module):
    """One cosine classifier per identity attribute over an L2-normalised embedding."""

    def __init__(self, dim: int, sizes: list[int], scale: float = 12.0):
        super().__init__()
        self.scale = scale
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(n, dim) / math.sqrt(dim)) for n in sizes])

    def forward(self, emb: torch.Tensor) -> list[torch.Tensor]:
        return [self.scale * emb @ F.normalize(w, dim=1).T for w in self.weights]


class FaceNet(nn.Module):
    """Crop -> box (4, crop units), landmarks (68, 2, crop units), embedding (64, L2-normalised)."""

    def __init__(self):
        super().__init__()
        self.crop_net = CropNet()
        self.geometry = nn.Sequential(nn.Linear(self.crop_net.flat_dim, 256), nn.ReLU(inplace=True),
                                      nn.Linear(256, 4 + 136))
        self.embed = nn.Sequential(nn.Linear(self.crop_net.flat_dim, 256), nn.ReLU(inplace=True),
                                   nn.Linear(256, EMBEDDING_DIM))
        self.attributes = CosineHeads(EMBEDDING_DIM, ATTRIBUTE_SIZES)

    def forward(self, x: torch.Tensor) -> dict:
        return self.heads(self.crop_net(x))

    def heads(self, flat: torch.Tensor) -> dict:
        """The crop trunk's flat feature -> box, landmarks, embedding."""
        geo = self.geometry(flat)
        emb = F.normalize(self.embed(flat), dim=1)
        return {"box": geo[:, :4] + 0.5, "landmarks": geo[:, 4:].reshape(-1, 68, 2) + 0.5, "embedding": emb}


class Judge(nn.Module):
    """Crop -> identity attribute logits, expression logits, pose (yaw, pitch, roll) in degrees."""

    def __init__(self):
        super().__init__()
        self.crop_net = CropNet((24, 48, 80, 112))
        hidden = 192
        self.fc = nn.Sequential(nn.Linear(self.crop_net.flat_dim, hidden), nn.ReLU(inplace=True))
        self.attributes = nn.Linear(hidden, sum(ATTRIBUTE_SIZES))
        self.expression = nn.Linear(hidden, len(head.EXPRESSIONS))
        self.pose = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> dict:
        flat = self.crop_net(x)
        h = self.fc(flat)
        return {"attributes": list(self.attributes(h).split(ATTRIBUTE_SIZES, dim=1)),
                "expression": self.expression(h), "pose": self.pose(h) * 30.0}


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


# ---- detector targets and decoding -------------------------------------------------------------------------------

def detector_targets(scenes: list[world.Scene], size: int = world.SIZE) -> dict[str, torch.Tensor]:
    """Gaussian heat maps at the face centres, and side / offset targets at the centre cells."""
    cells = size // STRIDE
    heat = np.zeros((len(scenes), cells, cells), np.float32)
    reg = np.zeros((len(scenes), 3, cells, cells), np.float32)
    mask = np.zeros((len(scenes), cells, cells), np.float32)
    yy, xx = np.mgrid[0:cells, 0:cells] + 0.5
    for i, scene in enumerate(scenes):
        for face in scene.faces:
            cx, cy = (face.box[0] + face.box[2]) / 2 / STRIDE, (face.box[1] + face.box[3]) / 2 / STRIDE
            side = (face.box[2] - face.box[0]) / STRIDE
            sigma = max(0.6, side / 6)
            heat[i] = np.maximum(heat[i], np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)))
            j, k = int(np.clip(cy, 0, cells - 1)), int(np.clip(cx, 0, cells - 1))
            heat[i, j, k] = 1.0
            reg[i, :, j, k] = (math.log(side * STRIDE / 32.0), cx - k - 0.5, cy - j - 0.5)
            mask[i, j, k] = 1.0
    return {"heat": torch.from_numpy(heat), "reg": torch.from_numpy(reg), "mask": torch.from_numpy(mask)}


def detector_loss(out: torch.Tensor, target: dict) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the heat map, L1 on side and offset at the centres."""
    p = torch.sigmoid(out[:, 0]).clamp(1e-4, 1 - 1e-4)
    pos = target["heat"] >= 1.0
    pos_loss = -(torch.log(p) * (1 - p) ** 2)[pos].sum()
    neg_loss = -(torch.log(1 - p) * p**2 * (1 - target["heat"]) ** 4)[~pos].sum()
    n = pos.sum().clamp_min(1)
    m = target["mask"][:, None]
    reg_loss = (F.l1_loss(out[:, 1:], target["reg"], reduction="none") * m).sum() / n
    return (pos_loss + neg_loss) / n + reg_loss


@torch.no_grad()
def decode_detections(out: torch.Tensor, threshold: float = 0.3) -> list[list[tuple[np.ndarray, float]]]:
    """Per image: [(square box xyxy px, score)] at the heat map's local maxima above `threshold`."""
    heat = torch.sigmoid(out[:, 0])
    peaks = (heat == F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0]) & (heat > threshold)
    result = []
    for i in range(out.shape[0]):
        faces = []
        for j, k in peaks[i].nonzero().tolist():
            side = 32.0 * math.exp(float(out[i, 1, j, k]))
            cx = (k + 0.5 + float(out[i, 2, j, k])) * STRIDE
            cy = (j + 0.5 + float(out[i, 3, j, k])) * STRIDE
            faces.append((np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]), float(heat[i, j, k])))
        result.append(faces)
    return result


# ---- crop samples for the face net and the judge -----------------------------------------------------------------

def jittered_box(box: np.ndarray, rng: np.random.Generator, shift: float, scale: float) -> np.ndarray:
    side = box[2] - box[0]
    cx = (box[0] + box[2]) / 2 + rng.uniform(-shift, shift) * side
    cy = (box[1] + box[3]) / 2 + rng.uniform(-shift, shift) * side
    half = side * math.exp(rng.uniform(-scale, scale)) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


def crop_batch(scenes: list[world.Scene], rng: np.random.Generator, batch: int, shift: float, scale: float,
               degrade: bool = True) -> dict:
    """`batch` face crops around jittered boxes, with their targets in crop units."""
    images, boxes, lms, attrs, expr, pose = [], [], [], [], [], []
    while len(images) < batch:
        scene = scenes[int(rng.integers(len(scenes)))]
        face = scene.faces[int(rng.integers(len(scene.faces)))]
        frame_box = jittered_box(face.box, rng, shift, scale)
        image = crops.degrade(scene.image, rng, colour_drift=False) if degrade else scene.image
        images.append(crops.crop(image, frame_box))
        boxes.append(crops.to_crop_units(face.box.reshape(2, 2), frame_box).reshape(4))
        lms.append(crops.to_crop_units(face.landmarks68, frame_box))
        attrs.append(list(face.identity.as_dict().values()))
        expr.append(head.EXPRESSIONS.index(face.expression))
        pose.append((face.pose.yaw, face.pose.pitch, face.pose.roll))
    return {"image": images_to_tensor(np.stack(images)), "box": torch.tensor(np.array(boxes), dtype=torch.float32),
            "landmarks": torch.tensor(np.array(lms), dtype=torch.float32), "attributes": torch.tensor(attrs),
            "expression": torch.tensor(expr), "pose": torch.tensor(pose, dtype=torch.float32)}


def facenet_loss(out: dict, batch: dict, net: FaceNet) -> tuple[torch.Tensor, dict]:
    geo = F.l1_loss(out["box"], batch["box"]) + F.l1_loss(out["landmarks"], batch["landmarks"])
    logits = net.attributes(out["embedding"])
    # summed, not averaged: each attribute weighs as much as the geometry does (an average starves nine heads)
    ce = sum(F.cross_entropy(lg, batch["attributes"][:, i]) for i, lg in enumerate(logits))
    acc = float(np.mean([(lg.argmax(1) == batch["attributes"][:, i]).float().mean() for i, lg in enumerate(logits)]))
    return 10 * geo + ce, {"geo": float(geo), "ce": float(ce) / len(logits), "attr_acc": acc}


def judge_loss(out: dict, batch: dict) -> tuple[torch.Tensor, dict]:
    # summed: each attribute weighs as much as the expression and the pose (an average learns them 9x slower)
    ce = sum(F.cross_entropy(lg, batch["attributes"][:, i]) for i, lg in enumerate(out["attributes"]))
    ex = F.cross_entropy(out["expression"], batch["expression"])
    pose = F.smooth_l1_loss(out["pose"] / 10.0, batch["pose"] / 10.0)
    acc = float(np.mean([(lg.argmax(1) == batch["attributes"][:, i]).float().mean()
                         for i, lg in enumerate(out["attributes"])]))
    return ce + ex + pose, {"ce": float(ce) / len(out["attributes"]), "expr": float(ex), "pose": float(pose),
                            "attr_acc": acc}
