"""Evaluation metrics: identity similarity, face-to-box matching, pose / expression error, copy-paste, CLIP.

Every identity figure is a cosine in ONE embedding space and is reported with that space's tag (e.g.
`dlib-resnet-128`, `arcface-antelopev2-512`): numbers from different spaces are not comparable, and neither are
their thresholds (dlib cosines sit near 0.86 even for different people; see docs/evaluation.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..faces.analyzer import check_space, cosine
from ..faces.record import FaceRecord
from .pose import pose_error

__all__ = [
    "ClipScorer",
    "FaceMatch",
    "box_iou",
    "copy_paste",
    "crop_face",
    "expression_error",
    "extra_faces",
    "identity_similarity",
    "iou_matrix",
    "match_faces",
    "pose_error",
]

# Landmarks that barely move with expression (eye corners, nose) define the alignment; the rest are scored.
STABLE_POINTS = (27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45)
EXPRESSION_POINTS = tuple(range(17, 27)) + tuple(range(36, 48)) + tuple(range(48, 68))  # brows, eyes, mouth


# identity -------------------------------------------------------------------------------------------------------
def identity_similarity(reference: FaceRecord, generated: FaceRecord) -> float:
    """Cosine of the two faces' embeddings; both must come from the same embedding space."""
    _need_embedding(reference, "reference")
    _need_embedding(generated, "generated")
    check_space(generated.space, reference.space)
    return cosine(reference.embedding, generated.embedding)


def copy_paste(generated: FaceRecord, reference: FaceRecord, target: FaceRecord) -> float:
    """MultiID-Bench copy-paste score CP = (θ(g,t) − θ(g,r)) / θ(t,r), θ = angle between embeddings.

    `target` is the face the output should look like apart from identity (the pose/ground-truth face). CP lies in
    [-1, 1]; > 0 means the generated face sits closer to the reference photo than to the target, i.e. it copies the
    reference rather than re-rendering the identity. NaN when reference and target are the same embedding."""
    for rec, name in ((generated, "generated"), (reference, "reference"), (target, "target")):
        _need_embedding(rec, name)
    check_space(generated.space, reference.space)
    check_space(target.space, reference.space)
    theta_tr = _angle(target.embedding, reference.embedding)
    if theta_tr < 1e-6:
        return math.nan
    return (_angle(generated.embedding, target.embedding) - _angle(generated.embedding, reference.embedding)) / theta_tr


def _angle(a, b) -> float:
    return math.acos(max(-1.0, min(1.0, cosine(a, b))))


def _need_embedding(rec: FaceRecord, name: str) -> None:
    if rec.embedding is None:
        raise ValueError(f"the {name} face has no embedding; analyse it with a backend that embeds faces")


# boxes ----------------------------------------------------------------------------------------------------------
def box_iou(a, b) -> float:
    """Intersection over union of two xyxy boxes (0 when either is empty)."""
    return float(iou_matrix(np.asarray(a, np.float64)[None], np.asarray(b, np.float64)[None])[0, 0])


def iou_matrix(boxes_a, boxes_b) -> np.ndarray:
    """(len(a), len(b)) IoU of xyxy boxes."""
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass(frozen=True)
class FaceMatch:
    """One requested box and the detected face assigned to it (None = missing)."""

    slot: int
    box: np.ndarray  # requested, xyxy pixels of the generated image
    face: FaceRecord | None
    iou: float

    @property
    def found(self) -> bool:
        return self.face is not None

    @property
    def location_error(self) -> float:
        return 1.0 - self.iou


def match_faces(faces: Sequence[FaceRecord], boxes_px, min_iou: float = 0.1, square: bool = True) -> list[FaceMatch]:
    """Assign detected faces to requested boxes by maximum total IoU (Hungarian). A box whose best available face
    overlaps it less than `min_iou` is missing (iou 0). `square` compares the detection's square box (the layout
    convention) rather than the detector's own rectangle; extra detections are ignored (see `extra_faces`)."""
    from scipy.optimize import linear_sum_assignment

    boxes = np.asarray(boxes_px, np.float64).reshape(-1, 4)
    detected = np.array([f.square_box() if square else f.box for f in faces], np.float64).reshape(-1, 4)
    ious = iou_matrix(boxes, detected)
    assigned: dict[int, int] = {}
    if len(faces) and len(boxes):
        rows, cols = linear_sum_assignment(-ious)
        assigned = {int(r): int(c) for r, c in zip(rows, cols, strict=True) if ious[r, c] >= min_iou}
    out = []
    for slot, box in enumerate(boxes):
        col = assigned.get(slot)
        face = None if col is None else faces[col]
        out.append(FaceMatch(slot, box, face, 0.0 if col is None else float(ious[slot, col])))
    return out


def extra_faces(faces: Sequence[FaceRecord], matches: Sequence[FaceMatch]) -> int:
    """Detected faces that no requested box claimed (unwanted extra people)."""
    used = {id(m.face) for m in matches if m.face is not None}
    return sum(1 for f in faces if id(f) not in used)


