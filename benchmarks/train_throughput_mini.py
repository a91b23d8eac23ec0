"""Training throughput of the real trainer on RealisID-Mini, frozen encoders included and excluded.

`realisid.train`'s Trainer on the shipped Mini base (its own VAE and text encoders), on a small set of Mini scenes
prepared here with the `mini` face backend, in two set-ups measured in ONE process, their steps INTERLEAVED (so
load drift on a shared machine hits both alike):

* `encoders_included`: every step reads the cache, runs the VAE on the images and the text encoders on the
  captions, then the branches + frozen UNet forward, backward and AdamW;
* `encoders_excluded`: the same with `encode-latents` and `encode-text` stores beside the cache, so a step runs no
  VAE and no text encoder.

The Mini identity source is the face backend's stored embedding in both (no CLIP vision: identity space
`embedding`). Figures: the median seconds per optimizer step after the warm-up, images/s = batch / that.

    python benchmarks/train_throughput_mini.py --json benchmarks/results/train_throughput_mini_cpu.json
    python benchmarks/train_throughput_mini.py --scenes 16 --steps 2 --warmup 1 --batch-size 2   # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
log = logging.getLogger("train_throughput_mini")
SETUPS = ("encoders_included", "encoders_excluded")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=64, help="Mini scenes prepared for the run")
    p.add_argument("--batch-size", type=int, default=8, help="8: the shipped Mini model's training batch")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per set-up")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per set-up first")
    p.add_argument("--work", help="folder for the scenes and caches (default: a temporary one)")
    p.add_argument("--json", help="also write the result to this file")
    return p.parse_args(argv)


def _boot() -> None:
    sys.path.insert(0, str(REPO))
    from tests.helpers import host

    host.bootstrap()


def prepare(work: pathlib.Path, scenes: int) -> tuple[str, str, str]:
    """(base file, plain cache, stored cache): scenes rendered and prepared as the shipped model's stage 1 was
    (models/mini/README.md), and a copy of the cache with the latent and text stores beside it."""
    import shutil

    from realisid.mini import dataset, files
    from realisid.train.cli import main

    base = str(files.CHECKPOINTS_DIR / files.BASE_FILE)
    manifest = dataset.write_scenes(work / "scenes", scenes, seed=0)
    plain, stored = work / "cache_plain", work / "cache_stored"
    if not (plain / "manifest.jsonl").is_file():
        code = main(["prepare", "--manifest", str(manifest), "--out", str(plain), "--backend", "mini", "--size",
                     "256", "--detect-size", "256", "--min-face", "8", "--min-score", "0.4", "--hint-size", "128"])
        if code:
            raise SystemExit(f"prepare failed with status {code}")
    if not stored.is_dir():
        shutil.copytree(plain, stored)
    for command in ("encode-latents", "encode-text"):
        if main([command, "--base", base, "--cache", str(stored), "--cpu", "--no-progress"]):
            raise SystemExit(f"{command} failed")
    return base, str(plain), str(stored)


def trainer(base: str, cache: str, out: pathlib.Path, args):
    from realisid.train.config import TrainConfig
    from realisid.train.loop import Trainer

    cfg = TrainConfig(base=base, cache=cache, out=str(out), identity_space="embedding", crop_size=16,
                      batch_size=args.batch_size, lr=2e-4, steps=args.warmup + args.steps + 1, save_every=10**9,
                      workers=0, cpu=True, progress=False, seed=0)
    return Trainer(cfg)


def measure(trainers: dict, warmup: int, steps: int) -> dict[str, list[float]]:
    """Seconds of each timed optimizer step per set-up, the set-ups' steps interleaved."""
    batches = {name: iter(t._loader(0)) for name, t in trainers.items()}
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    for i in range(warmup + steps):
        for name, t in trainers.items():
            start = time.perf_counter()
            t._train_step(batches[name])
            if i >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def run(args) -> dict:
    from realisid.machine import description

    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(args.work or tmp)
        base, plain, stored = prepare(work, args.scenes)
        trainers = {"encoders_included": trainer(base, plain, work / "fit_included", args),
                    "encoders_excluded": trainer(base, stored, work / "fit_excluded", args)}
        if trainers["encoders_excluded"]._latent_cache == {} or trainers["encoders_excluded"].host.stored_texts is None:
            raise SystemExit("the stored set-up did not find its latent and text stores")
        seconds = measure(trainers, args.warmup, args.steps)
    result = {"benchmark": "train_throughput_mini", "machine": description(), "batch_size": args.batch_size,
              "scenes": args.scenes, "steps": args.steps, "warmup": args.warmup, "image_size": 256,
              "model": "RealisID-Mini (both branches + projector, crop 16), on the shipped Mini base", "results": {}}
    for name in SETUPS:
        median = statistics.median(seconds[name])
        result["results"][name] = {"seconds_per_step": round(median, 4),
                                   "images_per_s": round(args.batch_size / median, 3),
                                   "seconds_min": round(min(seconds[name]), 4),
                                   "seconds_max": round(max(seconds[name]), 4)}
    inc, exc = (result["results"][n]["seconds_per_step"] for n in SETUPS)
    result["encoder_share"] = round(1.0 - exc / inc, 3)  # of a step with the encoders, the part they cost
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _boot()
    result = run(args)
    for name in SETUPS:
        r = result["results"][name]
        log.info("%s: %.3f s/step, %.2f images/s (batch %d)", name, r["seconds_per_step"], r["images_per_s"],
                 args.batch_size)
    log.info("the frozen encoders are %.0f%% of a step that runs them", 100 * result["encoder_share"])
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
