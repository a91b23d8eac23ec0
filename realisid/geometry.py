"""Face-box geometry: square boxes, coordinate conversion, latent crop + up-sample, residual relocation (pure torch).

Conventions: a box is (x0, y0, x1, y1) with continuous edge coordinates, so latent cell i spans [i, i+1].
Fractions are relative to the image; latent units are latent cells (pixels / 8). Boxes may leave the image.

Resampling (crop: latent box -> S x S; paste: crop residual -> the box's cells of the full residual) is separable
and linear, so it is stored as two small matrices per face and level (built once per face set, `place_boxes`):
* a latent cell is an AREA (8 x 8 pixels), so the crop reads a continuous field whose cell means ARE the latent's
  cells: the piecewise-linear field through prefiltered values (a small tridiagonal solve over the cells the box
  touches), and each crop cell is that field's exact mean over the crop cell. Enlarging, this is a bilinear
  up-sampling (the paper's) that does not blur; shrinking, it integrates (no aliasing). One rule for every box size.
* a paste that shrinks (crop cells smaller than the output cells: a small face) integrates the crop cells over
  each output cell exactly; one that enlarges (a face larger than S) is bilinear at the output cell centres. The
  two coincide at equal cell sizes. Because the crop's cell means match the latent, crop-then-paste of a small
  face returns the latent (plain bilinear up-sampling followed by the area paste blurred by [1/8, 3/4, 1/8]).
Pastes are multiplied by each cell's area coverage of the box (anti-aliased edge; exactly zero outside the box),
with an optional linear feather. Crops read zero outside the image and only the cells the box touches.

Where each UNet level's cells sit is read from the network's own down-sampling ops (`unet_levels`): a stride-2,
padding-1, 3x3 convolution (SD1.5, SDXL) centres level-l cell j at latent 2^l * j + 0.5, not at 2^l * (j + 0.5);
the crop and the full image are both placed with that rule, so a crop residual lands where the UNet's own
features for that spot are.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LATENT_DOWNSCALE = 8
log = logging.getLogger(__name__)


def frac_to_latent(boxes_frac, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(K,4) fractions -> (K,4) latent units for a latent of size (H, W)."""
    boxes = torch.as_tensor(boxes_frac, dtype=torch.float64).reshape(-1, 4)
    h, w = latent_hw
    return boxes * torch.tensor([w, h, w, h], dtype=torch.float64)


# ------------------------------------------------------------------------------------------- face boxes -------

@dataclass(frozen=True)
class FaceSquare:
    """A face box that is square at any output size: centre (cx, cy) as fractions of the image width and height,
    side as a fraction of the shorter side. `source_aspect`: width / height of the image it was read from (a mask,
    a photo), None when typed in. Resolved against each latent by `fractions`."""

    cx: float
    cy: float
    side: float
    source_aspect: float | None = None

    def fractions(self, hw: tuple[float, float]) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) fractions of an image of (height, width) (any units), square in those units."""
        h, w = (float(v) for v in hw)
        half_w, half_h = self.side * min(h, w) / w / 2, self.side * min(h, w) / h / 2
        return (self.cx - half_w, self.cy - half_h, self.cx + half_w, self.cy + half_h)


def box_fractions(boxes, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(K, 4) float64 fractions of `boxes` on a latent of (H, W): FaceSquares are resolved against it (and warn when
    read from an image of another aspect), (x0, y0, x1, y1) fractions are taken as they are."""
    warn_aspect([b.source_aspect for b in boxes if isinstance(b, FaceSquare)], latent_hw)
    rows = [b.fractions(latent_hw) if isinstance(b, FaceSquare) else tuple(map(float, b)) for b in boxes]
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


def warn_aspect(aspects, latent_hw: tuple[int, int], tolerance: float = 0.01) -> None:
    """Warn when faces read from an image of one aspect ratio meet a latent of another (the declared rule keeps
    their centres and relative size, and keeps them square, but they no longer sit on that image's content)."""
    latent_aspect = latent_hw[1] / latent_hw[0]
    for aspect in sorted({a for a in aspects if a is not None}):
        if abs(math.log(aspect / latent_aspect)) > tolerance:
            log.warning("RealisID: the layout was read from an image of aspect %.3f (width / height) but the latent "
                        "is %dx%d cells (aspect %.3f): each face keeps its centre (fractions of the width and "
                        "height) and its size (fraction of the shorter side) and stays square, so the faces no "
                        "longer sit where they were in that image. Use a mask or photo of the output's aspect "
                        "ratio to place them exactly.", aspect, latent_hw[1], latent_hw[0], latent_aspect)


