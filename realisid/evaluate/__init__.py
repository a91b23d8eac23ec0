"""Evaluation: metrics (identity, location, pose, expression, copy-paste, CLIP) and the protocol harness.

`python -m realisid.evaluate --plan plan.json --workflow W.json --out DIR`; see docs/evaluation.md.
"""

from .harness import PAPER_SIZES, EvalCase, EvalPlan, WorkflowGenerator, run_evaluation, score_image
from .metrics import (
    ClipScorer,
    FaceMatch,
    box_iou,
    copy_paste,
    crop_face,
    expression_error,
    extra_faces,
    identity_similarity,
    iou_matrix,
    match_faces,
)
from .pose import head_pose, pose_error

__all__ = [
    "PAPER_SIZES",
    "ClipScorer",
    "EvalCase",
    "EvalPlan",
    "FaceMatch",
    "WorkflowGenerator",
    "box_iou",
    "copy_paste",
    "crop_face",
    "expression_error",
    "extra_faces",
    "head_pose",
    "identity_similarity",
    "iou_matrix",
    "match_faces",
    "pose_error",
    "run_evaluation",
    "score_image",
]
