"""Head pose (yaw, pitch, roll in degrees) from iBUG 68-point landmarks, by PnP against a generic 3D face.

The paper measured pose error on DECA coefficients; DECA (and FLAME) are non-commercial and unavailable offline,
so this is a stand-in: `cv2.solvePnP` fits ten landmarks to a rigid, average-proportioned head. Absolute angles
are approximate (a generic head, no per-face shape); differences between two faces of similar shape are what
the metric is for.

The 3D points are our own rough anthropometric averages in millimetres (outer canthal width ~90 mm, inner
~32 mm, mouth width ~50 mm, nose tip ~20-30 mm in front of the eye corners), in OpenCV camera axes for a face
looking at the camera: x to the image right, y down, z away from the camera, origin at the nose tip.

Angle conventions (degrees, all 0 for a frontal face): yaw > 0 when the nose points to the image right,
pitch > 0 when the face tilts down (chin towards the chest), roll > 0 when the face rotates clockwise in
the image. A horizontal mirror of the image negates yaw and roll and keeps pitch.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# iBUG index -> (x, y, z) mm. Indices 36/45 are the outer eye corners on the image left/right of a frontal face.
MODEL_POINTS_68 = {
    30: (0.0, 0.0, 0.0),  # nose tip
    27: (0.0, -33.0, 20.0),  # nose bridge between the eyes
    33: (0.0, 10.0, 14.0),  # subnasale
    8: (0.0, 68.0, 18.0),  # chin (menton)
    36: (-45.0, -33.0, 34.0),  # eye outer corner, image left
    39: (-16.0, -32.0, 26.0),  # eye inner corner, image left
    42: (16.0, -32.0, 26.0),  # eye inner corner, image right
    45: (45.0, -33.0, 34.0),  # eye outer corner, image right
    48: (-25.0, 30.0, 24.0),  # mouth corner, image left
    54: (25.0, 30.0, 24.0),  # mouth corner, image right
}
PNP_INDICES = tuple(MODEL_POINTS_68)
MODEL_POINTS = np.array([MODEL_POINTS_68[i] for i in PNP_INDICES], np.float64)
# Focal length as a multiple of the landmarks' extent: a moderate telephoto, so results hardly depend on it.
FOCAL_PER_FACE = 10.0


def head_pose(landmarks68) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of one face, from its 68 landmarks (pixels of any image).

    The camera is centred on the face (principal point = landmarks' bounding-box centre), so where the face sits
    in the frame does not change its measured pose; only its own perspective does."""
    pts = _check_landmarks(landmarks68)
    image_points = pts[list(PNP_INDICES)]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    extent = float(max(hi - lo))
    if extent <= 1e-6:
        raise ValueError("landmarks68 collapse to a point; cannot estimate head pose")
    centre = (lo + hi) / 2
    # Model extent is ~136 mm (chin to brow); scale the focal so that the face appears at its pixel size.
    focal = FOCAL_PER_FACE * extent
    camera = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]], np.float64)
    distance = focal * 136.0 / extent  # initial guess: the depth at which the model has the face's pixel size
    rvec0 = np.zeros((3, 1), np.float64)
    tvec0 = np.array([[0.0], [0.0], [distance]], np.float64)
    ok, rvec, _ = cv2.solvePnP(MODEL_POINTS, image_points, camera, None, rvec0, tvec0, useExtrinsicGuess=True,
                               flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise ValueError("cv2.solvePnP found no head pose for these landmarks")
    return rotation_to_angles(cv2.Rodrigues(rvec)[0])


def rotation_to_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """R = Rz(roll) @ Ry(yaw) @ Rx(pitch) in camera axes, mapped to the conventions in the module docstring."""
    r = np.asarray(rotation, np.float64)
    pitch = math.atan2(r[2, 1], r[2, 2])
    yaw = math.asin(float(np.clip(-r[2, 0], -1.0, 1.0)))
    roll = math.atan2(r[1, 0], r[0, 0])
    # Ry(+a) turns the nose (model -z) towards image-left: flip yaw. Rx(+a) turns the nose down, Rz(+a) is clockwise.
    return -math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def angles_to_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Inverse of `rotation_to_angles` (degrees in, 3x3 out); used to synthesise faces of known pose."""
    y, p, r = math.radians(-yaw), math.radians(pitch), math.radians(roll)
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def project_model(yaw: float, pitch: float, roll: float, centre=(256.0, 256.0), scale: float = 1.0,
                  focal: float = 1400.0) -> np.ndarray:
    """A 68x2 landmark array whose PnP points are the generic model seen at the given pose (others are filled with
    the mean of those points). For tests and sanity checks of the angle conventions."""
    rot = angles_to_rotation(yaw, pitch, roll)
    cam = MODEL_POINTS @ rot.T * scale + np.array([0.0, 0.0, focal])
    uv = focal * cam[:, :2] / cam[:, 2:3]
    out = np.repeat(uv.mean(axis=0, keepdims=True), 68, axis=0)
    out[list(PNP_INDICES)] = uv
    return out + np.asarray(centre, np.float64)


def pose_error(landmarks_a, landmarks_b) -> dict[str, float]:
    """L1 differences of yaw/pitch/roll (degrees), their mean, and the mean divided by 180 (`pose_l1_norm`,
    a [0, 1] scale; the paper's DECA-based numbers are on a different, radians-like scale and not comparable)."""
    ya, pa, ra = head_pose(landmarks_a)
    yb, pb, rb = head_pose(landmarks_b)
    errs = {"yaw_err": abs(ya - yb), "pitch_err": abs(pa - pb), "roll_err": abs(_wrap(ra - rb))}
    mean = sum(errs.values()) / 3
    return {**errs, "pose_l1_deg": mean, "pose_l1_norm": mean / 180.0}


def _wrap(deg: float) -> float:
    return (deg + 180.0) % 360.0 - 180.0


def _check_landmarks(landmarks68) -> np.ndarray:
    if landmarks68 is None:
        raise ValueError("this face has no 68-point landmarks; use an analyzer that provides them "
                         "(EmbeddedAnalyzer(landmarks68=True))")
    pts = np.asarray(landmarks68, np.float64)
    if pts.shape != (68, 2) or not np.all(np.isfinite(pts)):
        raise ValueError(f"landmarks68 must be a finite 68x2 array, got shape {pts.shape}")
    return pts
