"""Relocation accuracy, previous rule (point-sampled bilinear, pure scaling) against the current one (issue 11).

    python benchmarks/relocation_accuracy.py        # writes benchmarks/results/relocation_accuracy.json

* energy: a band-limited crop field (up to 16 periods over S = 64) pasted into a box of side 1/10 .. 1/2 of a
  128-cell latent, against the area integral over every cell by explicit loops (tests/unit/test_geometry.py's reference);
* round trip: a smooth latent field cropped to S = 64, taken to UNet level l the way a stride-2 padding-1 conv
  does (its centre tap: cell j of level l is latent cell 2^l * j), relocated, and compared with the full latent's
  own level-l field on the cells fully inside the box (relative RMS); "previous" crops and pastes by point-sampled
  bilinear grid_sample with pure scaling (tests/unit/test_geometry.py's round_trip_errors).
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.test_geometry import _band_limited, _loop_area_paste, _old_point_paste, round_trip_errors  # noqa: E402

from realisid import geometry as g  # noqa: E402

log = logging.getLogger("relocation_accuracy")
N, S = 128, 64
SIZES = (1 / 10, 1 / 7, 1 / 4, 1 / 2)


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
    return {f"1/{round(1 / size)}": {f"level {n}": {"current": new, "previous": old}
                                      for n, (new, old) in round_trip_errors(size).items()}
            for size in SIZES}


def main() -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = {"energy_rel_err": energy_figures(), "round_trip_rel_rms": round_trip_figures()}
    path = REPO / "benchmarks" / "results" / "relocation_accuracy.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s\nwrote %s", json.dumps(report, indent=2), path)
    return report


if __name__ == "__main__":
    main()