# ------------------------------------------------------------------------------------------- UNet levels ------

@dataclass(frozen=True)
class Level:
    """One resolution level of a UNet: the down-sampling ops between the latent and it.

    ops: (kernel, stride, padding) of each op, in order. Cell j of the level is centred at latent coordinate
    `stride * j + offset` and spans `stride` latent cells around it.
    """

    ops: tuple[tuple[int, int, int], ...] = ()

    @property
    def stride(self) -> int:
        return math.prod(s for _, s, _ in self.ops)

    @property
    def offset(self) -> float:
        # an op's output j sees input indices s*j - p .. s*j - p + k - 1: centred at s*j - p + (k-1)/2
        offset, scale = 0.5, 1
        for k, s, p in self.ops:
            offset += scale * ((k - 1) / 2 - p)
            scale *= s
        return offset

    def size(self, n: int) -> int:
        for k, s, p in self.ops:
            n = (n + 2 * p - k) // s + 1
        return n

    def centres(self, n: int) -> torch.Tensor:
        """Latent coordinates of the centres of this level's cells on an input of n latent cells."""
        return torch.arange(self.size(n), dtype=torch.float64) * self.stride + self.offset


LEVEL0 = Level()


def _op_geometry(op) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a Conv2d or AvgPool2d with the same value on both axes."""
    values = []
    for name in ("kernel_size", "stride", "padding"):
        v = getattr(op, name)
        v = (v, v) if isinstance(v, int) else tuple(v)
        if isinstance(v[0], str) or len(set(v)) != 1:
            raise ValueError(f"unsupported down-sampling op {op}: {name}={v} (need the same integer on both axes)")
        values.append(int(v[0]))
    return tuple(values)


def unet_levels(net) -> list[Level]:
    """The levels of a ComfyUI UNetModel or ControlNet, read from the Downsample ops of its input blocks.

    Level 0 is the input resolution; each input block holding a Downsample (a strided conv, or an average pool
    for conv-less down-sampling) starts the next level. The middle block is at the last level.
    """
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample

    levels = [LEVEL0]
    for block in net.input_blocks:
        found = {_op_geometry(m.op) for m in block.modules() if isinstance(m, Downsample)}
        if len(found) > 1:
            raise ValueError(f"an input block down-samples in two different ways: {sorted(found)}")
        if found:
            levels.append(Level(levels[-1].ops + (found.pop(),)))
    return levels


# ------------------------------------------------------------------------------------------- 1-D weights ------

def _overlap(lo: torch.Tensor, hi: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(T, N): length of [lo_t, hi_t] inside [left_n, right_n]."""
    return (torch.minimum(hi[:, None], right[None]) - torch.maximum(lo[:, None], left[None])).clamp_min(0.0)


def _linear(pos: torch.Tensor, n: int) -> torch.Tensor:
    """(T, n) bilinear weights at index positions `pos` (cell centres at integers), clamped to the edge cells."""
    pos = pos.clamp(0.0, n - 1.0)
    j0 = pos.floor().clamp(max=max(n - 2, 0)).long()
    frac = (pos - j0).clamp(0.0, 1.0)
    w = torch.zeros(pos.shape[0], n, dtype=torch.float64)
    rows = torch.arange(pos.shape[0])
    w[rows, j0] += 1.0 - frac
    if n > 1:
        w[rows, j0 + 1] += frac
    return w


def _hat_integral(t: torch.Tensor) -> torch.Tensor:
    """Integral from -inf to t of the hat max(0, 1 - |u|)."""
    t = t.clamp(-1.0, 1.0)
    return torch.where(t < 0, (t + 1) ** 2 / 2, 1 - (1 - t) ** 2 / 2)


