"""insightface backend (real ArcFace, user-supplied antelopev2 / buffalo_l files; never downloads).

Files are expected at `<root>/models/<pack>/*.onnx` (ComfyUI: root = `ComfyUI/models/insightface`). insightface
downloads a pack whose folder is missing (without a timeout), so the folder is checked first and then handed to
insightface as an absolute directory, which takes no download path in 0.7.3 or 2.x.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from pathlib import Path

import numpy as np

from ..model_files import INSIGHTFACE_PACK_FILES
from .analyzer import check_rgb_image
from .errors import FaceBackendUnavailableError, FaceModelsMissingError
from .record import FaceRecord

log = logging.getLogger(__name__)

PACK_FILES = INSIGHTFACE_PACK_FILES
PROVIDERS = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "ROCM": "ROCMExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
}
DEFAULT_DET_SIZE = 640
# Tried in order when the main pass finds nothing: smaller sizes catch close-ups whose face is too large for
# the anchors (ComfyUI_InstantID's loop); a larger size would help tiny faces (pass retry_sizes to add one).
DEFAULT_RETRY_SIZES = (512, 384, 256)


def pack_folder(root, pack: str) -> Path:
    return Path(root).expanduser() / "models" / pack


def check_pack_folder(root, pack: str) -> Path:
    """The pack's folder, or a FaceModelsMissingError that says exactly where which files belong."""
    folder = pack_folder(root, pack).resolve()
    expected = PACK_FILES.get(pack, ())
    listing = ", ".join(expected) if expected else "the pack's *.onnx files"
    if not folder.is_dir():
        raise FaceModelsMissingError(
            f"insightface pack '{pack}' not found: folder {folder}/ does not exist. Put {listing} there "
            f"(they are not downloaded automatically; the insightface models are for non-commercial research use)."
        )
    if any(folder.glob("*.onnx")):
        missing = [name for name in expected if not (folder / name).is_file()]
        if missing:  # insightface routes by tensor shape, so renamed files still work; just say so
            log.warning("insightface pack %s: expected files not found by name: %s", folder, ", ".join(missing))
        return folder
    nested = folder / pack
    if nested.is_dir() and any(nested.glob("*.onnx")):
        raise FaceModelsMissingError(
            f"insightface pack '{pack}' is nested one level too deep: the .onnx files are in {nested}/ but must be "
            f"directly in {folder}/. Move them up one folder (a common result of unzipping {pack}.zip inside {folder})."
        )
    raise FaceModelsMissingError(
        f"insightface pack folder {folder}/ contains no .onnx files. Put {listing} there."
    )


class FaceModelFileError(FaceModelsMissingError):
    """A pack's .onnx file exists but is not a readable ONNX model (truncated download, wrong file)."""


def unreadable_onnx_files(folder: Path) -> list[str]:
    """Names of the folder's .onnx files that onnxruntime cannot open (only called once loading has failed)."""
    import onnxruntime

    bad = []
    for path in sorted(folder.glob("*.onnx")):
        try:
            onnxruntime.InferenceSession(str(path), providers=[PROVIDERS["CPU"]])
        except Exception:  # onnxruntime raises pybind error types that are not importable by a stable name
            bad.append(path.name)
    return bad


def _describe_unreadable(folder: Path, pack: str, exc: Exception) -> str:
    bad = unreadable_onnx_files(folder)
    which = f"{', '.join(bad)} is not a readable ONNX model" if bad else "loading its .onnx files failed"
    expected = ", ".join(PACK_FILES.get(pack, ())) or "the pack's *.onnx files"
    return (f"insightface pack {folder}/: {which} ({type(exc).__name__}: {exc}). Replace it with the original file "
            f"from the {pack} pack (expected {expected}; a truncated download or an HTML error page looks like this)")


