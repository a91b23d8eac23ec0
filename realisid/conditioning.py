"""From encoded faces and a layout to RealisID face conditions, and onto ComfyUI conditioning (on copies).

Face i is bound to layout slot i. Its pose/expression hint is the slot's driver's landmarks (default: the
reference's own), drawn in the coordinates of the driver's own square face box, as in training.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from realisid.control import FaceCondition
from realisid.faces import check_space
from realisid.faces.render import render_face_hint, to_crop_coords
from realisid.instantid import model as instantid
from realisid.layout import FaceLayout, LayoutError
from realisid.validation import InputError

log = logging.getLogger(__name__)


class HintError(ValueError):
    """The driving face lacks what the model's landmark hint needs."""


def hint_kind(model) -> str:
    return model.config.get("hint", "landmarks68")


def render_hint(record, kind: str, size: int, expand: float = 1.0) -> np.ndarray:
    """The local branch's hint for one face: HxWx3 float32 in [0, 1], in crop coordinates of its square box."""
    if kind != "kps5" and record.landmarks68 is None:
        raise HintError("this RealisID model draws 68-point landmark hints, but the face analysis gave none: use the "
                        "embedded backend, or an insightface pack that includes 1k3d68.onnx (antelopev2, buffalo_l)")
    points = record.kps if kind == "kps5" else record.landmarks68
    return render_face_hint(to_crop_coords(points, record.square_box(expand), size), size)


def identity_tokens(model, faces) -> list[torch.Tensor]:
    """p_id (N, C) per face, projected once (not per step)."""
    scale_raw = model.config.get("identity_input") == "raw_arcface"
    tokens = []
    with torch.no_grad():
        for i, face in enumerate(faces):
            source = face.source
            if not bool(torch.isfinite(source).all()):
                raise InputError(f"faces: person {i}'s identity holds NaN or infinite values; re-encode the "
                                 "reference with RealisID Face Encoder")
            norm = getattr(face.record, "embedding_norm", None)
            if scale_raw and norm:
                source = source * float(norm)  # InstantID's Resampler was trained on un-normalised ArcFace vectors
            projected = model.project(source[None]).float().cpu()[0]
            if not bool(torch.isfinite(projected).all()):  # else every step's residuals would be NaN, silently
                raise InputError(f"realisid_model: its projector turns person {i}'s identity into NaN or infinite "
                                 "tokens; the checkpoint's projector weights are broken (re-export or re-train it)")
            tokens.append(projected)
    return tokens


def face_conditions(model, faces, layout: FaceLayout, crop_size: int | None = None) -> list[FaceCondition]:
    """One FaceCondition per (face i, slot i); counts must match."""
    if len(faces) != len(layout):
        raise LayoutError(f"{len(faces)} encoded face(s) but the layout places {len(layout)}: give one box per "
                          "person (face i goes to box i, see the preview)")
    for face in faces:
        check_space(face.space, model.identity_space)
    size = 8 * (crop_size or model.crop_size)
    kind = hint_kind(model)
    expand = float(model.config.get("box_expand", 1.0))
    # InstantID's IdentityNet learnt whole portraits: its crop is the face box widened by the frame, and the hint is
    # drawn in the same widened square, so the keypoints fall on the face box inside the crop (1 for trained models)
    frame = instantid.crop_frame(model)
    tokens = identity_tokens(model, faces)
    conditions = []
    for face, slot, p_id in zip(faces, layout.slots, tokens, strict=True):
        driver = slot.driver if slot.driver is not None else face.record
        hint = torch.from_numpy(render_hint(driver, kind, size, expand * frame)).permute(2, 0, 1).contiguous()
        conditions.append(FaceCondition(p_id=p_id, landmark_hint=hint, box=instantid.framed_box(slot.square, frame)))
    return conditions
