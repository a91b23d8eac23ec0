"""Face-box geometry: square boxes, coordinate conversion, latent crop + up-sample, residual relocation (pure torch).

Conventions: a box is (x0, y0, x1, y1) with continuous edge coordinates, so cell i of a grid spans [i, i+1].
Fractions are relative to the image; latent units are latent cells (pixels / 8). Boxes may leave the image.
Sampling uses grid_sample with align_corners=False, so fractional boxes are exact (no rounding at any scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LATENT_DOWNSCALE = 8


def square_box_from_detection(xyxy_px: Sequence[float], expand: float = 1.0) -> tuple[float, float, float, float]:
    """A square box around a detection: side = longer side * expand, same centre (RealisID crops square faces)."""
    x0, y0, x1, y1 = (float(v) for v in xyxy_px)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty detection box {tuple(xyxy_px)}: need x1 > x0 and y1 > y0")
    if expand <= 0:
        raise ValueError(f"expand must be > 0, got {expand}")
    half = max(x1 - x0, y1 - y0) * expand / 2.0
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return (cx - half, cy - half, cx + half, cy + half)


def frac_to_px(box_frac: Sequence[float], width: float, height: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box_frac
    return (x0 * width, y0 * height, x1 * width, y1 * height)


def px_to_frac(box_px: Sequence[float], width: float, height: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box_px
    return (x0 / width, y0 / height, x1 / width, y1 / height)


def px_to_latent(box_px: Sequence[float], downscale: int = LATENT_DOWNSCALE) -> tuple[float, float, float, float]:
    return tuple(float(v) / downscale for v in box_px)


def latent_to_px(box_latent: Sequence[float], downscale: int = LATENT_DOWNSCALE) -> tuple[float, float, float, float]:
    return tuple(float(v) * downscale for v in box_latent)


def frac_to_latent(boxes_frac, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(K,4) fractions -> (K,4) latent units for a latent of size (H, W)."""
    boxes = torch.as_tensor(boxes_frac, dtype=torch.float64).reshape(-1, 4)
    h, w = latent_hw
    return boxes * torch.tensor([w, h, w, h], dtype=torch.float64)


def unet_level_sizes(size: int, levels: int) -> list[int]:
    """Spatial sizes of the UNet levels for an input of `size`: size, ceil(size/2), ... (stride-2 convs, padding 1)."""
    out = [int(size)]
    for _ in range(levels - 1):
        out.append(math.ceil(out[-1] / 2))
    return out


def _as_boxes(boxes, device) -> torch.Tensor:
    out = torch.as_tensor(boxes, dtype=torch.float64, device=device).reshape(-1, 4)
    if bool(((out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])).any()):
        raise ValueError(f"empty box in {out.tolist()}: need x1 > x0 and y1 > y0")
    return out


def _normalized(coord: torch.Tensor, size: int) -> torch.Tensor:
    """Edge coordinate in [0, size] -> grid_sample coordinate in [-1, 1] (align_corners=False)."""
    return coord * (2.0 / size) - 1.0


def _crop_grid(boxes: torch.Tensor, hw: tuple[int, int], size: int) -> torch.Tensor:
    """(K, S, S, 2) sample positions (grid_sample units) of the centres of an S x S grid laid over each box."""
    steps = (torch.arange(size, dtype=torch.float64, device=boxes.device) + 0.5) / size
    xs = boxes[:, 0:1] + steps[None] * (boxes[:, 2:3] - boxes[:, 0:1])
    ys = boxes[:, 1:2] + steps[None] * (boxes[:, 3:4] - boxes[:, 1:2])
    gx = _normalized(xs, hw[1])[:, None, :].expand(-1, size, -1)
    gy = _normalized(ys, hw[0])[:, :, None].expand(-1, -1, size)
    return torch.stack([gx, gy], dim=-1)


@dataclass(frozen=True)
class BoxPlacement:
    """Per-step constants of K boxes on one latent size: where to crop and where to paste at each scale.

    Built once per face set (the control caches it across steps), so a denoising step runs only grid_sample and
    a multiply per residual, with no grid arithmetic and no host-device synchronisation.
    """

    k: int
    crop_grid: torch.Tensor | None  # (K, S, S, 2), compute dtype
    crop_inside: torch.Tensor | None  # (K, 1, S, S): 0 where the crop samples outside the image
    paste: dict  # out_hw -> (grid (K, h, w, 2), mask (K, 1, h, w))


