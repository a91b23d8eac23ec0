"""A Mini head: 68 iBUG landmarks on a 3D ellipsoid, posed and expressive, and the face drawn FROM those landmarks.

Head units: the face box is a square of side 1 centred on the head centre; x to the image right, y down, z towards
the viewer. Features are 3D points on the ellipsoid (the nose stands out of it), rotated by roll * yaw * pitch and
projected orthographically, so they move as on a 3D head. Eyes, brows, nose and lips are drawn through the very
landmarks the ground truth reports, which keeps landmarks and pixels consistent by construction.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from realisid.mini.identity import EYE_RGB, HAIR_RGB, SKIN_RGB, Identity

RX, RY, RZ = 0.40, 0.50, 0.40  # ellipsoid radii (head units)
EXPRESSIONS = ("neutral", "smile", "surprise", "frown")
POSE_RANGE_DEG = {"yaw": 45.0, "pitch": 15.0, "roll": 20.0}
SHIFT = 4  # sub-pixel bits of cv2 drawing
_ONE = 1 << SHIFT


@dataclasses.dataclass(frozen=True)
class Pose:
    """Degrees. yaw > 0 turns the face towards the image right, pitch > 0 looks up, roll > 0 tilts clockwise."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0

    def rotation(self) -> np.ndarray:
        y, p, r = (math.radians(v) for v in (self.yaw, self.pitch, self.roll))
        rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
        ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
        rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
        return rz @ ry @ rx


def random_pose(rng: np.random.Generator, scale: float = 1.0) -> Pose:
    return Pose(**{k: float(rng.uniform(-v, v) * scale) for k, v in POSE_RANGE_DEG.items()})


def _mirror(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(-x, y) for x, y in points]


# frontal, neutral landmarks (x, y) in head units, iBUG 68 order; image-left = the subject's right
_JAW = [(RX * 0.97 * math.cos(math.radians(a)), RY * 0.97 * math.sin(math.radians(a)))
        for a in np.linspace(175.0, 5.0, 17)]
# brows clear of the glasses' frames, which sit just above the eyes
_BROW_L = [(-0.30, -0.19), (-0.25, -0.215), (-0.19, -0.225), (-0.13, -0.22), (-0.08, -0.205)]
_NOSE_BRIDGE = [(0.0, -0.09), (0.0, -0.04), (0.0, 0.01), (0.0, 0.07)]
_NOSE_BASE = [(-0.06, 0.11), (-0.03, 0.125), (0.0, 0.13), (0.03, 0.125), (0.06, 0.11)]
# big cartoon eyes: the iris (eye colour, a fine attribute) must survive an 8x autoencoder at 1/7
_EYE_L = [(-0.29, -0.06), (-0.22, -0.13), (-0.14, -0.13), (-0.07, -0.06), (-0.14, 0.005), (-0.22, 0.005)]
_EYE_R = _mirror(_EYE_L[3::-1]) + _mirror(_EYE_L[:3:-1])
_LIPS_OUT = [(-0.14, 0.27), (-0.10, 0.245), (-0.04, 0.235), (0.0, 0.24), (0.04, 0.235), (0.10, 0.245),
             (0.14, 0.27), (0.10, 0.30), (0.04, 0.315), (0.0, 0.318), (-0.04, 0.315), (-0.10, 0.30)]
_LIPS_IN = [(-0.12, 0.27), (-0.04, 0.262), (0.0, 0.262), (0.04, 0.262), (0.12, 0.27), (0.04, 0.278), (0.0, 0.28),
            (-0.04, 0.278)]
NEUTRAL_68 = np.array(_JAW + _BROW_L + _mirror(_BROW_L[::-1]) + _NOSE_BRIDGE + _NOSE_BASE + _EYE_L + _EYE_R
                      + _LIPS_OUT + _LIPS_IN, np.float64)
NOSE_Z = np.zeros(68)
NOSE_Z[27:31] = (0.02, 0.05, 0.08, 0.11)
NOSE_Z[31:36] = 0.05
MOUTH_CORNERS = [48, 54, 60, 64]
UPPER_LIDS, LOWER_LIDS = [37, 38, 43, 44], [40, 41, 46, 47]


def surface_z(xy: np.ndarray) -> np.ndarray:
    """z of the ellipsoid's front surface above (x, y) (0 outside the silhouette)."""
    inside = 1.0 - (xy[..., 0] / RX) ** 2 - (xy[..., 1] / RY) ** 2
    return RZ * np.sqrt(np.clip(inside, 0.0, None))


