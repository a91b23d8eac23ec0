"""The RealisID-Mini world: deterministic by seed, ground truth consistent with the pixels, identity only in heads,
captions that never name an identity."""

import dataclasses
import math
import re

import numpy as np
import pytest

from realisid.mini import head, world
from realisid.mini.identity import ATTRIBUTES, N_IDENTITIES, Identity, random_identity

# every word the caption grammar may use (written out here, independently of the generator)
CAPTION_WORDS = {
    "one", "two", "three", "person", "people", "close-up", "portrait", "half-body", "full-body", "shot", "in", "a",
    "park", "on", "beach", "city", "street", "room", "outside", "at", "night", "wearing", "shirt", "shirts", "the",
    "left", "right", "and", "from", "to", "red", "blue", "green", "yellow", "purple", "orange", "white", "black",
}


def test_scene_is_deterministic_by_seed():
    a, b, c = world.random_scene(7), world.random_scene(7), world.random_scene(8)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (256, 256, 3) and a.image.dtype == np.uint8


def test_ground_truth_is_consistent():
    for seed in range(40):
        scene = world.random_scene(seed)
        boxes = [f.box for f in scene.faces]
        for face in scene.faces:
            x0, y0, x1, y1 = face.box
            assert x1 - x0 == pytest.approx(y1 - y0)  # square
            assert 0 <= x0 and 0 <= y0 and x1 <= 256 and y1 <= 256
            assert 1 / 8 * 0.89 <= face.side_fraction <= 1 / 3 * 1.11
            lm = face.landmarks68
            assert lm.shape == (68, 2)
            assert (lm[:, 0] > x0).all() and (lm[:, 0] < x1).all() and (lm[:, 1] > y0).all() and (lm[:, 1] < y1).all()
            np.testing.assert_array_equal(face.kps5[2], lm[30])
            np.testing.assert_array_equal(face.kps5[3], lm[48])
            np.testing.assert_array_equal(face.kps5[4], lm[54])
            # the image-left eye keypoint lies between that eye's corners
            assert lm[36, 0] < face.kps5[0, 0] < lm[39, 0] and lm[42, 0] < face.kps5[1, 0] < lm[45, 0]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0], "face boxes must not overlap"


def test_captions_never_name_an_identity():
    for seed in range(60):
        scene = world.random_scene(seed)
        words = set(re.findall(r"[a-z\-]+", scene.caption))
        assert words <= CAPTION_WORDS, words - CAPTION_WORDS
        other = tuple(dataclasses.replace(p, identity=random_identity(np.random.default_rng(seed), "any"))
                      for p in scene.spec.people)
        assert world.caption(dataclasses.replace(scene.spec, people=other)) == scene.caption


def test_identities_enumerate_and_split():
    assert N_IDENTITIES >= 10**5
    rng = np.random.default_rng(0)
    for _ in range(200):
        ident = random_identity(rng, "any")
        assert Identity.from_index(ident.index) == ident
    assert not any(random_identity(rng, "train").held_out for _ in range(300))
    assert all(random_identity(rng, "held_out").held_out for _ in range(300))


def _one_person(identity, pose=None, expression="neutral", side=80.0):
    person = world.PersonSpec(identity=identity, cx=128, cy=100, side=side, pose=pose or head.Pose(),
                              expression=expression)
    return world.SceneSpec(people=(person,), place="room", seed=3)


def test_identity_lives_in_the_head_only():
    rng = np.random.default_rng(1)
    for _ in range(10):
        a, b = random_identity(rng, "any"), random_identity(rng, "any")
        img_a, img_b = world.render_scene(_one_person(a)).image, world.render_scene(_one_person(b)).image
        diff = np.abs(img_a.astype(int) - img_b.astype(int)).sum(-1) > 0
        ys, xs = np.nonzero(diff)
        # head, hair, bun, spikes and long hair stay within one face side of the centre (plus anti-aliasing)
        assert (np.abs(xs + 0.5 - 128) <= 80 + 2).all() and (np.abs(ys + 0.5 - 100) <= 80 + 2).all()


@pytest.mark.parametrize("attribute", list(ATTRIBUTES))
def test_every_attribute_changes_the_pixels(attribute):
    base = Identity(**{name: 0 for name in ATTRIBUTES})
    changed = dataclasses.replace(base, **{attribute: 1})
    img_a = world.render_scene(_one_person(base)).image
    img_b = world.render_scene(_one_person(changed)).image
    assert np.abs(img_a.astype(int) - img_b.astype(int)).sum() > 0


def test_yaw_foreshortens_like_a_rigid_head():
    """Orthographic view of a head turned by yaw: the distance between the two eye centres scales by cos(yaw)."""
    ident = Identity(**{name: 0 for name in ATTRIBUTES})

    def eye_distance(yaw):
        kps = world.render_scene(_one_person(ident, head.Pose(yaw=yaw))).faces[0].kps5
        return float(np.linalg.norm(kps[1] - kps[0]))

    frontal = eye_distance(0.0)
    for yaw in (20.0, 40.0):
        assert eye_distance(yaw) / frontal == pytest.approx(math.cos(math.radians(yaw)), rel=1e-6)
    nose_shift = world.render_scene(_one_person(ident, head.Pose(yaw=30.0))).faces[0].landmarks68[30, 0] - 128
    assert nose_shift > 0  # yaw > 0 turns the face towards the image right


def test_expressions_move_mouth_eyes_and_brows():
    ident = Identity(**{name: 0 for name in ATTRIBUTES})
    lm = {e: world.render_scene(_one_person(ident, expression=e)).faces[0].landmarks68 for e in head.EXPRESSIONS}
    opening = {e: lm[e][66, 1] - lm[e][62, 1] for e in lm}
    assert opening["surprise"] > 3 * max(opening["neutral"], 1.0)
    assert lm["smile"][48, 1] < lm["neutral"][48, 1] and lm["smile"][54, 1] < lm["neutral"][54, 1]
    assert lm["frown"][21, 1] > lm["neutral"][21, 1] and lm["frown"][48, 1] > lm["neutral"][48, 1]
    assert lm["surprise"][19, 1] < lm["neutral"][19, 1]