def place_boxes(boxes, latent_hw: tuple[int, int], crop_size: int | None = None, out_sizes=(), feather: float = 0.0,
                dtype: torch.dtype = torch.float32, device=None) -> BoxPlacement:
    """Crop grid (S x S over each box) and, for every residual size in `out_sizes`, the inverse grid and mask.

    `boxes` are (K, 4) latent units; a residual of size out_hw sees them scaled by out_hw / latent_hw exactly.
    """
    boxes = _as_boxes(torch.as_tensor(boxes, dtype=torch.float64).cpu(), None)
    crop_grid = crop_inside = None
    if crop_size is not None:
        grid = _crop_grid(boxes, latent_hw, crop_size)
        crop_inside = (grid.abs() <= 1.0).all(dim=-1)[:, None].to(device=device, dtype=sample_dtype(dtype))
        crop_grid = grid.to(device=device, dtype=sample_dtype(dtype))
    paste = {}
    for out_hw in dict.fromkeys(tuple(hw) for hw in out_sizes):
        scale = torch.tensor([out_hw[1] / latent_hw[1], out_hw[0] / latent_hw[0]] * 2, dtype=torch.float64)
        scaled = boxes * scale
        mask = box_mask_latent(scaled, out_hw[0], out_hw[1], soft=True, feather=feather)
        paste[out_hw] = (_relocate_grid(scaled, out_hw).to(device=device, dtype=sample_dtype(dtype)),
                         mask.to(device=device, dtype=sample_dtype(dtype)))
    return BoxPlacement(boxes.shape[0], crop_grid, crop_inside, paste)