# expression -----------------------------------------------------------------------------------------------------
def expression_error(landmarks, target_landmarks) -> float:
    """Mean distance between expression landmarks (brows, eyes, mouth) after a similarity alignment on stable
    points (eye corners, nose), divided by the target's outer inter-ocular distance. 0 for identical shapes;
    invariant to where the face sits, its size and in-plane rotation. Not invariant to out-of-plane head
    rotation: a turned head changes the 2D shape too (a 2D stand-in for the paper's DECA expression code)."""
    src = _landmarks(landmarks)
    dst = _landmarks(target_landmarks)
    aligned = _similarity_align(src, dst, STABLE_POINTS)
    inter_ocular = float(np.linalg.norm(dst[45] - dst[36]))
    if inter_ocular <= 1e-6:
        raise ValueError("target landmarks have zero inter-ocular distance")
    idx = list(EXPRESSION_POINTS)
    return float(np.mean(np.linalg.norm(aligned[idx] - dst[idx], axis=1)) / inter_ocular)


def _similarity_align(src: np.ndarray, dst: np.ndarray, indices) -> np.ndarray:
    """`src` mapped by the least-squares similarity (scale, rotation, shift) taking src[indices] to dst[indices]."""
    a, b = src[list(indices)], dst[list(indices)]
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    a0, b0 = a - mu_a, b - mu_b
    u, s, vt = np.linalg.svd(b0.T @ a0)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    fix = np.diag([1.0, d])
    rot = u @ fix @ vt
    var = float((a0**2).sum())
    if var <= 1e-12:
        raise ValueError("landmarks collapse to a point; cannot align them")
    scale = float(np.trace(np.diag(s) @ fix)) / var
    return (src - mu_a) @ rot.T * scale + mu_b


def _landmarks(value) -> np.ndarray:
    if value is None:
        raise ValueError("a face has no 68-point landmarks; use an analyzer that provides them")
    pts = np.asarray(value, np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"landmarks must be 68x2, got {pts.shape}")
    return pts


# CLIP -----------------------------------------------------------------------------------------------------------
class ClipScorer:
    """CLIP-I (image-image) and CLIP-T (text-image) cosines with user-supplied ComfyUI models.

    `clip_vision` is a `comfy.clip_vision.ClipVisionModel` (its projected `image_embeds` are used); `clip` is an
    optional `comfy.sd.CLIP` whose pooled (projected) text output must live in the same space as those image
    embeddings, i.e. come from the same CLIP release. A width mismatch is refused; a same-width pair from
    different releases cannot be detected, so `space` names both files and it is on the user to pair them."""

    def __init__(self, clip_vision, clip=None, name: str = "clip"):
        self.clip_vision = clip_vision
        self.clip = clip
        self.space = name

    def image_embeds(self, images_rgb: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        embeds = []
        for img in images_rgb:  # one at a time: face crops differ in size
            arr = np.asarray(img)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise ValueError(f"CLIP images must be RGB uint8 HxWx3, got {arr.shape} {arr.dtype}")
            tensor = torch.from_numpy(arr.astype(np.float32) / 255.0)[None]
            with torch.no_grad():
                out = self.clip_vision.encode_image(tensor, crop=False)
            embeds.append(out["image_embeds"][0].detach().float().cpu().numpy())
        return np.stack(embeds)

    def text_embeds(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        if self.clip is None:
            raise ValueError("CLIP-T needs a CLIP text model: pass clip= (a ComfyUI CLIP whose pooled output is "
                             "projected into the CLIP-vision model's space)")
        out = []
        for text in prompts:
            tokens = self.clip.tokenize(text)
            with torch.no_grad():
                _, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
            if pooled is None:
                raise ValueError("this CLIP model returns no pooled output; CLIP-T needs one")
            out.append(pooled[0].detach().float().cpu().numpy())
        return np.stack(out)

    def image_similarity(self, image_a: np.ndarray, image_b: np.ndarray) -> float:
        a, b = self.image_embeds([image_a, image_b])
        return cosine(a, b)

    def text_similarity(self, prompt: str, image: np.ndarray) -> float:
        text = self.text_embeds([prompt])[0]
        img = self.image_embeds([image])[0]
        if text.shape != img.shape:
            raise ValueError(
                f"CLIP-T: the text model's pooled output has {text.shape[0]} dims but the CLIP-vision image embeds "
                f"have {img.shape[0]}; they are different CLIP spaces. Use the text and vision towers of one CLIP "
                f"release (e.g. ViT-L/14 text with ViT-L/14 vision).")
        return cosine(text, img)


def crop_face(image_rgb: np.ndarray, box_xyxy, expand: float = 1.2) -> np.ndarray:
    """Square crop around a face (edge-padded where it leaves the image), for CLIP-I."""
    from ..faces.record import square_box_xyxy

    x0, y0, x1, y1 = (int(round(v)) for v in square_box_xyxy(box_xyxy, expand))
    h, w = image_rgb.shape[:2]
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    padded = np.pad(image_rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else image_rgb
    crop = padded[y0 + pad : y1 + pad, x0 + pad : x1 + pad]
    if crop.size == 0:
        raise ValueError(f"empty face crop for box {box_xyxy}")
    return np.ascontiguousarray(crop)
