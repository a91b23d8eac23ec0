"""Make PyPI's CUDA-built torchvision importable next to a CPU-only torch.

torchvision registers fake kernels for `nms`/`qnms` at import time; when its C extension cannot load
(CUDA build, CPU torch) those schemas are missing and the import fails. Declaring the two schemas first
lets the Python side import. Installed with a .pth file so it also applies inside `main.py` subprocesses.
No-op when torchvision's own extension loads.
"""

import importlib.abc
import sys

_LIBRARY = None


def _declare_ops():
    global _LIBRARY
    import glob
    import importlib.util
    import os

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import torch

    package_dir = list(spec.submodule_search_locations)[0]
    for lib in glob.glob(os.path.join(package_dir, "_C*.so")) + glob.glob(os.path.join(package_dir, "_C*.pyd")):
        try:
            torch.ops.load_library(lib)
            return
        except Exception:
            pass
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            _declare_ops()
        return None


def install():
    if "torchvision" not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
