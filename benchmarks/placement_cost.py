"""Per-step cost of the local branch's placement alone (crop + paste of every residual), at real SDXL shapes.

    python benchmarks/placement_cost.py [--before PATH_TO_AN_OLDER_CHECKOUT] [--ks 1 4] [--repeats 5]

The placement is the only part of a step that the geometry changes (the branch passes and the UNet are the same
calls), so it is timed apart: one crop of the (B, 4, 128, 128) latent to S = 64 and the paste of SDXL's local
residuals (levels 128/64/32 for the crop's 64/32/16: 320 x 3, 640 x 3, 1280 x 3 channels, plus the middle block),
summed over K faces. `--before` times the same with the realisid.geometry of another checkout (its API of the
time: grids + grid_sample). Writes benchmarks/results/placement_cost_cpu.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import pathlib
import statistics
import sys
import time

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
log = logging.getLogger("placement_cost")
LATENT, CROP, BATCH = 128, 64, 2
RESIDUALS = [(320, 0)] * 3 + [(640, 1)] * 3 + [(1280, 2)] * 4  # (channels, level): SDXL's local residuals + middle


def load_geometry(root: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"geometry_{abs(hash(root))}", root / "realisid" / "geometry.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def boxes(k: int) -> torch.Tensor:
    side = LATENT / 6
    return torch.tensor([[10.3 + 20 * i, 30.7, 10.3 + 20 * i + side, 30.7 + side] for i in range(k)],
                        dtype=torch.float64)


def step_current(g, k: int):
    levels = [g.Level(((3, 2, 1),) * n) for n in range(3)]
    placement = g.place_boxes(boxes(k), (LATENT, LATENT), CROP, levels)
    return lambda latent, res: ([g.crop_placed(latent, placement)]
                                + [g.paste_placed(r, placement, sum_faces=True) for r in res])


def step_before(g, k: int):
    sizes = [(LATENT >> n, LATENT >> n) for n in range(3)]
    placement = g.place_boxes(boxes(k), (LATENT, LATENT), CROP, sizes)
    return lambda latent, res: ([g.crop_placed(latent, placement)]
                                + [g.paste_placed(r, placement, (LATENT >> lv, LATENT >> lv), sum_faces=True)
                                   for r, (_, lv) in zip(res, RESIDUALS, strict=True)])


def time_it(fn, latent, res, repeats: int) -> float:
    fn(latent, res)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(latent, res)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=pathlib.Path, default=None)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    latent = torch.randn(BATCH, 4, LATENT, LATENT)
    sys.path.insert(0, str(REPO))
    from realisid.machine import description

    report = {"machine": description(), "shapes": "SDXL local residuals, latent 128, S 64, batch 2",
              "ms": {}}
    variants = {"current": (load_geometry(REPO), step_current)}
    if args.before is not None:
        variants["before"] = (load_geometry(args.before), step_before)
    for k in args.ks:
        res = [torch.randn(k * BATCH, c, CROP >> lv, CROP >> lv) for c, lv in RESIDUALS]
        for name, (module, build) in variants.items():
            ms = 1e3 * time_it(build(module, k), latent, res, args.repeats)
            report["ms"].setdefault(name, {})[str(k)] = ms
            log.info("K=%d %-8s %.1f ms", k, name, ms)
    out = REPO / "benchmarks" / "results" / "placement_cost_cpu.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", out)
    return report


if __name__ == "__main__":
    main()
