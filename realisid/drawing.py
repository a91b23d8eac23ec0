"""Overlay drawing for previews: boxes with their face index (numpy in, numpy out)."""

import cv2
import numpy as np
import torch

from realisid import validation

# Distinct colours per face index (RGB, 0-1), cycled beyond ten faces.
PALETTE = np.array([
    (0.90, 0.10, 0.10), (0.10, 0.60, 0.95), (0.15, 0.80, 0.25), (0.95, 0.75, 0.05), (0.70, 0.20, 0.85),
    (0.05, 0.80, 0.80), (0.95, 0.45, 0.10), (0.50, 0.50, 0.95), (0.60, 0.85, 0.30), (0.95, 0.40, 0.65),
], dtype=np.float32)


def face_colour(index: int) -> tuple[float, float, float]:
    return tuple(float(c) for c in PALETTE[index % len(PALETTE)])


def draw_boxes(image: np.ndarray, boxes_px: np.ndarray, labels: list[str] | None = None) -> np.ndarray:
    """Draw xyxy pixel boxes (may extend past the edges) with labels; returns a new float32 HxWx3 image, whatever
    the channels of `image` (HxW or HxWxC, C = 1..4: see `rgb`)."""
    # OpenCV's text rendering wants 8-bit images
    out = np.ascontiguousarray(np.clip(rgb(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    thickness = max(1, round(min(out.shape[:2]) / 256))
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)):
        colour = tuple(255.0 * c for c in face_colour(i))
        p0, p1 = (round(x0), round(y0)), (round(x1), round(y1))
        cv2.rectangle(out, p0, p1, colour, thickness, cv2.LINE_AA)
        text = labels[i] if labels else str(i)
        scale = max(0.4, (x1 - x0) / 120)
        origin = (max(0, p0[0] + thickness), max(12, p0[1] - 2 * thickness))
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return out.astype(np.float32) / 255.0


def rgb(image: np.ndarray) -> np.ndarray:
    """HxW or HxWxC -> HxWx3, by the pack's one channel rule (`validation.as_rgb`): every image output is RGB, since
    ComfyUI's image nodes (Save Image, Preview Image) and other packs expect 3 channels."""
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {image.shape}")
    return validation.as_rgb("image", torch.from_numpy(image)).numpy()