def _shape_nose(pts: np.ndarray, nose: int) -> None:
    # the three noses differ in outline, not shading: a button, a broad base, a long one reaching the lip
    if nose == 0:  # small
        pts[31:36, 0] *= 0.7
        pts[29:31, 1] -= (0.02, 0.04)
        pts[31:36, 1] -= 0.04
    elif nose == 1:  # wide
        pts[31:36, 0] *= 2.3
        pts[[31, 35], 1] -= 0.015
    elif nose == 2:  # long
        pts[29:31, 1] += (0.04, 0.08)
        pts[31:36, 1] += 0.08


def _express(pts: np.ndarray, expression: str) -> None:
    """Move mouth, lids and brows for an expression (in place, frontal head units)."""
    if expression == "smile":
        pts[MOUTH_CORNERS, 1] -= 0.05
        pts[MOUTH_CORNERS, 0] *= 1.18
        pts[55:60, 1] += 0.012
        pts[LOWER_LIDS, 1] -= 0.012
    elif expression == "surprise":
        pts[55:60, 1] += 0.10
        pts[65:68, 1] += 0.09
        pts[48:68, 0] *= 0.8
        pts[17:27, 1] -= 0.05
        pts[UPPER_LIDS, 1] -= 0.018
    elif expression == "frown":
        pts[MOUTH_CORNERS, 1] += 0.045
        pts[[21, 22], 1] += 0.05
        pts[[20, 23], 1] += 0.025
        pts[[21, 22], 0] *= 0.75
        pts[UPPER_LIDS, 1] += 0.02
    elif expression != "neutral":
        raise ValueError(f"expression must be one of {EXPRESSIONS}, got {expression!r}")


def canonical_landmarks(identity: Identity, expression: str) -> np.ndarray:
    """(68, 3) landmarks of a frontal head with this identity's nose and brows and this expression."""
    pts = NEUTRAL_68.copy()
    _shape_nose(pts, identity.nose)
    if identity.brows == 1:  # arched: a steep inverted V, outer ends dropped
        pts[[17, 18, 19, 20, 21, 22, 23, 24, 25, 26], 1] += (0.03, -0.025, -0.05, -0.025, 0.0,
                                                              0.0, -0.025, -0.05, -0.025, 0.03)
    _express(pts, expression)
    z = surface_z(pts) + NOSE_Z
    return np.concatenate([pts, z[:, None]], axis=1)


@dataclasses.dataclass(frozen=True)
class HeadPlacement:
    """Where a head sits: centre (px) and face-box side (px) in the output image, and its pose."""

    cx: float
    cy: float
    side: float
    pose: Pose

    def project(self, points3d: np.ndarray) -> np.ndarray:
        """(N, 3) head units -> (N, 2) output pixels."""
        rotated = np.asarray(points3d, np.float64) @ self.pose.rotation().T
        return rotated[:, :2] * self.side + np.array([self.cx, self.cy])

    def facing(self, points3d: np.ndarray) -> np.ndarray:
        """z after rotation (> 0: faces the viewer)."""
        return (np.asarray(points3d, np.float64) @ self.pose.rotation().T)[:, 2]

    @property
    def box(self) -> np.ndarray:
        half = self.side / 2
        return np.array([self.cx - half, self.cy - half, self.cx + half, self.cy + half], np.float64)


class Canvas:
    """An RGB uint8 canvas drawn at `ss` times the output size (anti-aliasing), in output-pixel coordinates."""

    def __init__(self, width: int, height: int, ss: int = 2):
        self.ss, self.width, self.height = ss, width, height
        self.pixels = np.zeros((height * ss, width * ss, 3), np.uint8)

    def _fixed(self, pts) -> np.ndarray:
        return np.round(np.asarray(pts, np.float64).reshape(-1, 2) * self.ss * _ONE).astype(np.int32)

    def _px(self, value: float) -> int:
        return max(1, int(round(value * self.ss)))

    def polygon(self, pts, colour) -> None:
        cv2.fillPoly(self.pixels, [self._fixed(pts)], tuple(int(c) for c in colour), cv2.LINE_AA, SHIFT)

    def polyline(self, pts, colour, width: float, closed: bool = False) -> None:
        cv2.polylines(self.pixels, [self._fixed(pts)], closed, tuple(int(c) for c in colour), self._px(width),
                      cv2.LINE_AA, SHIFT)

    def circle(self, centre, radius: float, colour) -> None:
        c = self._fixed(centre)[0]
        cv2.circle(self.pixels, (int(c[0]), int(c[1])), max(1, int(round(radius * self.ss * _ONE))),
                   tuple(int(v) for v in colour), -1, cv2.LINE_AA, SHIFT)

    def rect(self, x0, y0, x1, y1, colour) -> None:
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour)

    def vertical_gradient(self, top, bottom, y0: float = 0.0, y1: float | None = None) -> None:
        y1 = self.height if y1 is None else y1
        a, b = int(round(y0 * self.ss)), int(round(y1 * self.ss))
        t = np.linspace(0.0, 1.0, max(b - a, 1))[:, None]
        rows = (np.asarray(top, np.float64) * (1 - t) + np.asarray(bottom, np.float64) * t).astype(np.uint8)
        self.pixels[a:b] = rows[:, None, :]

    def image(self) -> np.ndarray:
        return cv2.resize(self.pixels, (self.width, self.height), interpolation=cv2.INTER_AREA)


