"""The Mini world: seeded 256 x 256 scenes of 1 to 3 cartoon people, with full ground truth.

`render_scene(spec)` draws exactly what a `SceneSpec` says (the evaluation renders a chosen identity in a chosen
box, pose and expression); `random_spec(rng)` draws a spec the way training data is sampled. The caption describes
people count, framing, place and clothing, never identity: identity may only come from a reference photo.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from realisid.faces.record import kps5_from_landmarks68
from realisid.mini import head as heads
from realisid.mini.identity import Identity, random_identity

SIZE = 256
FACE_SIDE_RANGE = (1 / 8, 1 / 3)
# most people per image -> largest face side (as a fraction of the image) they fit at
MAX_SIDE_FOR_COUNT = {1: 1 / 3, 2: 0.28, 3: 0.22}
PLACES = ("park", "beach", "city", "room", "night")
PLACE_PHRASES = {"park": "in a park", "beach": "on a beach", "city": "in a city street", "room": "in a room",
                 "night": "outside at night"}
CLOTHES = {"red": (210, 40, 40), "blue": (40, 70, 200), "green": (40, 150, 60), "yellow": (235, 200, 40),
           "purple": (130, 50, 160), "orange": (240, 130, 30), "white": (235, 235, 235), "black": (30, 30, 35)}
COUNT_WORDS = {1: "one person", 2: "two people", 3: "three people"}


@dataclasses.dataclass(frozen=True)
class PersonSpec:
    identity: Identity
    cx: float  # face-box centre, pixels
    cy: float
    side: float  # face-box side, pixels
    pose: heads.Pose = heads.Pose()
    expression: str = "neutral"
    clothing: str = "blue"


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    people: tuple[PersonSpec, ...]
    place: str = "park"
    seed: int = 0  # decorations of the background (trees, buildings, stars)
    size: int = SIZE


@dataclasses.dataclass(frozen=True)
class FaceTruth:
    """Ground truth of one face: square box (xyxy px), 68 landmarks and 5 keypoints (px), identity, pose, expression."""

    box: np.ndarray
    landmarks68: np.ndarray
    kps5: np.ndarray
    identity: Identity
    pose: heads.Pose
    expression: str
    clothing: str

    @property
    def side_fraction(self) -> float:
        return float(self.box[2] - self.box[0]) / SIZE


@dataclasses.dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    caption: str
    faces: tuple[FaceTruth, ...]  # left to right
    spec: SceneSpec


def framing(side_fraction: float) -> str:
    if side_fraction >= 0.22:
        return "close-up portrait"
    if side_fraction >= 0.15:
        return "half-body shot"
    return "full-body shot"


def caption(spec: SceneSpec) -> str:
    people = sorted(spec.people, key=lambda p: p.cx)
    mean_side = float(np.mean([p.side for p in people])) / spec.size
    parts = [COUNT_WORDS[len(people)], framing(mean_side), PLACE_PHRASES[spec.place]]
    shirts = [p.clothing for p in people]
    if len(people) == 1:
        parts.append(f"wearing a {shirts[0]} shirt")
    elif len(people) == 2:
        parts.append(f"the left one in a {shirts[0]} shirt, the right one in a {shirts[1]} shirt")
    else:
        parts.append(f"in {shirts[0]}, {shirts[1]} and {shirts[2]} shirts from left to right")
    return ", ".join(parts)


def _log_uniform(rng, lo, hi) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _place_faces(rng, n: int, size: int, side_range) -> list[tuple[float, float, float]] | None:
    """n non-overlapping face boxes (cx, cy, side) fully inside the image, or None if none fit this draw."""
    base = _log_uniform(rng, side_range[0], min(side_range[1], MAX_SIDE_FOR_COUNT[n])) * size
    sides = [base * rng.uniform(0.9, 1.1) for _ in range(n)]
    placed: list[tuple[float, float, float]] = []
    for side in sides:
        for _ in range(60):
            cx = rng.uniform(side / 2 + 2, size - side / 2 - 2)
            cy = rng.uniform(side / 2 + 2, size - side / 2 - 2)
            if all(abs(cx - x) > (side + s) / 2 + 4 for x, _, s in placed):
                placed.append((cx, cy, side))
                break
        else:
            return None
    return placed


def random_spec(rng: np.random.Generator, n_people: int | None = None, split: str = "train",
                side_range: tuple[float, float] = FACE_SIDE_RANGE, pose_scale: float = 1.0) -> SceneSpec:
    """A scene as training data samples it: 1-3 people (50/30/20 %), log-uniform face side, any position."""
    if n_people is None:
        counts = [c for c in (1, 2, 3) if MAX_SIDE_FOR_COUNT[c] >= side_range[0]]  # big faces: fewer people fit
        weights = np.array([0.5, 0.3, 0.2][: len(counts)])
        n = int(rng.choice(counts, p=weights / weights.sum()))
    elif MAX_SIDE_FOR_COUNT.get(n_people, 0.0) < side_range[0]:
        raise ValueError(f"{n_people} people do not fit at a face side of {side_range[0]:.3f} of the image "
                         f"(at most {MAX_SIDE_FOR_COUNT.get(n_people, 0.0):.3f} for that count)")
    else:
        n = n_people
    placed = None
    while placed is None:
        placed = _place_faces(rng, n, SIZE, side_range)
    colours = rng.permutation(list(CLOTHES))[:n]
    people = tuple(PersonSpec(identity=random_identity(rng, split), cx=cx, cy=cy, side=side,
                              pose=heads.random_pose(rng, pose_scale),
                              expression=str(rng.choice(heads.EXPRESSIONS)), clothing=str(colour))
                   for (cx, cy, side), colour in zip(sorted(placed), colours, strict=True))
    return SceneSpec(people=people, place=str(rng.choice(PLACES)), seed=int(rng.integers(2**31)))


def _draw_background(canvas: heads.Canvas, place: str, rng: np.random.Generator) -> None:
    s = canvas.width
    if place == "park":
        canvas.vertical_gradient((120, 180, 245), (200, 230, 255), 0, 0.55 * s)
        canvas.vertical_gradient((90, 170, 70), (50, 120, 40), 0.55 * s, s)
        for _ in range(rng.integers(2, 5)):
            x, y = rng.uniform(0, s), rng.uniform(0.4, 0.55) * s
            canvas.rect(x - 4, y - 10, x + 4, y + 30, (100, 70, 40))
            canvas.circle((x, y - 18), rng.uniform(14, 24), (40, 120 + rng.integers(0, 40), 50))
    elif place == "beach":
        canvas.vertical_gradient((100, 170, 240), (190, 225, 250), 0, 0.5 * s)
        canvas.vertical_gradient((30, 100, 190), (60, 140, 210), 0.5 * s, 0.62 * s)
        canvas.vertical_gradient((240, 220, 170), (225, 200, 140), 0.62 * s, s)
        canvas.circle((rng.uniform(0.1, 0.9) * s, rng.uniform(0.08, 0.2) * s), 14, (255, 230, 90))
    elif place == "city":
        canvas.vertical_gradient((160, 175, 195), (210, 215, 225), 0, s)
        x = -10.0
        while x < s:
            w, h = rng.uniform(30, 70), rng.uniform(0.3, 0.75) * s
            grey = int(rng.integers(80, 160))
            canvas.rect(x, 0.8 * s - h, x + w, 0.8 * s, (grey, grey, grey + 10))
            for wy in np.arange(0.8 * s - h + 8, 0.8 * s - 10, 16):
                for wx in np.arange(x + 6, x + w - 8, 14):
                    canvas.rect(wx, wy, wx + 6, wy + 8, (230, 220, 150))
            x += w + rng.uniform(2, 10)
        canvas.rect(0, 0.8 * s, s, s, (70, 70, 75))
    elif place == "room":
        wall = [(230, 210, 190), (190, 210, 230), (210, 230, 200), (235, 225, 170)][rng.integers(4)]
        canvas.vertical_gradient(wall, tuple(int(c * 0.9) for c in wall), 0, 0.72 * s)
        canvas.vertical_gradient((150, 100, 60), (120, 80, 45), 0.72 * s, s)
        x, y = rng.uniform(0.1, 0.7) * s, rng.uniform(0.08, 0.3) * s
        canvas.rect(x, y, x + 50, y + 40, (90, 60, 40))
        canvas.rect(x + 4, y + 4, x + 46, y + 36, (150, 200, 240))
    elif place == "night":
        canvas.vertical_gradient((10, 15, 45), (30, 40, 90), 0, 0.75 * s)
        canvas.vertical_gradient((25, 35, 30), (15, 20, 20), 0.75 * s, s)
        for _ in range(25):
            canvas.circle((rng.uniform(0, s), rng.uniform(0, 0.7 * s)), 0.8, (240, 240, 255))
        canvas.circle((rng.uniform(0.1, 0.9) * s, rng.uniform(0.08, 0.25) * s), 12, (240, 240, 210))
    else:
        raise ValueError(f"place must be one of {PLACES}, got {place!r}")


def _draw_body(canvas: heads.Canvas, person: PersonSpec) -> None:
    """Neck, torso, arms and legs below the head, scaled by the face side (frontal, whatever the head pose).

    A turtleneck and gloves: no skin shows outside the head, so identity lives in the head alone."""
    u, x, y = person.side, person.cx, person.cy
    shirt = CLOTHES[person.clothing]
    gloves = (70, 70, 75) if person.clothing != "black" else (120, 120, 125)
    trousers = (50, 55, 80) if person.clothing != "black" else (90, 80, 70)
    canvas.rect(x - 0.12 * u, y + 0.35 * u, x + 0.12 * u, y + 0.7 * u, heads.shade(shirt, 0.75))
    for side in (-1, 1):  # legs, then arms with hands
        canvas.rect(x + side * 0.05 * u, y + 2.5 * u, x + side * 0.45 * u, y + 5.0 * u, trousers)
        canvas.rect(x + side * 0.05 * u, y + 5.0 * u, x + side * 0.5 * u, y + 5.2 * u, (25, 25, 25))
        arm = [(x + side * 0.62 * u, y + 0.7 * u), (x + side * 0.9 * u, y + 0.8 * u),
               (x + side * 1.0 * u, y + 2.3 * u), (x + side * 0.75 * u, y + 2.3 * u)]
        canvas.polygon(arm, heads.shade(shirt, 0.85))
        canvas.circle((x + side * 0.88 * u, y + 2.42 * u), 0.15 * u, gloves)
    torso = [(x - 0.7 * u, y + 0.62 * u), (x + 0.7 * u, y + 0.62 * u), (x + 0.55 * u, y + 2.6 * u),
             (x - 0.55 * u, y + 2.6 * u)]
    canvas.polygon(torso, shirt)


def render_scene(spec: SceneSpec, ss: int = 2) -> Scene:
    """Draw a spec: background, then each person back to front (bodies first, so no body covers a face)."""
    canvas = heads.Canvas(spec.size, spec.size, ss)
    _draw_background(canvas, spec.place, np.random.default_rng(spec.seed))
    people = sorted(spec.people, key=lambda p: p.cx)
    for person in people:
        _draw_body(canvas, person)
    truths = []
    for person in people:
        placement = heads.HeadPlacement(person.cx, person.cy, person.side, person.pose)
        heads.draw_back_hair(canvas, placement, person.identity)
        lm = heads.draw_head(canvas, placement, person.identity, person.expression)
        truths.append(FaceTruth(box=placement.box, landmarks68=lm, kps5=kps5_from_landmarks68(lm),
                                identity=person.identity, pose=person.pose, expression=person.expression,
                                clothing=person.clothing))
    return Scene(image=canvas.image(), caption=caption(spec), faces=tuple(truths), spec=spec)


def random_scene(seed: int, n_people: int | None = None, split: str = "train", **kwargs) -> Scene:
    """The scene of a seed (deterministic)."""
    return render_scene(random_spec(np.random.default_rng(seed), n_people, split, **kwargs))


def portrait_spec(identity: Identity, rng: np.random.Generator, side_fraction: float = 0.3,
                  pose: heads.Pose | None = None, expression: str | None = None) -> SceneSpec:
    """One person, face near the upper centre: the kind of photo a user gives as a reference."""
    side = side_fraction * SIZE
    person = PersonSpec(identity=identity, cx=SIZE / 2 + rng.uniform(-8, 8), cy=0.4 * SIZE + rng.uniform(-8, 8),
                        side=side, pose=pose or heads.random_pose(rng, 0.5),
                        expression=expression or str(rng.choice(heads.EXPRESSIONS)),
                        clothing=str(rng.choice(list(CLOTHES))))
    return SceneSpec(people=(person,), place=str(rng.choice(PLACES)), seed=int(rng.integers(2**31)))