def _linear_field_integrals(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """(T, n): integral over [lo_t, hi_t] (clipped to [0, n]) of each basis function of the piecewise-linear field
    through values at the cell centres 0.5 .. n - 0.5, flat beyond the first and last centre (edge clamp)."""
    lo, hi = lo.clamp(0.0, n), hi.clamp(0.0, n)
    hi = torch.maximum(lo, hi)
    centres = torch.arange(-1, n + 1, dtype=torch.float64) + 0.5  # a ghost cell on each side carries the clamp
    w = _hat_integral(hi[:, None] - centres[None]) - _hat_integral(lo[:, None] - centres[None])
    w[:, 1] += w[:, 0]
    w[:, -2] += w[:, -1]
    return w[:, 1:-1]


@functools.lru_cache(maxsize=64)
def _mean_prefilter(n: int) -> torch.Tensor:
    """(n, n): cell values -> the values at the centres of the piecewise-linear field whose cell means they are.

    The cell-mean matrix is tridiagonal [1/8, 3/4, 1/8] (7/8, 1/8 at the clamped ends), diagonally dominant, so
    its inverse gains at most 2x (at the grid's Nyquist frequency) and decays by 0.17 per cell.
    """
    edges = torch.arange(n + 1, dtype=torch.float64)
    return torch.linalg.inv(_linear_field_integrals(edges[:-1], edges[1:], n))


def _crop_weights(x0: float, x1: float, size: int, n: int) -> torch.Tensor:
    """(size, n): crop cell p = mean over latent [x0 + p*r, x0 + (p+1)*r], r = (x1 - x0) / size, of the
    mean-preserving linear field of the cells the box touches (so nothing outside them is read); zero off the
    image (a crop cell half off the image reads half)."""
    w = torch.zeros(size, n, dtype=torch.float64)
    i0, i1 = min(max(math.floor(x0), 0), n), min(max(math.ceil(x1), 0), n)
    if i1 <= i0:  # the box misses the image
        return w
    r = (x1 - x0) / size
    lo = x0 - i0 + torch.arange(size, dtype=torch.float64) * r
    w[:, i0:i1] = _linear_field_integrals(lo, lo + r, i1 - i0) / r @ _mean_prefilter(i1 - i0)
    return w


def _edge_ramp(c: torch.Tensor, x0: float, x1: float, feather: float) -> torch.Tensor:
    """A linear ramp from 0 at the box edge to 1 at `feather` * box size inside, at positions c."""
    if feather <= 0:
        return torch.ones_like(c)
    return (torch.minimum(c - x0, x1 - c) / max(feather * (x1 - x0), 1e-12)).clamp(0.0, 1.0)


def _paste_weights(x0: float, x1: float, crop_size: int, n: int, level: Level, feather: float) -> torch.Tensor:
    """(level.size(n), level.size(crop_size)): full level cells <- crop level cells of the box [x0, x1].

    Both grids use `level`'s cell placement (full: on the latent; crop: on the crop, mapped into the box), the
    crop grid clamped at its edges so that it covers the whole box. Zero for cells that miss the box.
    """
    a, r = level.stride, (x1 - x0) / crop_size
    centre = level.centres(n)
    lo, hi = (centre - a / 2).clamp_min(x0), (centre + a / 2).clamp_max(x1)
    cover = (hi - lo).clamp_min(0.0) / a
    crop_centre = x0 + r * level.centres(crop_size)
    s = crop_centre.shape[0]
    if r <= 1.0:  # crop cells no larger than the full cells: integrate them over each cell
        left, right = crop_centre - a * r / 2, crop_centre + a * r / 2
        left[0], right[-1] = -math.inf, math.inf
        w = _overlap(lo, torch.maximum(hi, lo), left, right) / a
    else:
        w = _linear((centre - crop_centre[0]) / (a * r), s) * cover[:, None]
    return w * _edge_ramp(centre, x0, x1, feather)[:, None]


def _cover(x0: float, x1: float, n: int, level: Level) -> torch.Tensor:
    """(level.size(n),): the fraction of each level cell inside [x0, x1]."""
    a, centre = level.stride, level.centres(n)
    return ((centre + a / 2).clamp_max(x1) - (centre - a / 2).clamp_min(x0)).clamp_min(0.0) / a


def level_box_mask(boxes, latent_hw: tuple[int, int], level: Level = LEVEL0, feather: float = 0.0) -> torch.Tensor:
    """(K, 1, h, w) float64 area coverage of boxes (latent units) by the cells of `level`; exactly 0 outside."""
    boxes = _as_boxes(boxes, None)
    masks = []
    for x0, y0, x1, y1 in boxes.tolist():
        cy, cx = _cover(y0, y1, latent_hw[0], level), _cover(x0, x1, latent_hw[1], level)
        cy = cy * _edge_ramp(level.centres(latent_hw[0]), y0, y1, feather)
        cx = cx * _edge_ramp(level.centres(latent_hw[1]), x0, x1, feather)
        masks.append(cy[:, None] * cx[None])
    return torch.stack(masks)[:, None]


def overlap_norm(masks: torch.Tensor) -> torch.Tensor | None:
    """1 / max(1, sum_k mask_k) over (K, 1, h, w) masks, or None when no two boxes overlap (nothing to do).

    The overlap policy of the pack: where boxes overlap, the faces' contributions are a coverage-weighted MEAN
    (their sum divided by the total coverage) instead of a sum, so an overlap never doubles the injection; where
    they do not overlap, each face's contribution is unchanged.
    """
    total = masks.sum(dim=0)[0]
    if bool((total <= 1.0 + 1e-9).all()):
        return None
    return 1.0 / total.clamp_min(1.0)


# ------------------------------------------------------------------------------------------- placements ------

def _as_boxes(boxes, device) -> torch.Tensor:
    if isinstance(boxes, (list, tuple)) and boxes and not isinstance(boxes[0], (int, float)):
        boxes = [[float(v) for v in box] for box in boxes]  # a list of arrays would go through torch's slow path
    out = torch.as_tensor(boxes, dtype=torch.float64, device=device).reshape(-1, 4)
    if not bool(torch.isfinite(out).all()):  # NaN fails every comparison below, so it would pass them
        raise ValueError(f"non-finite box in {out.tolist()}: boxes are fractions of the latent, finite numbers")
    if bool(((out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])).any()):
        raise ValueError(f"empty box in {out.tolist()}: need x1 > x0 and y1 > y0")
    return out


