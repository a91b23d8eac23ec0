"""FaceRecord: one detected face as plain, serialisable data (no backend objects)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class FaceRecord:
    """One face. `box` is xyxy in pixels of its source image; `kps` is 5x2 in ArcFace order (image-left eye,
    image-right eye, nose, mouth image-left, mouth image-right); `landmarks68` is 68x2 (iBUG order) or None;
    `embedding` is an L2-normalised float32 vector or None, tagged with its `space`; `embedding_norm` is the norm
    the backend's raw vector had (InstantID's Resampler was trained on raw ArcFace vectors), or None if unknown;
    `image_size` is (w, h).
    Arrays are read-only float32 copies, so a record can be shared freely and `replace()` is cheap."""

    box: np.ndarray
    score: float
    kps: np.ndarray
    landmarks68: np.ndarray | None = None
    embedding: np.ndarray | None = None
    space: str = ""
    image_index: int = 0
    image_size: tuple[int, int] = (0, 0)
    embedding_norm: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "box", _frozen(self.box, (4,), "box must be 4 numbers (x0, y0, x1, y1)"))
        object.__setattr__(self, "kps", _frozen(self.kps, (5, 2), "kps must be 5x2"))
        if self.landmarks68 is not None:
            object.__setattr__(self, "landmarks68", _frozen(self.landmarks68, (68, 2), "landmarks68 must be 68x2"))
        if self.embedding is not None and not _is_frozen(self.embedding):  # a frozen one was normalised already
            emb = l2_normalise(np.asarray(self.embedding, np.float32).reshape(-1))
            emb.setflags(write=False)
            object.__setattr__(self, "embedding", emb)
        if self.embedding_norm is not None:
            object.__setattr__(self, "embedding_norm", float(self.embedding_norm))
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "image_index", int(self.image_index))
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))

    # geometry -------------------------------------------------------------------------------------------------
    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def centre(self) -> tuple[float, float]:
        return float(self.box[0] + self.box[2]) / 2, float(self.box[1] + self.box[3]) / 2

    def square_box(self, expand: float = 1.0) -> np.ndarray:
        """Pixel-space square (xyxy) around the box centre, side = max(w, h) * expand. May leave the image."""
        return square_box_xyxy(self.box, expand)

    def box_fractions(self) -> tuple[float, float, float, float]:
        """The box as fractions of the source image (the cross-module coordinate contract)."""
        w, h = self.image_size
        if w <= 0 or h <= 0:
            raise ValueError("FaceRecord.image_size is unknown (0); cannot express the box as fractions")
        x0, y0, x1, y1 = (float(v) for v in self.box)
        return x0 / w, y0 / h, x1 / w, y1 / h

    # copies / serialisation -----------------------------------------------------------------------------------
    def replace(self, **changes) -> FaceRecord:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (lists and plain numbers)."""
        return {
            "box": self.box.tolist(),
            "score": self.score,
            "kps": self.kps.tolist(),
            "landmarks68": None if self.landmarks68 is None else self.landmarks68.tolist(),
            "embedding": None if self.embedding is None else self.embedding.tolist(),
            "space": self.space,
            "image_index": self.image_index,
            "image_size": list(self.image_size),
            "embedding_norm": self.embedding_norm,
        }

    @classmethod
    def from_dict(cls, data: dict) -> FaceRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"box", "score", "kps"} - set(data)
        if missing:
            raise ValueError(f"FaceRecord.from_dict: missing keys {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def __eq__(self, other) -> bool:
        if not isinstance(other, FaceRecord):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None


def _is_frozen(value) -> bool:
    """An array this module made: float32, read-only and owning its data (so nobody else can change it)."""
    return isinstance(value, np.ndarray) and value.dtype == np.float32 and not value.flags.writeable and value.flags.owndata


def _frozen(value, shape, what) -> np.ndarray:
    if _is_frozen(value) and value.shape == shape:
        return value  # shared between copies: that is what makes replace() cheap
    arr = np.asarray(value, np.float32)
    if arr.shape != shape:
        raise ValueError(f"FaceRecord.{what}, got shape {arr.shape}")
    arr = np.array(arr)  # private copy that owns its data
    arr.setflags(write=False)
    return arr


def l2_normalise(vec: np.ndarray) -> np.ndarray:
    vec = np.asarray(vec, dtype=np.float32)
    norm = float(np.linalg.norm(vec))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("embedding is zero or not finite; cannot L2-normalise it")
    return vec / norm


def kps5_from_landmarks68(lm68) -> np.ndarray:
    """ArcFace-order 5 keypoints from their parents in the iBUG 68-point layout: eye centres, nose tip, mouth
    corners (float64)."""
    lm = np.asarray(lm68, np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"kps5_from_landmarks68 needs 68x2 landmarks, got {lm.shape}")
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def square_box_xyxy(box, expand: float = 1.0, dtype=np.float32, side: str = "max") -> np.ndarray:
    """Square (xyxy) centred on `box`, side max(w, h) * expand, computed in float64 and returned as `dtype`.
    side="mean": (w + h) / 2 instead, the Mini face net's refinement rule (its boxes are near-square, and the
    mean keeps their size where the max would grow them pass after pass)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if side not in ("max", "mean"):
        raise ValueError(f"side must be 'max' or 'mean', got {side!r}")
    length = max(x1 - x0, y1 - y0) if side == "max" else ((x1 - x0) + (y1 - y0)) / 2
    half = length * float(expand) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half], dtype)
