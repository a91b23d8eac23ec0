"""Landmark hint renderers and the masked identity crop."""

import numpy as np
import pytest

from realisid.faces import FaceRecord
from realisid.faces.identity_input import masked_face_crop
from realisid.faces.render import KPS5_COLOURS, LANDMARK68_PARTS, render_kps5, render_landmarks68, to_crop_coords
from tests.helpers.fake_insightface import canonical_landmarks68

SIZE = 128


def layout_in_crop():
    return (canonical_landmarks68() * 0.4 + 0.5) * SIZE


def test_to_crop_coords():
    pts = to_crop_coords([[10, 20], [110, 70]], [10, 20, 210, 220], 100)
    np.testing.assert_allclose(pts, [[0, 0], [50, 25]])


def test_landmarks68_deterministic_shape_range():
    a = render_landmarks68(layout_in_crop(), SIZE)
    b = render_landmarks68(layout_in_crop().copy(), SIZE)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert a.min() == 0.0 and 0.9 < a.max() <= 1.0
    assert np.all(a[0, 0] == 0)  # black background
    # antialiased: intermediate intensities exist, not only on/off
    assert np.any((a > 0.05) & (a < 0.95))


def test_landmarks68_each_part_has_its_own_colour():
    colours = [part[4] for part in LANDMARK68_PARTS]
    assert len(set(colours)) == len(colours)
    img = render_landmarks68(layout_in_crop(), SIZE, thickness=1)
    pts = layout_in_crop()
    for _name, first, last, _closed, colour in LANDMARK68_PARTS:
        x, y = np.round(pts[(first + last) // 2]).astype(int)
        patch = img[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3)
        brightest = patch[np.argmax(patch.sum(1))]
        expected = np.array(colour) / 255.0
        # the pixel is mostly this part's colour (direction of the RGB vector)
        cos = brightest @ expected / (np.linalg.norm(brightest) * np.linalg.norm(expected))
        assert cos > 0.97, (_name, brightest, expected)


def test_kps5_instantid_style():
    kps = np.array([[40, 50], [88, 50], [64, 72], [46, 96], [82, 96]], np.float32)
    img = render_kps5(kps, SIZE)
    assert img.shape == (SIZE, SIZE, 3) and np.array_equal(img, render_kps5(kps, SIZE))
    for (x, y), colour in zip(kps.astype(int), KPS5_COLOURS, strict=True):
        np.testing.assert_allclose(img[y, x], np.array(colour) / 255.0)
    # midway along the left-eye -> nose limb: the eye's colour at 60 % brightness
    mid = np.round((kps[0] + kps[2]) / 2).astype(int)
    np.testing.assert_allclose(img[mid[1], mid[0]], np.array(KPS5_COLOURS[0]) / 255.0 * 0.6, atol=1 / 255)
    assert np.all(img[0, 0] == 0)


def _record(landmarks=None):
    box = (60, 50, 140, 150)
    kps = [(85, 90), (115, 90), (100, 110), (88, 130), (112, 130)]
    return FaceRecord(box=box, score=1, kps=kps, landmarks68=landmarks, image_size=(200, 200))


@pytest.mark.parametrize("with_68", [False, True])
def test_masked_crop_shape_background_and_face(with_68):
    image = np.full((200, 200, 3), 200, np.uint8)
    lm = (canonical_landmarks68() * 40 + [100, 100]) if with_68 else None
    crop = masked_face_crop(image, _record(lm), size=64, expand=1.4)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    for y, x in [(0, 0), (0, 63), (63, 0), (63, 63)]:
        assert crop[y, x].tolist() == [0, 0, 0]
    assert crop[32, 32].tolist() == [200, 200, 200]


def test_masked_crop_pads_outside_image_with_zeros():
    image = np.full((100, 100, 3), 255, np.uint8)
    rec = FaceRecord(box=(-20, 10, 40, 70), score=1, kps=np.zeros((5, 2)))
    crop = masked_face_crop(image, rec, size=60)
    # the left third of the square (x < 0 in the image) is black even inside the face ellipse
    assert crop[30, 5:15].max() == 0
    assert crop[30, 30].tolist() == [255, 255, 255]