@dataclass(frozen=True)
class PasteLevel:
    """The paste matrices of one level, cut to the rows/columns any box touches (the rest is exactly zero)."""

    rows: torch.Tensor  # (K, r1 - r0, s)
    cols: torch.Tensor  # (K, c1 - c0, s)
    window: tuple[int, int, int, int]  # r0, r1, c0, c1 of the full level grid
    out_hw: tuple[int, int]
    norm: torch.Tensor | None  # (r1 - r0, c1 - c0): the overlap policy's 1 / max(1, sum of coverages)


@dataclass(frozen=True)
class BoxPlacement:
    """Per-step constants of K boxes on one latent size: the crop matrices and, per level, the paste matrices.

    Built once per face set (the control caches it across steps), so a denoising step runs two small matmuls
    per tensor, with no grid arithmetic and no host-device synchronisation.
    """

    k: int
    crop: tuple[torch.Tensor, torch.Tensor] | None  # (K, S, H), (K, S, W)
    paste: dict  # crop-level side s -> PasteLevel


def _window(weights: torch.Tensor) -> tuple[int, int]:
    """[start, stop) of the rows of (K, n, s) that are nonzero for some face (at least one row)."""
    used = torch.nonzero(weights.abs().sum(dim=(0, 2)) > 0).flatten()
    if used.numel() == 0:
        return 0, 1
    return int(used[0]), int(used[-1]) + 1


def _paste_level(boxes: torch.Tensor, latent_hw, crop_size: int, level: Level, feather: float, dtype,
                 device) -> PasteLevel:
    h, w = latent_hw
    rows = torch.stack([_paste_weights(y0, y1, crop_size, h, level, feather) for _, y0, _, y1 in boxes.tolist()])
    cols = torch.stack([_paste_weights(x0, x1, crop_size, w, level, feather) for x0, _, x1, _ in boxes.tolist()])
    (r0, r1), (c0, c1) = _window(rows), _window(cols)
    norm = overlap_norm(level_box_mask(boxes, latent_hw, level, feather))
    if norm is not None:
        norm = norm[r0:r1, c0:c1].to(device=device, dtype=dtype)
    return PasteLevel(rows[:, r0:r1].to(device=device, dtype=dtype), cols[:, c0:c1].to(device=device, dtype=dtype),
                      (r0, r1, c0, c1), (level.size(h), level.size(w)), norm)


def place_boxes(boxes, latent_hw: tuple[int, int], crop_size: int, levels: Sequence[Level] = (LEVEL0,),
                feather: float = 0.0, dtype: torch.dtype = torch.float32, device=None,
                with_crop: bool = True) -> BoxPlacement:
    """Crop matrices (S x S over each box) and, for every level, the paste matrices of its residuals.

    `boxes` are (K, 4) latent units; the crop residual of level l has side levels[l].size(crop_size).
    """
    boxes = _as_boxes(torch.as_tensor(boxes, dtype=torch.float64).cpu(), None)
    work = sample_dtype(dtype)
    crop = None
    if with_crop:
        h, w = latent_hw
        crop = (torch.stack([_crop_weights(y0, y1, crop_size, h) for _, y0, _, y1 in boxes.tolist()]),
                torch.stack([_crop_weights(x0, x1, crop_size, w) for x0, _, x1, _ in boxes.tolist()]))
        crop = tuple(m.to(device=device, dtype=work) for m in crop)
    paste = {}
    for level in levels:
        side = level.size(crop_size)
        if side in paste:
            raise ValueError(f"crop size {crop_size} is too small for {len(levels)} UNet levels")
        paste[side] = _paste_level(boxes, latent_hw, crop_size, level, feather, work, device)
    return BoxPlacement(boxes.shape[0], crop, paste)


