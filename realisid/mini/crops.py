"""Square face crops of Mini images, the one resampling every Mini face network and metric uses."""

from __future__ import annotations

import cv2
import numpy as np

from realisid.faces.record import square_box_xyxy

CROP = 64  # side of the crops the Mini face networks read
EXPAND = 1.5  # crop side relative to the face-box side (hair and chin in view)


def crop_frame(box, expand: float = EXPAND) -> np.ndarray:
    """The square (xyxy px, float64) a crop of `box` covers: same centre, side = max side * expand."""
    return square_box_xyxy(box, expand, np.float64)


def crop(image: np.ndarray, box, expand: float = EXPAND, size: int = CROP) -> np.ndarray:
    """(size, size, 3) uint8 crop of the square around `box`, zero outside the image.

    Warped bilinearly to twice the size, then area-averaged down: anti-aliased whether the face is larger or
    smaller than the crop.
    """
    frame = crop_frame(box, expand)
    side = frame[2] - frame[0]
    big = 2 * size
    scale = big / side
    matrix = np.array([[scale, 0, -frame[0] * scale], [0, scale, -frame[1] * scale]], np.float64)
    warped = cv2.warpAffine(np.ascontiguousarray(image), matrix, (big, big), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA)


def to_crop_units(points_px, box, expand: float = EXPAND) -> np.ndarray:
    """Image pixels -> [0, 1] coordinates of the crop of `box`."""
    frame = crop_frame(box, expand)
    return (np.asarray(points_px, np.float64) - frame[:2]) / (frame[2] - frame[0])


def from_crop_units(points, box, expand: float = EXPAND) -> np.ndarray:
    frame = crop_frame(box, expand)
    return np.asarray(points, np.float64) * (frame[2] - frame[0]) + frame[:2]


def degrade(image: np.ndarray, rng: np.random.Generator, colour_drift: bool) -> np.ndarray:
    """Blur and noise like a decoded sample's, so the networks also read generated images.

    colour_drift: also shift each channel's gain and offset. Only for the detector: skin, hair and eye colours
    ARE identity, so the networks that read identity see at most a slight overall brightness change.
    """
    out = image.astype(np.float32)
    sigma = rng.uniform(0.0, 1.3)
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    if colour_drift:
        out = out * rng.uniform(0.9, 1.1, 3) + rng.uniform(-12, 12, 3)
    else:
        out = out * rng.uniform(0.97, 1.03)
    out = out + rng.normal(0, rng.uniform(0, 8), out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)