def _ellipsoid_samples(n: int = 24) -> np.ndarray:
    """Points over the whole ellipsoid surface (for silhouettes and hair caps)."""
    u, v = np.meshgrid(np.linspace(0, 2 * math.pi, 2 * n, endpoint=False), np.linspace(0, math.pi, n))
    return np.stack([RX * np.sin(v) * np.cos(u), -RY * np.cos(v), RZ * np.sin(v) * np.sin(u)], -1).reshape(-1, 3)


_SURFACE = _ellipsoid_samples()


def _hull(points2d: np.ndarray) -> np.ndarray:
    return cv2.convexHull(points2d.astype(np.float32)).reshape(-1, 2)


def shade(colour, factor: float) -> tuple[int, ...]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)


def _face_plane_ring(centre_xy, rx: float, ry: float, lift: float, rect: bool, n: int = 20) -> np.ndarray:
    """(n, 3) a circle/rectangle in the face plane around a frontal point, lifted off the surface (glasses)."""
    if rect:
        xs = [-rx, rx, rx, -rx]
        ys = [-ry, -ry, ry, ry]
        ring = np.array([(centre_xy[0] + x, centre_xy[1] + y) for x, y in zip(xs, ys, strict=True)])
    else:
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        ring = np.stack([centre_xy[0] + rx * np.cos(t), centre_xy[1] + ry * np.sin(t)], -1)
    z = surface_z(np.asarray(centre_xy)[None])[0] + lift
    return np.concatenate([ring, np.full((len(ring), 1), z)], axis=1)


def draw_back_hair(canvas: Canvas, head: HeadPlacement, identity: Identity) -> None:
    """Hair behind the head: a rim around the skull, long hair falling to the shoulders."""
    style, colour = identity.hair_style, HAIR_RGB[identity.hair_colour]
    if style == 2:  # bald
        return
    back = _SURFACE[(_SURFACE[:, 2] <= 0.05) & (_SURFACE[:, 1] < 0.15)] * 1.1
    canvas.polygon(_hull(head.project(back)), colour)
    if style == 1:  # long: a curtain from the temples to below the chin
        curtain = np.array([(-0.46, -0.1, -0.05), (0.46, -0.1, -0.05), (0.5, 0.85, -0.1), (-0.5, 0.85, -0.1)])
        canvas.polygon(head.project(curtain), colour)


def draw_head(canvas: Canvas, head: HeadPlacement, identity: Identity, expression: str) -> np.ndarray:
    """Draw skin, features, front hair, facial hair and glasses; returns the (68, 2) landmarks in pixels."""
    skin = SKIN_RGB[identity.skin]
    hair = HAIR_RGB[identity.hair_colour]
    canvas.polygon(_hull(head.project(_SURFACE)), skin)
    pts3 = canonical_landmarks(identity, expression)
    lm = head.project(pts3)
    s = head.side
    if identity.mole:
        # low on the cheek, close enough to the middle to stay in view at the widest yaw
        mole = np.array([[-0.19 if identity.mole == 1 else 0.19, 0.17, 0.0]])
        mole[0, 2] = surface_z(mole[:, :2])[0]
        if head.facing(mole)[0] > 0.02:
            canvas.circle(head.project(mole)[0], 0.055 * s, (45, 20, 12))
    _draw_nose(canvas, lm, skin, s)
    _draw_eyes(canvas, head, lm, pts3, identity, s)
    _draw_facial_hair(canvas, head, identity, hair)
    _draw_mouth(canvas, lm, skin, s)
    _draw_front_hair(canvas, head, identity, hair)
    # brows over the fringe, as in a cartoon: a head looking up would otherwise hide arched brows under its hair
    brow_colour = shade(hair, 0.4) if identity.hair_colour != 0 else (10, 8, 8)
    brow_width = (0.1 if identity.brows == 2 else 0.045) * s
    canvas.polyline(lm[17:22], brow_colour, brow_width)
    canvas.polyline(lm[22:27], brow_colour, brow_width)
    if identity.glasses:
        _draw_glasses(canvas, head, identity.glasses == 2, s)
    return lm