def _apply(rows: torch.Tensor, x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """rows @ x @ cols^T over the last two dims, cheapest order first."""
    if rows.shape[-2] * x.shape[-1] <= x.shape[-2] * cols.shape[-2]:
        return (rows @ x) @ cols.transpose(-1, -2)
    return rows @ (x @ cols.transpose(-1, -2))


def crop_placed(latent: torch.Tensor, placement: BoxPlacement, paired: bool = False) -> torch.Tensor:
    """(B, C, H, W) -> (K*B, C, S, S) face-major crops; zero outside the image, edge-clamped inside.

    paired: box k belongs to batch entry k only (K == B, the trainer's batches) -> (B, C, S, S).
    """
    b, c = latent.shape[:2]
    rows, cols = placement.crop
    work = rows.dtype
    x = latent.to(work)
    if paired:
        check_paired(placement.k, b)
        return _apply(rows[:, None], x, cols[:, None]).to(latent.dtype)
    out = _apply(rows[:, None, None], x[None], cols[:, None, None])  # (K, B, C, S, S)
    return out.reshape(placement.k * b, c, *out.shape[-2:]).to(latent.dtype)


def crop_noise_deficit(placement: BoxPlacement) -> torch.Tensor:
    """(K, 1, S, S): the std of fresh unit noise that brings each crop cell's noise back to the latent's.

    A crop cell is a linear combination sum_ij R_pi C_qj x_ij of latent cells, so i.i.d. noise of std s in the
    latent comes out with std s * sqrt(sum_i R_pi^2 * sum_j C_qj^2): up-sampling (a small face) averages
    neighbours, which lowers it, and the mean-preserving prefilter amplifies the grid's highest frequencies, which
    raises it, so the level is uneven across the crop. Adding independent noise of std s * deficit restores it
    where it dropped (deficit = sqrt(1 - that variance factor)); where it rose the deficit is 0 (fresh noise
    cannot lower it); off the image the crop reads nothing, so there the noise is all fresh.
    """
    rows, cols = placement.crop
    factor = rows.double().pow(2).sum(-1)[:, :, None] * cols.double().pow(2).sum(-1)[:, None, :]
    return (1.0 - factor).clamp_min(0.0).sqrt()[:, None].to(rows.dtype)


def paste_placed(residual: torch.Tensor, placement: BoxPlacement, sum_faces: bool = False,
                 paired: bool = False) -> torch.Tensor:
    """(K*B, C, s, s) crop residuals pasted into zeros of their level's full size; (K*B, ...) or, with sum_faces,
    (B, ...) combined by the overlap policy (`overlap_norm`).

    paired: residual row k is box k's only (K == B) -> (B, C, h, w).
    """
    level = placement.paste[residual.shape[-1]]
    k, (r0, r1, c0, c1), (h, w) = placement.k, level.window, level.out_hw
    work = level.rows.dtype
    pad = (c0, w - c1, r0, h - r1)
    if paired:
        check_paired(k, residual.shape[0])
        out = _apply(level.rows[:, None], residual.to(work), level.cols[:, None])
        return F.pad(out, pad).to(residual.dtype)
    kb, c = residual.shape[:2]
    if kb % k:
        raise ValueError(f"residual batch {kb} is not a multiple of the number of boxes {k}")
    src = residual.to(work).reshape(k, kb // k, c, *residual.shape[-2:])
    out = _apply(level.rows[:, None, None], src, level.cols[:, None, None])  # (K, B, C, r1-r0, c1-c0)
    if sum_faces:
        out = out.sum(dim=0)
        if level.norm is not None:
            out = out * level.norm
    else:
        out = out.reshape(kb, c, *out.shape[-2:])
    return F.pad(out, pad).to(residual.dtype)


def sample_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype crops and pastes are computed in: half-precision weights (bf16's 8-bit mantissa, fp16's 11) would
    misplace and mis-weight cells, so bf16 and fp16 tensors are resampled in float32."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def check_paired(k: int, b: int) -> None:
    if k != b:
        raise ValueError(f"paired mode needs one box per batch entry, got {k} boxes for a batch of {b}")


def crop_and_resize(latent: torch.Tensor, boxes, size: int) -> torch.Tensor:
    """Crop each box (latent units, (K,4) xyxy) from (B,C,H,W) and resample it to S x S.

    Returns (K*B, C, S, S), face-major (row k*B + b). Each crop cell is the mean of the latent's mean-preserving
    linear field over it (see the module note): a bilinear up-sampling that keeps cell means when the box is
    smaller than S, an area integral when larger; zero outside the image (a constant latent crops to that
    constant wherever the crop cell lies inside the image).
    """
    placement = place_boxes(boxes, tuple(latent.shape[-2:]), size, (), dtype=latent.dtype, device=latent.device)
    return crop_placed(latent, placement)


def relocate(residual: torch.Tensor, boxes, latent_hw: tuple[int, int], level: Level = LEVEL0,
             crop_size: int | None = None, feather: float = 0.0) -> torch.Tensor:
    """Paste crop-space residuals (K*B, C, s, s) of `level` into zeros of that level's full size, at each box.

    `boxes` are (K,4) latent units; crop_size is the level-0 crop side S (default: s, right for level 0).
    Exactly 0 outside the box; area-integrated when shrinking, bilinear when enlarging.
    """
    placement = place_boxes(boxes, latent_hw, crop_size or residual.shape[-1], [level], feather,
                            dtype=residual.dtype, device=residual.device, with_crop=False)
    return paste_placed(residual, placement)


def box_mask_latent(boxes, h: int, w: int, device=None) -> torch.Tensor:
    """(K,1,h,w) float64 mask of boxes given in the units of an (h, w) grid (cell i spans [i, i+1]): 1 where the
    cell centre lies in the box (the global branch's hint and the training mask; `level_box_mask` gives the
    anti-aliased area coverage the residuals are pasted with)."""
    boxes = _as_boxes(boxes, None)
    cx = torch.arange(w, dtype=torch.float64)[None] + 0.5
    cy = torch.arange(h, dtype=torch.float64)[None] + 0.5
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    mx = ((cx >= x0[:, None]) & (cx < x1[:, None])).double()
    my = ((cy >= y0[:, None]) & (cy < y1[:, None])).double()
    return (my[:, :, None] * mx[:, None, :])[:, None].to(device)


def box_mask(boxes_frac, h: int, w: int) -> torch.Tensor:
    """(K,1,h,w) float32 mask of boxes given as fractions of the image, on an h x w grid (cell centres in the box)."""
    boxes = _as_boxes(boxes_frac, None) * torch.tensor([w, h, w, h], dtype=torch.float64)
    return box_mask_latent(boxes, h, w).float()


def hints_in_boxes(hints: torch.Tensor, boxes_frac, h: int, w: int) -> torch.Tensor:
    """(K,C,h,w): each face's hint, drawn in the crop frame of its box, placed in that box on a black h x w image
    (bilinear, zeros outside the box and the image): what the face's keypoints look like drawn on the whole
    image, InstantID-style, for a global branch whose hint is the face drawing instead of the box mask."""
    if hints.ndim != 4 or hints.shape[0] != len(_as_boxes(boxes_frac, None)):
        raise ValueError(f"hints must be (K, C, S, S) with one per box, got {tuple(hints.shape)}")
    boxes = _as_boxes(boxes_frac, None)
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    bw, bh = (x1 - x0).clamp_min(1e-9), (y1 - y0).clamp_min(1e-9)
    # output pixel at normalised x_n sits at the image fraction (x_n + 1) / 2; its crop-frame fraction is
    # (frac - x0) / bw, i.e. normalised 2 * (frac - x0) / bw - 1: one affine map per box
    zero = torch.zeros_like(bw)
    theta = torch.stack([torch.stack([1 / bw, zero, (1 - 2 * x0) / bw - 1], dim=1),
                         torch.stack([zero, 1 / bh, (1 - 2 * y0) / bh - 1], dim=1)], dim=1)
    grid = F.affine_grid(theta.to(torch.float32), [hints.shape[0], hints.shape[1], h, w], align_corners=False)
    return F.grid_sample(hints.float(), grid.to(hints.device), mode="bilinear", padding_mode="zeros",
                         align_corners=False)
