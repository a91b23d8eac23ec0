"""The one interface every face backend implements, plus helpers that work across backends."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import EmbeddingSpaceError
from .record import FaceRecord, l2_normalise


@runtime_checkable
class FaceAnalyzer(Protocol):
    """`analyze` takes an RGB uint8 HxWx3 image and returns every face found (any order), each tagged with
    `space`, the embedding space of this backend (e.g. `arcface-antelopev2-512`, `dlib-resnet-128`)."""

    space: str

    def analyze(self, image_rgb: np.ndarray, image_index: int = 0) -> list[FaceRecord]: ...


def check_rgb_image(image_rgb) -> np.ndarray:
    arr = np.asarray(image_rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (0..255), got dtype {arr.dtype}; convert ComfyUI IMAGE with (x * 255).round()")
    return np.ascontiguousarray(arr)


# Face Analysis backend (the node's option) that produces each identity space, for the errors below
SPACE_BACKENDS = {"arcface-antelopev2-512": "insightface antelopev2", "arcface-buffalo_l-512": "insightface buffalo_l",
                  "dlib-resnet-128": "embedded (MTCNN + dlib, offline)"}


def backend_for_space(space: str) -> str | None:
    """The RealisID Face Analysis backend whose embeddings live in `space`, when one does."""
    return SPACE_BACKENDS.get(space)


def check_space(actual: str, expected: str) -> None:
    """Refuse to mix embedding spaces (e.g. dlib vectors fed to an adapter trained on ArcFace)."""
    if actual != expected:
        backend = backend_for_space(expected)
        fix = (f"in RealisID Face Analysis choose backend '{backend}'" if backend else
               f"analyse the reference faces with the backend that produces '{expected}'")
        raise EmbeddingSpaceError(
            f"identity embedding space mismatch: got '{actual}', but '{expected}' is required: {fix} "
            f"(embeddings from different face models are not comparable; or load a model trained on '{actual}')."
        )


def analyze_batch(analyzer: FaceAnalyzer, images: Iterable[np.ndarray]) -> list[list[FaceRecord]]:
    """Faces for each image; `image_index` is the image's position in `images`."""
    return [analyzer.analyze(img, image_index=i) for i, img in enumerate(images)]


def merge_records(records: Sequence[FaceRecord]) -> FaceRecord:
    """One identity from several photos of it: the normalised mean embedding (geometry of the first record)."""
    if not records:
        raise ValueError("merge_records needs at least one face record")
    first = records[0]
    for rec in records[1:]:
        check_space(rec.space, first.space)
    if any(rec.embedding is None for rec in records):
        raise ValueError("merge_records: every record needs an embedding (some backends skip it for a face)")
    mean = np.mean(np.stack([rec.embedding for rec in records]), axis=0)
    norms = [rec.embedding_norm for rec in records if rec.embedding_norm]
    return first.replace(embedding=l2_normalise(mean), embedding_norm=float(np.mean(norms)) if norms else None)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