def _per_face(t: torch.Tensor, k: int) -> torch.Tensor:
    """(K*B, C, h, w) face-major -> (K, B*C, h, w): one grid per face serves all its batch entries."""
    kb, c, h, w = t.shape
    if kb % k:
        raise ValueError(f"residual batch {kb} is not a multiple of the number of boxes {k}")
    return t.reshape(k, (kb // k) * c, h, w)


def crop_placed(latent: torch.Tensor, placement: BoxPlacement, paired: bool = False) -> torch.Tensor:
    """(B, C, H, W) -> (K*B, C, S, S) face-major crops; zero outside the image, edge-clamped inside.

    paired: box k belongs to batch entry k only (K == B, the trainer's batches) -> (B, C, S, S).
    """
    b, c, h, w = latent.shape
    k, grid = placement.k, placement.crop_grid
    work = sample_dtype(latent.dtype)
    inside = placement.crop_inside.to(work)
    if paired:
        check_paired(k, b)
        out = F.grid_sample(latent.to(work), grid.to(work), mode="bilinear", padding_mode="border",
                            align_corners=False)
        return (out * inside).to(latent.dtype)
    src = latent.to(work).reshape(1, b * c, h, w).expand(k, -1, -1, -1)
    out = F.grid_sample(src, grid.to(work), mode="bilinear", padding_mode="border", align_corners=False) * inside
    return out.reshape(k * b, c, *out.shape[-2:]).to(latent.dtype)


def paste_placed(residual: torch.Tensor, placement: BoxPlacement, out_hw: tuple[int, int],
                 sum_faces: bool = False, paired: bool = False) -> torch.Tensor:
    """(K*B, C, s, s) crop residuals pasted into zeros of out_hw; (K*B, ...) or, with sum_faces, (B, ...).

    paired: residual row k is box k's only (K == B) -> (B, C, h, w).
    """
    grid, mask = placement.paste[tuple(out_hw)]
    k = placement.k
    work = sample_dtype(residual.dtype)
    grid, mask = grid.to(work), mask.to(work)
    if paired:
        check_paired(k, residual.shape[0])
        out = F.grid_sample(residual.to(work), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return (out * mask).to(residual.dtype)
    src = _per_face(residual.to(work), k)
    pasted = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False) * mask
    if sum_faces:
        pasted = pasted.sum(dim=0, keepdim=True)
    return pasted.reshape(-1, residual.shape[1], *pasted.shape[-2:]).to(residual.dtype)


def sample_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype crops and pastes are sampled in: bf16's 8-bit mantissa would misplace a grid coordinate by up to
    half a latent cell at 128 cells, so bf16 tensors are sampled in float32 (fp16 and fp32 as they are)."""
    return torch.float32 if dtype == torch.bfloat16 else dtype


def check_paired(k: int, b: int) -> None:
    if k != b:
        raise ValueError(f"paired mode needs one box per batch entry, got {k} boxes for a batch of {b}")


def crop_and_resize(latent: torch.Tensor, boxes, size: int) -> torch.Tensor:
    """Crop each box (latent units, (K,4) xyxy) from (B,C,H,W) and resize bilinearly to S x S.

    Returns (K*B, C, S, S), face-major (row k*B + b). Samples outside the image are zero; inside, the image edge
    is clamped (so a constant latent crops to a constant wherever the box covers the image).
    """
    placement = place_boxes(boxes, tuple(latent.shape[-2:]), size, dtype=latent.dtype, device=latent.device)
    return crop_placed(latent, placement)


def _edge_coverage(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """(K, n): the fraction of each cell [i, i+1] covered by the interval [lo, hi]."""
    cells = torch.arange(n, dtype=torch.float64, device=lo.device)[None]
    return (torch.minimum(cells + 1, hi[:, None]) - torch.maximum(cells, lo[:, None])).clamp(0.0, 1.0)


def _edge_ramp(lo: torch.Tensor, hi: torch.Tensor, n: int, feather: float) -> torch.Tensor:
    """(K, n): a linear ramp from 0 at the box edge to 1 at `feather` * box size inside, at cell centres."""
    centres = torch.arange(n, dtype=torch.float64, device=lo.device)[None] + 0.5
    width = (feather * (hi - lo)).clamp_min(1e-12)[:, None]
    return (torch.minimum(centres - lo[:, None], hi[:, None] - centres) / width).clamp(0.0, 1.0)


def box_mask_latent(boxes, h: int, w: int, soft: bool = True, feather: float = 0.0, device=None) -> torch.Tensor:
    """(K,1,h,w) float64 mask of boxes given in the units of an (h, w) grid.

    soft=True: area coverage of each cell (anti-aliased edge); soft=False: 1 where the cell centre lies in the box.
    feather > 0 multiplies a linear ramp of that width (fraction of box size). Always exactly 0 outside the box.
    """
    boxes = _as_boxes(boxes, device)
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    if soft:
        mx, my = _edge_coverage(x0, x1, w), _edge_coverage(y0, y1, h)
    else:
        cx = torch.arange(w, dtype=torch.float64, device=boxes.device)[None] + 0.5
        cy = torch.arange(h, dtype=torch.float64, device=boxes.device)[None] + 0.5
        mx = ((cx >= x0[:, None]) & (cx < x1[:, None])).double()
        my = ((cy >= y0[:, None]) & (cy < y1[:, None])).double()
    if feather > 0:
        mx, my = mx * _edge_ramp(x0, x1, w, feather), my * _edge_ramp(y0, y1, h, feather)
    return (my[:, :, None] * mx[:, None, :])[:, None]


def box_mask(boxes_frac, h: int, w: int, soft: bool = False) -> torch.Tensor:
    """(K,1,h,w) float32 mask of boxes given as fractions of the image, on an h x w grid."""
    boxes = _as_boxes(boxes_frac, None) * torch.tensor([w, h, w, h], dtype=torch.float64)
    return box_mask_latent(boxes, h, w, soft=soft).float()


def _relocate_grid(boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(K, h, w, 2): for every output cell centre, its position inside the box in grid_sample units."""
    h, w = hw
    cx = torch.arange(w, dtype=torch.float64, device=boxes.device)[None] + 0.5
    cy = torch.arange(h, dtype=torch.float64, device=boxes.device)[None] + 0.5
    gx = (cx - boxes[:, 0:1]) / (boxes[:, 2:3] - boxes[:, 0:1]) * 2.0 - 1.0
    gy = (cy - boxes[:, 1:2]) / (boxes[:, 3:4] - boxes[:, 1:2]) * 2.0 - 1.0
    return torch.stack([gx[:, None, :].expand(-1, h, -1), gy[:, :, None].expand(-1, -1, w)], dim=-1)


def relocate(residual: torch.Tensor, boxes, latent_hw: tuple[int, int], out_hw: tuple[int, int],
             feather: float = 0.0) -> torch.Tensor:
    """Paste crop-space residuals (K*B,C,s,s) back into zeros of size out_hw, at each box scaled by out_hw/latent_hw.

    `boxes` are (K,4) latent units; out_hw is this residual level's full-image size. Bilinear inverse map via
    grid_sample (edge clamped inside the box), multiplied by the anti-aliased box mask: exactly 0 outside the box.
    """
    placement = place_boxes(boxes, latent_hw, None, [out_hw], feather, dtype=residual.dtype, device=residual.device)
    return paste_placed(residual, placement, out_hw)