def resolve_providers(provider: str) -> list[str]:
    """onnxruntime providers for `provider` ('CPU', 'CUDA', 'ROCM', 'CoreML' or a full name), with CPU fallback.

    A provider onnxruntime lists is also tried once on a one-node model with onnxruntime's own log silenced:
    onnxruntime-gpu lists CUDA even where its CUDA libraries cannot load, and then prints one red
    "cannot open shared object file" line per model file and runs on the CPU anyway. Here it costs one warning.
    """
    import onnxruntime

    name = PROVIDERS.get(provider, provider)
    if name not in PROVIDERS.values():
        raise ValueError(f"unknown onnxruntime provider '{provider}'; use one of {', '.join(PROVIDERS)}")
    if name == PROVIDERS["CPU"]:
        return [name]
    available = onnxruntime.get_available_providers()
    if name not in available:
        hint = (" For CUDA install onnxruntime-gpu instead of onnxruntime (never both; see the README)."
                if name == PROVIDERS["CUDA"] else "")
        log.warning("onnxruntime provider %s is not available (have: %s); using the CPU.%s", name,
                    ", ".join(available), hint)
        return [PROVIDERS["CPU"]]
    usable, reason = provider_usable(name)
    if not usable:
        log.warning("onnxruntime lists %s but cannot use it here (%s); using the CPU. Face analysis runs once per "
                    "reference photo, so the CPU costs about a second per photo.", name, reason)
        return [PROVIDERS["CPU"]]
    return [name, PROVIDERS["CPU"]]


_USABLE: dict[str, tuple[bool, str]] = {}


def provider_usable(name: str) -> tuple[bool, str]:
    """(whether a session on `name` really runs there, why not); tried once per process."""
    if name not in _USABLE:
        _USABLE[name] = _probe_provider(name)
    return _USABLE[name]


def _probe_provider(name: str) -> tuple[bool, str]:
    import onnxruntime

    if name == PROVIDERS["CUDA"]:
        mismatch = _cuda_major_mismatch()
        if mismatch:
            return False, mismatch
        preload = getattr(onnxruntime, "preload_dlls", None)  # onnxruntime >= 1.21: torch's CUDA wheels' libraries
        if preload is not None:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
                preload()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    onnxruntime.set_default_logger_severity(4)  # the provider-library load errors go to the default logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            session = onnxruntime.InferenceSession(_identity_model(), options, providers=[name, PROVIDERS["CPU"]])
        used = session.get_providers()
    except Exception as error:  # onnxruntime raises pybind error types without a stable importable name
        return False, f"{type(error).__name__}: {error}"
    finally:
        onnxruntime.set_default_logger_severity(2)  # onnxruntime's default (warnings)
    if name not in used:
        what = "its CUDA/cuDNN libraries did not load" if name == PROVIDERS["CUDA"] else "the provider did not load"
        return False, what
    return True, ""


def _cuda_major_mismatch() -> str:
    """Why onnxruntime-gpu cannot use torch's CUDA (different CUDA major versions), or ''."""
    try:
        from onnxruntime.capi import onnxruntime_validation

        built = onnxruntime_validation.get_package_name_and_version_info()[2] or ""
    except Exception:  # an onnxruntime without this helper: let the probe decide
        built = ""
    try:
        import torch

        torch_cuda = torch.version.cuda or ""
    except ImportError:
        return ""
    if built and torch_cuda and built.split(".")[0] != torch_cuda.split(".")[0]:
        return (f"onnxruntime is built for CUDA {built}, torch uses CUDA {torch_cuda}; install the onnxruntime-gpu "
                f"build for CUDA {torch_cuda.split('.')[0]}")
    return ""


