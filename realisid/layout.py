"""Where the faces go: square boxes as fractions of the target image, plus an optional pose/expression driver.

A layout is resolution independent: boxes are fractions of the image it was made for (x0, y0, x1, y1),
square in pixels of that image, and may extend past its edges (the branches pad, they never reject).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

MAX_FACES = 16


class LayoutError(ValueError):
    """A layout request that cannot be honoured; the message says what to change."""


@dataclass(frozen=True)
class FaceSlot:
    box: tuple[float, float, float, float]
    # A face record (realisid.faces.record.FaceRecord) whose landmarks set pose and expression; None = the reference's
    driver: Any = None


@dataclass(frozen=True)
class FaceLayout:
    width: int
    height: int
    slots: tuple[FaceSlot, ...]

    def __len__(self) -> int:
        return len(self.slots)

    def pixel_boxes(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        """Boxes in pixels of an image of the given size (default: the size the layout was made for)."""
        w, h = width or self.width, height or self.height
        boxes = np.array([s.box for s in self.slots], dtype=np.float64).reshape(-1, 4)
        return boxes * np.array([w, h, w, h], dtype=np.float64)

    def appended(self, other: FaceLayout) -> FaceLayout:
        _check_count(len(self) + len(other))
        rescaled = [replace(s, box=_rescale_box(s.box, other, self)) for s in other.slots]
        return replace(self, slots=self.slots + tuple(rescaled))

    def with_drivers(self, drivers: list) -> FaceLayout:
        """Assign pose/expression drivers to slots in order; None keeps the slot's current driver."""
        slots = list(self.slots)
        for i, driver in enumerate(drivers[: len(slots)]):
            if driver is not None:
                slots[i] = replace(slots[i], driver=driver)
        return replace(self, slots=tuple(slots))


def _check_count(n: int) -> None:
    if n > MAX_FACES:
        raise LayoutError(f"{n} faces requested; RealisID handles at most {MAX_FACES} in one image")


def _rescale_box(box, src: FaceLayout, dst: FaceLayout) -> tuple[float, float, float, float]:
    """Keep a square box square when moving it between layouts made for different aspect ratios."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side_px = (box[2] - box[0]) * src.width
    half_w, half_h = side_px / dst.width / 2, side_px / dst.height / 2
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def square_box_fractions(cx: float, cy: float, side_px: float, width: int, height: int) -> tuple[float, ...]:
    """A square of `side_px` pixels centred at (cx, cy) (fractions), as fractions of a width x height image."""
    if side_px <= 0:
        raise LayoutError(f"face size must be positive, got {side_px} px")
    half_w, half_h = side_px / width / 2, side_px / height / 2
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def layout_from_numbers(width: int, height: int, faces: list[tuple[float, float, float]]) -> FaceLayout:
    """Faces given as (x centre, y centre, size), all fractions; size is relative to the shorter image side."""
    _check_size(width, height)
    _check_count(len(faces))
    slots = []
    for x, y, size in faces:
        if not (0.0 < size <= 1.0):
            raise LayoutError(f"face size {size} must be a fraction of the image side in (0, 1]")
        slots.append(FaceSlot(square_box_fractions(x, y, size * min(width, height), width, height)))
    return FaceLayout(width, height, tuple(slots))


def layout_from_mask(mask: np.ndarray, expand: float = 1.0, min_pixels: int = 16) -> FaceLayout:
    """One square box per connected region of a (H, W) mask, ordered left to right."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0.5
    if mask.ndim != 2:
        raise LayoutError(f"expected a single (H, W) mask, got shape {mask.shape}")
    height, width = mask.shape
    labels, count = ndimage.label(mask)
    boxes = []
    for region in ndimage.find_objects(labels):
        ys, xs = region
        if (ys.stop - ys.start) * (xs.stop - xs.start) < min_pixels:
            continue
        side = max(ys.stop - ys.start, xs.stop - xs.start) * expand
        boxes.append(((xs.start + xs.stop) / 2 / width, (ys.start + ys.stop) / 2 / height, side))
    if not boxes:
        raise LayoutError("the mask has no region large enough for a face: paint one blob per face")
    _check_count(len(boxes))
    boxes.sort(key=lambda b: b[0])
    slots = tuple(FaceSlot(square_box_fractions(cx, cy, side, width, height)) for cx, cy, side in boxes)
    return FaceLayout(width, height, slots)


def layout_from_boxes(boxes_px: list, image_width: int, image_height: int, width: int, height: int,
                      expand: float = 1.0, drivers: list | None = None) -> FaceLayout:
    """Faces found in a location photo (xyxy pixels of that photo) placed at the same spots of the target image."""
    _check_size(width, height)
    _check_count(len(boxes_px))
    slots = []
    for i, (x0, y0, x1, y1) in enumerate(boxes_px):
        side = max(x1 - x0, y1 - y0) * expand * width / image_width
        cx, cy = (x0 + x1) / 2 / image_width, (y0 + y1) / 2 / image_height
        driver = drivers[i] if drivers else None
        slots.append(FaceSlot(square_box_fractions(cx, cy, side, width, height), driver))
    return FaceLayout(width, height, tuple(slots))


def _check_size(width: int, height: int) -> None:
    if width < 8 or height < 8:
        raise LayoutError(f"image size {width}x{height} is too small")
