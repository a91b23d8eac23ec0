"""The face crop an identity encoder sees: square around the box, background suppressed.

The paper masks the reference with a BiSeNet face parsing; offline we approximate that with a landmark hull
(68 points: jaw + brows lifted toward the forehead) or, without dense landmarks, an ellipse from the box.
"""

from __future__ import annotations

import cv2
import numpy as np

from .analyzer import check_rgb_image
from .record import FaceRecord
from .render import to_crop_coords

FOREHEAD_LIFT = 0.35  # brows are lifted by this fraction of the brow-to-chin distance


def crop_square(image_rgb: np.ndarray, square_box_xyxy, size: int) -> np.ndarray:
    """`size` x `size` crop of a square box; parts outside the image are zeros."""
    x0, y0, x1, y1 = (float(v) for v in square_box_xyxy)
    scale = size / (x1 - x0)
    affine = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float32)
    return cv2.warpAffine(image_rgb, affine, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def face_mask(record: FaceRecord, square_box_xyxy, size: int) -> np.ndarray:
    """uint8 {0..255} mask of the face region in crop pixels (antialiased edge)."""
    mask = np.zeros((size, size), np.uint8)
    if record.landmarks68 is not None:
        pts = to_crop_coords(record.landmarks68, square_box_xyxy, size)
        jaw, brows = pts[0:17], pts[17:27]
        lift = (brows.mean(0) - pts[8]) * FOREHEAD_LIFT  # from the chin through the brows, i.e. "up the face"
        hull = cv2.convexHull(np.round(np.concatenate([jaw, brows, brows + lift]) * 16).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255, cv2.LINE_AA, 4)
        return mask
    x0, y0, x1, y1 = to_crop_coords(np.asarray(record.box).reshape(2, 2), square_box_xyxy, size).reshape(-1)
    centre = (int(round((x0 + x1) / 2 * 16)), int(round((y0 + 0.45 * (y1 - y0)) * 16)))  # forehead sits above the box
    axes = (int(round((x1 - x0) * 0.5 * 16)), int(round((y1 - y0) * 0.6 * 16)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1, cv2.LINE_AA, 4)
    return mask


def masked_face_crop(image_rgb: np.ndarray, record: FaceRecord, size: int = 224, expand: float = 1.0) -> np.ndarray:
    """uint8 size x size x 3: the record's square box (side max(w, h) * expand) with the background zeroed."""
    rgb = check_rgb_image(image_rgb)
    square = record.square_box(expand)
    crop = crop_square(rgb, square, size)
    mask = face_mask(record, square, size).astype(np.float32) / 255.0
    return np.round(crop.astype(np.float32) * mask[:, :, None]).astype(np.uint8)
