"""Checks for node inputs where they enter the pack: each failure names the input and says what was expected.

ComfyUI's min/max checks let NaN through (every comparison with NaN is false), and IMAGE tensors arrive with any
batch size and channel count, so the nodes run these before anything else.
"""

from __future__ import annotations

import math

import torch


class InputError(ValueError):
    """A node input that cannot be used; the message starts with the input's name."""


def finite_number(name: str, value) -> float:
    """`value` as a float, refusing NaN, infinities and non-numbers."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return number


def positive_int(name: str, value, multiple_of: int = 1, maximum: int | None = None) -> int:
    """`value` as an int > 0 (a multiple of `multiple_of`, at most `maximum`); bools and fractions refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number) or number <= 0 or int(number) % multiple_of:
        unit = f"positive multiple of {multiple_of}" if multiple_of > 1 else "positive whole number"
        raise InputError(f"{name} must be a {unit}, got {value!r}")
    if maximum is not None and number > maximum:
        raise InputError(f"{name} must be at most {maximum}, got {value!r}")
    return int(number)


def image_batch(name: str, image) -> torch.Tensor:
    """A ComfyUI IMAGE (B, H, W, C) with B, H, W > 0 and finite values, as 3-channel RGB (see `as_rgb`)."""
    _batch(name, image, 4, "an IMAGE batch of shape (B, H, W, C)", "images", "connect at least one image",
           values="pixel values")
    return as_rgb(name, image)


def _batch(name: str, x, ndim: int, expected: str, unit: str, empty_tip: str, size_tip: str = "",
           values: str = "values") -> None:
    """The checks IMAGE and MASK batches share: an `ndim`-dim (B, H, W, ...) tensor with B, H, W > 0 and finite
    values; `expected` names the shape in the error, e.g. "a MASK batch of shape (B, H, W)"."""
    if not isinstance(x, torch.Tensor) or x.ndim != ndim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be {expected}, got {shape}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch (0 {unit}); {empty_tip}")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise InputError(f"{name} has zero size ({x.shape[2]}x{x.shape[1]} pixels){size_tip}")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} holds NaN or infinite {values}")


def as_rgb(name: str, image: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, H, W, 3): grey (C=1) is repeated, grey+alpha (C=2) and RGBA (C=4) drop the alpha."""
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels in (1, 2):
        return image[..., :1].expand(*image.shape[:-1], 3)
    if channels == 4:
        return image[..., :3]
    raise InputError(f"{name} has {channels} channels; expected 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA)")


def _is_finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def finite_boxes(name: str, boxes) -> None:
    """Refuse layout boxes with NaN or infinite coordinates (they cannot be drawn or placed)."""
    for i, box in enumerate(boxes):
        if not all(_is_finite(v) for v in box):
            raise InputError(f"{name}: box {i} has non-finite coordinates {tuple(box)}; expected finite fractions "
                             f"of the image")


def of_type(name: str, value, cls, source: str):
    """`value` when it is a `cls`; else InputError naming the input and the node its value must come from (custom
    types are only checked by name on the wire, so another pack's object can arrive)."""
    if not isinstance(value, cls):
        raise InputError(f"{name} must come from {source}, got {type(value).__name__}")
    return value


def face_analyzer(name: str, analyzer):
    """A face analyzer (anything with `analyze(image, image_index=...)`), as RealisID Face Analysis gives."""
    if not callable(getattr(analyzer, "analyze", None)):
        raise InputError(f"{name} must come from RealisID Face Analysis, got {type(analyzer).__name__}")
    return analyzer


def faces(name: str, value) -> tuple:
    """REALISID_FACES: a tuple (or list) of encoded people, as RealisID Face Encoder / Combine Faces give."""
    from realisid.identity_sources import EncodedFace  # lazy: identity_sources imports the face stack

    if not isinstance(value, (tuple, list)):
        raise InputError(f"{name} must be the faces output of RealisID Face Encoder, got {type(value).__name__}")
    for i, face in enumerate(value):
        if not isinstance(face, EncodedFace):
            raise InputError(f"{name}: person {i} is a {type(face).__name__}, not an encoded face; connect RealisID "
                             f"Face Encoder")
    return tuple(value)


def mask_batch(name: str, mask) -> torch.Tensor:
    """A ComfyUI MASK (B, H, W) (an (H, W) mask gets a batch of one) with B, H, W > 0 and finite values."""
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        mask = mask[None]
    _batch(name, mask, 3, "a MASK batch of shape (B, H, W)", "masks", "connect a painted mask",
           size_tip="; paint a mask of the output's aspect ratio")
    return mask


def percent_range(start_name: str, start, end_name: str, end, allow_equal: bool = False) -> tuple[float, float]:
    """(start, end) fractions of sampling, finite, 0 <= start < end <= 1 (start == end too with allow_equal)."""
    start, end = finite_number(start_name, start), finite_number(end_name, end)
    for label, value in ((start_name, start), (end_name, end)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{label} must be a fraction of sampling in [0, 1], got {value}")
    if start > end or (start == end and not allow_equal):
        raise InputError(f"{start_name} ({start}) must be below {end_name} ({end})")
    return start, end


def conditioning(name: str, cond) -> list:
    """A ComfyUI CONDITIONING: a list of [tensor, dict] pairs with finite tensors (NaN would spread to the latent)."""
    if not isinstance(cond, list) or not cond:
        raise InputError(f"{name} must be a non-empty CONDITIONING list, got "
                         f"{'an empty list' if isinstance(cond, list) else type(cond).__name__}")
    for i, entry in enumerate(cond):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], torch.Tensor)
                and isinstance(entry[1], dict)):
            raise InputError(f"{name}: entry {i} is not a [tensor, options] pair; connect a CLIP Text Encode output")
        if not bool(torch.isfinite(entry[0]).all()):
            raise InputError(f"{name}: entry {i} holds NaN or infinite values (check the text encoder upstream)")
        pooled = entry[1].get("pooled_output")
        if isinstance(pooled, torch.Tensor) and not bool(torch.isfinite(pooled).all()):
            raise InputError(f"{name}: entry {i}'s pooled output holds NaN or infinite values")
    return cond
