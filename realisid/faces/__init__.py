"""Face analysis for RealisID: FaceRecord, two backends (insightface packs, embedded dlib/MTCNN), selection,
landmark hints and identity-encoder crops. Backends import their heavy dependencies lazily."""

from .analyzer import FaceAnalyzer, analyze_batch, check_space, cosine, merge_records
from .errors import EmbeddingSpaceError, FaceBackendUnavailableError, FaceModelsMissingError, NoFaceError
from .record import FaceRecord, square_box_xyxy
from .select import NO_FACE_POLICIES, SELECT_MODES, apply_no_face_policy, select_faces

__all__ = [
    "NO_FACE_POLICIES",
    "SELECT_MODES",
    "EmbeddingSpaceError",
    "FaceAnalyzer",
    "FaceBackendUnavailableError",
    "FaceModelsMissingError",
    "FaceRecord",
    "NoFaceError",
    "analyze_batch",
    "apply_no_face_policy",
    "check_space",
    "cosine",
    "merge_records",
    "select_faces",
    "square_box_xyxy",
]
