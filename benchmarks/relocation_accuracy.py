"""Relocation accuracy, previous rule (point-sampled bilinear, pure scaling) against the current one (issue 11).

    python benchmarks/relocation_accuracy.py        # writes benchmarks/results/relocation_accuracy.json

* energy: a band-limited crop field (up to 16 periods over S = 64) pasted into a box of side 1/10 .. 1/2 of a
  128-cell latent, against the area integral over every cell by explicit loops (tests/test_geometry.py's reference);
* round trip: a smooth latent field cropped to S = 64, taken to UNet level l the way a stride-2 padding-1 conv
  does (its centre tap: cell j of level l is latent cell 2^l * j), relocated, and compared with the full latent's
  own level-l field on the cells fully inside the box (relative RMS).
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from realisid import geometry as g  # noqa: E402
from tests.test_geometry import _band_limited, _loop_area_paste, _old_point_paste  # noqa: E402

log = logging.getLogger("relocation_accuracy")
N, S = 128, 64
SIZES = (1 / 10, 1 / 7, 1 / 4, 1 / 2)
LEVELS = [g.Level(((3, 2, 1),) * n) for n in range(3)]


def old_paste(res: torch.Tensor, box, level_scale: int) -> torch.Tensor:
    """The previous relocation: bilinear grid_sample at full cell centres, box scaled by 1 / 2^l, times coverage."""
    n = N // level_scale
    x0, y0, x1, y1 = (v / level_scale for v in box)
    c = torch.arange(n, dtype=torch.float64) + 0.5
    gx, gy = (c - x0) / (x1 - x0) * 2 - 1, (c - y0) / (y1 - y0) * 2 - 1
    grid = torch.stack([gx[None].expand(n, n), gy[:, None].expand(n, n)], dim=-1)[None]
    out = F.grid_sample(res, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out * g.box_mask_latent([[x0, y0, x1, y1]], n, n)


def energy_figures() -> dict:
    out = {}
    for size in SIZES:
        box = (37.3, 37.3 + size * N)
        ry, rx = _band_limited(S, 16, 1), _band_limited(S, 16, 2)
        ref = np.outer(_loop_area_paste(ry, box, N, g.LEVEL0, S), _loop_area_paste(rx, box, N, g.LEVEL0, S))
        res = torch.from_numpy(np.outer(ry, rx))[None, None]
        new = g.relocate(res, [[box[0], box[0], box[1], box[1]]], (N, N), g.LEVEL0, S)[0, 0].numpy()
        old = np.outer(_old_point_paste(ry, box, N, 1, S), _old_point_paste(rx, box, N, 1, S))
        out[f"1/{round(1 / size)}"] = {name: float(np.linalg.norm(v - ref) / np.linalg.norm(ref))
                                       for name, v in (("current", new), ("previous", old))}
    return out


def round_trip_figures() -> dict:
    yy, xx = torch.meshgrid(torch.arange(N, dtype=torch.float64) + 0.5, torch.arange(N, dtype=torch.float64) + 0.5,
                            indexing="ij")
    field = (torch.sin(xx / 5.0) * torch.cos(yy / 7.0) + 0.3 * torch.cos((xx + yy) / 9.0))[None, None]
    out = {}
    for size in SIZES:
        side = size * N
        box = (29.3, 41.7, 29.3 + side, 41.7 + side)
        crop = g.crop_and_resize(field, [box], S)
        figures = {}
        for n, level in enumerate(LEVELS):
            step = 2 ** n
            full, sub = field[..., ::step, ::step], crop[..., ::step, ::step]  # a stride-2 padding-1 conv's centre tap
            inside = g.level_box_mask([box], (N, N), level)[0, 0] == 1
            new = g.relocate(sub, [box], (N, N), level, S)
            old = old_paste(sub, box, step)
            ref = full[0, 0][inside]
            figures[f"level {n}"] = {name: float((v[0, 0][inside] - ref).norm() / ref.norm())
                                     for name, v in (("current", new), ("previous", old))}
        out[f"1/{round(1 / size)}"] = figures
    return out


def main() -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = {"energy_rel_err": energy_figures(), "round_trip_rel_rms": round_trip_figures()}
    path = REPO / "benchmarks" / "results" / "relocation_accuracy.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s\nwrote %s", json.dumps(report, indent=2), path)
    return report


if __name__ == "__main__":
    main()
