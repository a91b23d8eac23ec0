"""Regenerate docs/images/<workflow>.png: each UI workflow as ComfyUI's real frontend draws it.

The pictures come from the browser test itself (tests/test_frontend.py), so a picture is only written for a
workflow that loaded with nothing reported missing or broken. Needs scripts/setup.sh (which runs
scripts/setup_browser.sh). Run with the venv's python:

    ~/.cache/comfyui-realisid/venv/bin/python scripts/screenshots.py [--size 2000x1250] [--colours 128]
"""

import argparse
import logging
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"
MAX_BYTES = 400_000

log = logging.getLogger("screenshots")


def shrink(source: pathlib.Path, target: pathlib.Path, colours: int) -> int:
    """Save a palette PNG (the UI is flat colour, so few colours suffice); returns its size in bytes."""
    from PIL import Image

    with Image.open(source) as image:
        palette = image.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.NONE)
    palette.save(target, optimize=True)
    return target.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="2000x1250", help="page size in CSS pixels, WxH (default 2000x1250)")
    parser.add_argument("--colours", type=int, default=128, help="palette size of the saved PNGs (default 128)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[screenshots] %(message)s")

    with tempfile.TemporaryDirectory(prefix="realisid-shots-") as raw:
        env = {**os.environ, "REALISID_SCREENSHOT_DIR": raw, "REALISID_SCREENSHOT_SIZE": args.size}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_frontend.py",
                   "-k", "test_ui_workflow_loads_without_reported_problems"]
        log.info("running %s", " ".join(command[1:]))
        result = subprocess.run(command, cwd=REPO, env=env, check=False)
        shots = sorted(pathlib.Path(raw).glob("*.png"))
        if result.returncode != 0 or not shots:
            log.error("the browser test failed or was skipped (exit %d, %d pictures); docs/images left as they are",
                      result.returncode, len(shots))
            return 1
        OUT.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            size = shrink(shot, OUT / shot.name, args.colours)
            log.info("%s: %d KB", (OUT / shot.name).relative_to(REPO), size // 1000)
            if size > MAX_BYTES:
                log.warning("%s is over %d KB: try --colours 64 or a smaller --size", shot.name, MAX_BYTES // 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