def _identity_model() -> bytes:
    """A one-node ONNX model (Identity on a float vector): enough to see which provider a session gets."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _import_face_analysis():
    try:
        from insightface.app import FaceAnalysis
        from insightface.app.common import Face
    except ImportError as exc:
        raise FaceBackendUnavailableError(
            "the insightface backend needs insightface and onnxruntime: pip install --no-deps insightface && "
            "pip install onnxruntime (or onnxruntime-gpu)"
        ) from exc
    return FaceAnalysis, Face


class InsightFaceAnalyzer:
    """FaceAnalyzer over an insightface pack. Embeddings are ArcFace, space `arcface-<pack>-512`."""

    def __init__(
        self,
        root,
        pack: str = "antelopev2",
        provider: str = "CPU",
        det_size: int = DEFAULT_DET_SIZE,
        retry_sizes=DEFAULT_RETRY_SIZES,
        det_thresh: float = 0.5,
    ):
        folder = check_pack_folder(root, pack)
        face_analysis, self._face_cls = _import_face_analysis()
        self.providers = resolve_providers(provider)
        self.pack = pack
        self.space = f"arcface-{pack}-512"
        self.retry_sizes = tuple(int(s) for s in retry_sizes)
        try:
            self.app = face_analysis(name=str(folder), root=str(Path(root).expanduser()), providers=self.providers)
        except AssertionError as exc:  # insightface's bare "assert 'detection' in self.models"
            raise FaceModelsMissingError(
                f"insightface found no face detector among the .onnx files in {folder}/; expected {', '.join(PACK_FILES.get(pack, ()))}"
            ) from exc
        except Exception as exc:  # onnxruntime's InvalidProtobuf / Fail on a corrupt file, raised mid-pack
            raise FaceModelFileError(_describe_unreadable(folder, pack, exc)) from exc
        if "recognition" not in self.app.models:
            raise FaceModelsMissingError(
                f"insightface pack {folder}/ has no recognition (ArcFace) model; expected {PACK_FILES.get(pack, ('?',))[1]}"
            )
        self.app.prepare(ctx_id=0, det_thresh=det_thresh, det_size=(det_size, det_size))
        self._static_detector = self._detector_is_static()

    def _detector_is_static(self) -> bool:
        # A fixed-size detector cannot run at other sizes (0.7.3 would fail, 2.x silently ignores the size).
        shape = self.app.det_model.session.get_inputs()[0].shape
        return all(isinstance(v, int) and v > 0 for v in shape[2:4])

    def analyze(self, image_rgb: np.ndarray, image_index: int = 0) -> list[FaceRecord]:
        rgb = check_rgb_image(image_rgb)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # insightface expects cv2's BGR
        faces = self.app.get(bgr)
        if not faces:
            faces = self._retry_smaller(bgr)
        h, w = rgb.shape[:2]
        return [self._to_record(face, image_index, (w, h)) for face in faces]

    def _retry_smaller(self, bgr: np.ndarray) -> list:
        if self._static_detector:
            log.debug("insightface detector has a fixed input size; no retry at other sizes")
            return []
        for size in self.retry_sizes:
            bboxes, kpss = self.app.det_model.detect(bgr, input_size=(size, size), max_num=0)
            if len(bboxes):
                log.info("insightface: found %d face(s) on retry at detector size %d", len(bboxes), size)
                return [self._complete(bgr, bboxes[i], None if kpss is None else kpss[i]) for i in range(len(bboxes))]
        return []

    def _complete(self, bgr, det_row, kps):
        """Run every non-detection model of the pack on one detected box (what FaceAnalysis.get does)."""
        face = self._face_cls(bbox=det_row[0:4], kps=kps, det_score=det_row[4])
        for task, model in self.app.models.items():
            if task != "detection":
                model.get(bgr, face)
        return face

    def _to_record(self, face, image_index, image_size) -> FaceRecord:
        lm68 = face.get("landmark_3d_68")
        emb = face.get("embedding")
        return FaceRecord(
            box=np.asarray(face.bbox, np.float32),
            score=float(face.det_score),
            kps=np.asarray(face.kps, np.float32),
            landmarks68=None if lm68 is None else np.asarray(lm68, np.float32)[:, :2],
            embedding=None if emb is None else np.asarray(emb, np.float32),
            embedding_norm=None if emb is None else float(np.linalg.norm(np.asarray(emb, np.float64))),
            space=self.space,
            image_index=image_index,
            image_size=image_size,
        )


_CACHE: dict[tuple, InsightFaceAnalyzer] = {}
_CACHE_LOCK = threading.Lock()


def get_insightface_analyzer(root, pack: str = "antelopev2", provider: str = "CPU") -> InsightFaceAnalyzer:
    """One analyzer per (root, pack, provider) per process (loading a pack takes seconds)."""
    key = (str(Path(root).expanduser().resolve()), pack, provider)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = InsightFaceAnalyzer(root, pack=pack, provider=provider)
        return _CACHE[key]
