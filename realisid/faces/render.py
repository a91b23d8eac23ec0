"""Landmark hints drawn in crop coordinates: deterministic, antialiased (cv2 LINE_AA, sub-pixel via `shift`).

Colours are RGB. Outputs are float32 HxWx3 in [0, 1] on black.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT

# (name, first, last, closed, colour) over iBUG 68-point indices
LANDMARK68_PARTS = (
    ("jaw", 0, 16, False, (255, 255, 255)),
    ("right_brow", 17, 21, False, (255, 128, 0)),
    ("left_brow", 22, 26, False, (255, 200, 0)),
    ("nose_bridge", 27, 30, False, (0, 255, 255)),
    ("nose_base", 31, 35, False, (0, 160, 255)),
    ("right_eye", 36, 41, True, (0, 255, 0)),
    ("left_eye", 42, 47, True, (128, 255, 0)),
    ("outer_lips", 48, 59, True, (255, 0, 128)),
    ("inner_lips", 60, 67, True, (255, 0, 255)),
)
KPS5_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
KPS5_LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))  # eyes and mouth corners to the nose
KPS5_LIMB_ALPHA = 0.6
# InstantID's draw_kps draws with fixed pixel sizes (limb ellipse half-width 4 px, keypoint radius 10 px) on the
# image IdentityNet sees, which is about 1024 px in its training and pipeline: as fractions of that image's side.
KPS5_STICK_HALF_WIDTH = 4 / 1024
KPS5_RADIUS = 10 / 1024
# Below these, antialiased strokes fade out entirely (only tiny renders, e.g. a preview of a small box, hit them).
_MIN_STICK_HALF_WIDTH, _MIN_RADIUS = 0.5, 1.0


def to_crop_coords(points_xy, square_box_xyxy, size: int) -> np.ndarray:
    """Image pixels -> pixels of the `size` x `size` crop of the square box."""
    pts = np.asarray(points_xy, np.float32)
    x0, y0, x1, y1 = (float(v) for v in square_box_xyxy)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty crop box {square_box_xyxy}")
    scale = np.array([size / (x1 - x0), size / (y1 - y0)], np.float32)
    return (pts - np.array([x0, y0], np.float32)) * scale


def _fixed(points) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32)


def render_landmarks68(points_in_crop, size: int, thickness: int | None = None) -> np.ndarray:
    """68 points (crop pixels) as coloured polylines, one fixed colour per part; eyes and lips closed."""
    pts = np.asarray(points_in_crop, np.float32)
    if pts.shape != (68, 2):
        raise ValueError(f"render_landmarks68 needs 68x2 points, got {pts.shape}")
    thickness = thickness or max(1, round(size / 128))
    canvas = np.zeros((size, size, 3), np.uint8)
    for _name, first, last, closed, colour in LANDMARK68_PARTS:
        cv2.polylines(canvas, [_fixed(pts[first : last + 1])], closed, colour, thickness, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def render_kps5(kps_in_crop, size: int, stick_width: float | None = None, radius: float | None = None) -> np.ndarray:
    """InstantID-style keypoint image: limbs from eyes and mouth corners to the nose (ellipses at 60 %
    brightness, coloured by their outer point), then a filled circle per keypoint. By default the limb half-width
    and the radius are InstantID's proportions of the image side (KPS5_STICK_HALF_WIDTH, KPS5_RADIUS), so a
    `size` of 1024 draws exactly its 4 px and 10 px. stick_width is that half-width (InstantID's `stickwidth`)."""
    kps = np.asarray(kps_in_crop, np.float64)
    if kps.shape != (5, 2):
        raise ValueError(f"render_kps5 needs 5x2 keypoints, got {kps.shape}")
    stick_width = stick_width if stick_width is not None else max(_MIN_STICK_HALF_WIDTH, size * KPS5_STICK_HALF_WIDTH)
    radius = radius if radius is not None else max(_MIN_RADIUS, size * KPS5_RADIUS)
    limbs = np.zeros((size, size, 3), np.uint8)
    for a, b in KPS5_LIMBS:
        (xa, ya), (xb, yb) = kps[a], kps[b]
        half_len = math.hypot(xa - xb, ya - yb) / 2
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        poly = cv2.ellipse2Poly(
            (int(round((xa + xb) / 2 * _ONE)), int(round((ya + yb) / 2 * _ONE))),
            (int(round(half_len * _ONE)), int(round(stick_width * _ONE))),
            int(round(angle)),
            0,
            360,
            1,
        )
        cv2.fillConvexPoly(limbs, poly, KPS5_COLOURS[a], cv2.LINE_AA, _SHIFT)
    canvas = np.round(limbs.astype(np.float32) * KPS5_LIMB_ALPHA).astype(np.uint8)
    for (x, y), colour in zip(kps, KPS5_COLOURS, strict=True):
        cv2.circle(canvas, (int(round(x * _ONE)), int(round(y * _ONE))), int(round(radius * _ONE)), colour, -1, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def render_face_hint(points_in_crop, size: int) -> np.ndarray:
    """The local branch's hint from a face's points in crop pixels: 68 landmarks as polylines, 5 keypoints in
    InstantID's style (the count says which; training caches and inference draw through this one function)."""
    pts = np.asarray(points_in_crop, np.float32)
    return render_landmarks68(pts, size) if pts.shape[0] == 68 else render_kps5(pts, size)
