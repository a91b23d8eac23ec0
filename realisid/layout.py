"""Where the faces go: square face boxes that fit any output size, plus an optional pose/expression driver.

A layout never holds the output size. Each face is a `geometry.FaceSquare`: its centre as fractions of the image
width and height and its side as a fraction of the shorter side. The box is resolved against the latent when
sampling (`FaceSquare.fractions`), so it is square in pixels at every output size and never stretched. A layout
read from a mask or a photo remembers that image's aspect ratio; on a latent of another aspect the declared rule
above still holds (centres and relative size kept, the box square), but the faces no longer sit on the same
content of that image, so sampling logs a warning (`geometry.box_fractions`). Boxes may extend past the edges
(the branches pad, they never reject).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from realisid.geometry import FaceSquare
from realisid.validation import InputError, finite_boxes, finite_number

MAX_FACES = 16


class LayoutError(ValueError):
    """A layout request that cannot be honoured; the message says what to change."""


@dataclass(frozen=True)
class FaceSlot:
    square: FaceSquare
    # A face record (realisid.faces.record.FaceRecord) whose landmarks set pose and expression; None = the reference's
    driver: Any = None

    def box(self, width: float, height: float) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) fractions of a width x height image (square in its pixels)."""
        return self.square.fractions((height, width))


@dataclass(frozen=True)
class FaceLayout:
    slots: tuple[FaceSlot, ...]

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def aspect(self) -> float:
        """The aspect ratio (width / height) to preview the layout at: its source image's, else square."""
        aspects = [s.square.source_aspect for s in self.slots if s.square.source_aspect is not None]
        return aspects[0] if aspects else 1.0

    def boxes(self, width: float, height: float) -> np.ndarray:
        """(K, 4) box fractions for an image of the given size."""
        return np.array([s.box(width, height) for s in self.slots], dtype=np.float64).reshape(-1, 4)

    def pixel_boxes(self, width: float, height: float) -> np.ndarray:
        """(K, 4) boxes in pixels of an image of the given size."""
        return self.boxes(width, height) * np.array([width, height, width, height], dtype=np.float64)

    def appended(self, other: FaceLayout) -> FaceLayout:
        """This layout's faces, then `other`'s (each keeps its own centre, size and source aspect)."""
        _check_count(len(self) + len(other))
        return replace(self, slots=self.slots + other.slots)

    def with_drivers(self, drivers: list) -> FaceLayout:
        """Assign pose/expression drivers to slots in order; None keeps the slot's current driver."""
        slots = list(self.slots)
        for i, driver in enumerate(drivers[: len(slots)]):
            if driver is not None:
                slots[i] = replace(slots[i], driver=driver)
        return replace(self, slots=tuple(slots))


def checked_layout(name: str, layout) -> FaceLayout:
    """`layout` when it is a FaceLayout with finite boxes, else InputError naming the input. The layout nodes never
    make a NaN box, but a layout from another pack can hold one, and the relocation would paste NaN residuals."""
    if not isinstance(layout, FaceLayout):
        raise InputError(f"{name} must come from a RealisID Face Layout node, got {type(layout).__name__}")
    finite_boxes(name, [(s.square.cx, s.square.cy, s.square.side) for s in layout.slots])
    return layout


def _check_count(n: int) -> None:
    if n > MAX_FACES:
        raise LayoutError(f"{n} faces requested; RealisID handles at most {MAX_FACES} in one image")


def face_square(x, y, size, source_aspect: float | None = None, name: str = "") -> FaceSquare:
    """A checked FaceSquare: finite centre (fractions) and a side in (0, 1] of the shorter image side."""
    prefix = f"{name}." if name else ""
    x, y = finite_number(f"{prefix}x", x), finite_number(f"{prefix}y", y)
    size = finite_number(f"{prefix}size", size)
    if not 0.0 < size <= 1.0:
        raise InputError(f"{prefix}size must be a fraction of the shorter image side in (0, 1], got {size}")
    return FaceSquare(x, y, size, source_aspect)


def layout_from_numbers(faces: list[tuple[float, float, float]]) -> FaceLayout:
    """Faces given as (x centre, y centre, size), all fractions; size is relative to the shorter image side."""
    _check_count(len(faces))
    return FaceLayout(tuple(FaceSlot(face_square(x, y, size)) for x, y, size in faces))


def layout_from_mask(mask: np.ndarray, expand: float = 1.0, min_pixels: int = 16) -> FaceLayout:
    """One square box per connected region of a (H, W) mask, ordered left to right."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0.5
    if mask.ndim != 2:
        raise LayoutError(f"expected a single (H, W) mask, got shape {mask.shape}")
    height, width = mask.shape
    labels, _ = ndimage.label(mask)
    boxes = []
    for ys, xs in ndimage.find_objects(labels):
        if (ys.stop - ys.start) * (xs.stop - xs.start) < min_pixels:
            continue
        side = max(ys.stop - ys.start, xs.stop - xs.start) * expand
        boxes.append(((xs.start + xs.stop) / 2 / width, (ys.start + ys.stop) / 2 / height, side))
    if not boxes:
        raise LayoutError("the mask has no region large enough for a face: paint one blob per face")
    _check_count(len(boxes))
    boxes.sort(key=lambda b: b[0])
    short = min(width, height)
    return FaceLayout(tuple(FaceSlot(FaceSquare(cx, cy, side / short, width / height)) for cx, cy, side in boxes))


def layout_from_boxes(boxes_px: list, image_width: int, image_height: int, expand: float = 1.0,
                      drivers: list | None = None) -> FaceLayout:
    """Faces found in a location photo (xyxy pixels of that photo) placed at the same spots of the output, with the
    same size relative to the shorter side."""
    _check_count(len(boxes_px))
    short = min(image_width, image_height)
    slots = []
    for i, (x0, y0, x1, y1) in enumerate(boxes_px):
        side = max(x1 - x0, y1 - y0) * expand / short
        cx, cy = (x0 + x1) / 2 / image_width, (y0 + y1) / 2 / image_height
        driver = drivers[i] if drivers else None
        slots.append(FaceSlot(FaceSquare(cx, cy, side, image_width / image_height), driver))
    return FaceLayout(tuple(slots))
