"""Reference faces -> identity sources in the space a RealisID model was trained on.

Two spaces: CLIP-vision penultimate tokens of the background-suppressed face crop (the paper), tagged
`clip-vision-penultimate-<width>x<tokens>`, and ArcFace vectors (`arcface-<pack>-512`) from insightface. The
source is projected to p_id tokens once per graph run by the model's projector, never per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from realisid.faces import FaceRecord, check_space, merge_records
from realisid.faces.errors import EmbeddingSpaceError
from realisid.faces.identity_input import masked_face_crop

CLIP_PREFIX = "clip-vision-penultimate-"
CLIP_CROP_SIZE = 224


@dataclass(frozen=True)
class EncodedFace:
    """One person: the reference record (box, landmarks, embedding) and the identity source for the projector."""

    record: FaceRecord
    source: torch.Tensor  # (T, D): CLIP tokens, or (1, 512) for ArcFace
    space: str
    label: str = ""


def clip_space(width: int, tokens: int) -> str:
    return f"{CLIP_PREFIX}{width}x{tokens}"


def is_clip_space(space: str) -> bool:
    return space.startswith(CLIP_PREFIX)


def clip_identity_source(clip_vision, crops_uint8: np.ndarray) -> torch.Tensor:
    """(N, 224, 224, 3) uint8 masked face crops -> (N, T, D) penultimate CLIP-vision tokens."""
    images = torch.from_numpy(np.ascontiguousarray(crops_uint8)).float() / 255.0
    out = clip_vision.encode_image(images, crop=False)
    return out["penultimate_hidden_states"].float().cpu()


def encode_person(records: list[FaceRecord], images: list[np.ndarray], space: str, clip_vision=None,
                  label: str = "") -> EncodedFace:
    """Several references of one person -> one EncodedFace in `space` (the model's identity space)."""
    if is_clip_space(space):
        if clip_vision is None:
            raise EmbeddingSpaceError(f"this RealisID model was trained on CLIP-vision tokens ({space}): connect "
                                      "the CLIP vision model it names (Load CLIP Vision) to the Face Encoder")
        crops = np.stack([masked_face_crop(images[r.image_index], r, CLIP_CROP_SIZE) for r in records])
        tokens = clip_identity_source(clip_vision, crops)
        check_space(clip_space(tokens.shape[-1], tokens.shape[-2]), space)
        return EncodedFace(_reference(records), tokens.mean(dim=0), space, label)
    merged = merge_records(records)
    if merged.embedding is None:
        raise EmbeddingSpaceError("the face backend gave no identity embedding; use an insightface pack with a "
                                  "recognition model (antelopev2 or buffalo_l)")
    check_space(merged.space, space)
    return EncodedFace(merged, torch.from_numpy(np.array(merged.embedding, np.float32))[None], space, label)


def _reference(records: list[FaceRecord]) -> FaceRecord:
    """The record whose landmarks and box represent the person: the largest face among the references."""
    return max(records, key=lambda r: r.area)