def _draw_nose(canvas: Canvas, lm: np.ndarray, skin, s: float) -> None:
    shadow = shade(skin, 0.62)
    canvas.polygon(np.array([lm[28], lm[35], lm[33], lm[31]]), shadow)
    canvas.polyline(lm[27:31], shadow, 0.03 * s)
    canvas.polyline(lm[31:36], shade(skin, 0.4), 0.035 * s)


def _draw_eyes(canvas: Canvas, head: HeadPlacement, lm, pts3, identity: Identity, s: float) -> None:
    iris = EYE_RGB[identity.eye_colour]
    for first in (36, 42):
        eye = lm[first:first + 6]
        canvas.polygon(eye, (250, 250, 250))
        centre3 = pts3[first:first + 6].mean(axis=0)
        open_h = float(np.linalg.norm(lm[first + 1] - lm[first + 5]) + np.linalg.norm(lm[first + 2] - lm[first + 4])) / 2
        r = min(0.068 * s, 0.5 * open_h)
        if r > 0.15:
            c = head.project((centre3 + np.array([0, 0, 0.02]))[None])[0]
            canvas.circle(c, r, iris)
            canvas.circle(c, 0.35 * r, (10, 10, 10))
        canvas.polyline(eye, (30, 20, 20), 0.018 * s, closed=True)


def _draw_mouth(canvas: Canvas, lm: np.ndarray, skin, s: float) -> None:
    lips = tuple(int(0.45 * a + 0.55 * b) for a, b in zip(skin, (200, 40, 60), strict=True))
    canvas.polygon(lm[48:60], lips)
    canvas.polygon(lm[60:68], (70, 15, 25))
    canvas.polyline(lm[60:68], (70, 15, 25), 0.012 * s, closed=True)


def _draw_facial_hair(canvas: Canvas, head: HeadPlacement, identity: Identity, hair) -> None:
    if identity.facial_hair == 0:
        return
    if identity.facial_hair == 1:  # moustache
        shape = [(-0.16, 0.24), (-0.07, 0.18), (0.0, 0.195), (0.07, 0.18), (0.16, 0.24), (0.06, 0.225),
                 (0.0, 0.23), (-0.06, 0.225)]
    else:  # beard: along the jaw, under the mouth
        jaw = [tuple(p * 1.02) for p in NEUTRAL_68[3:14]]
        shape = jaw + [(0.2, 0.2), (0.12, 0.35), (-0.12, 0.35), (-0.2, 0.2)]
    xy = np.array(shape, np.float64)
    pts = np.concatenate([xy, (surface_z(xy * 0.98) + 0.01)[:, None]], axis=1)
    canvas.polygon(head.project(pts), shade(hair, 0.8))


def _draw_front_hair(canvas: Canvas, head: HeadPlacement, identity: Identity, hair) -> None:
    style = identity.hair_style
    if style == 2:
        return
    line = -0.33 if style == 1 else -0.30
    cap = _SURFACE[_SURFACE[:, 1] < line] * 1.05
    # only the part of the cap that faces the viewer: the hull of hidden points would paint hair over the forehead
    cap = cap[head.facing(cap) > 0.0]
    canvas.polygon(_hull(head.project(cap)), hair)
    if style == 3:  # spiky: triangles out of the crown
        for angle in np.linspace(-75, 75, 7):
            a = math.radians(angle)
            base = np.array([[math.sin(a) * 0.36 - 0.09 * math.cos(a), -math.cos(a) * 0.44, 0.0],
                             [math.sin(a) * 0.36 + 0.09 * math.cos(a), -math.cos(a) * 0.44, 0.0],
                             [math.sin(a) * 0.6, -math.cos(a) * 0.66, 0.0]])
            canvas.polygon(head.project(base), hair)
    elif style == 4:  # bun on top
        top = head.project(np.array([[0.0, -0.6, -0.05]]))[0]
        canvas.circle(top, 0.15 * head.side, hair)


def _draw_glasses(canvas: Canvas, head: HeadPlacement, square: bool, s: float) -> None:
    frame = (15, 15, 20)
    rings = []
    for cx in (-0.18, 0.18):
        ring = _face_plane_ring((cx, -0.06), 0.115, 0.078 if square else 0.088, 0.04, square)
        rings.append(head.project(ring))
        canvas.polyline(rings[-1], frame, 0.03 * s, closed=True)
    bridge = np.array([[-0.065, -0.07, 0.0], [0.065, -0.07, 0.0]])
    bridge[:, 2] = surface_z(bridge[:, :2]) + 0.05
    canvas.polyline(head.project(bridge), frame, 0.03 * s)


