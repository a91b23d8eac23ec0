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


def synthetic_landmarks68() -> np.ndarray:
    """A hand-made 68-point layout on a 128 px crop whose parts are straight strokes far from one another."""
    pts = np.zeros((68, 2), np.float32)
    pts[0:17] = np.stack([10 + 7 * np.arange(17), np.full(17, 100)], 1)  # jaw: y = 100, x 10..122
    pts[17:22] = np.stack([np.full(5, 20), 10 + 8 * np.arange(5)], 1)  # right brow: x = 20, y 10..42
    pts[22:27] = np.stack([np.full(5, 60), 10 + 8 * np.arange(5)], 1)  # left brow: x = 60
    pts[27:31] = np.stack([np.full(4, 100), 10 + 8 * np.arange(4)], 1)  # nose bridge: x = 100, y 10..34
    pts[31:36] = np.stack([30 + 8 * np.arange(5), np.full(5, 60)], 1)  # nose base: y = 60, x 30..62
    pts[36:42] = [(80, 60), (84, 56), (88, 56), (92, 60), (88, 64), (84, 64)]  # right eye hexagon
    pts[42:48] = [(100, 60), (104, 56), (108, 56), (112, 60), (108, 64), (104, 64)]  # left eye hexagon
    pts[48:54] = np.stack([20 + 8 * np.arange(6), np.full(6, 75)], 1)  # outer lips: top edge y = 75 ...
    pts[54:60] = np.stack([60 - 8 * np.arange(6), np.full(6, 85)], 1)  # ... back along y = 85 (closed)
    pts[60:68] = np.stack([70 + 6 * np.arange(8), np.full(8, 90)], 1)  # inner lips: y = 90, x 70..112
    return pts


def test_landmarks68_exact_colours_at_hand_checked_pixels():
    img = np.round(render_landmarks68(synthetic_landmarks68(), SIZE, thickness=3) * 255).astype(int)
    colour = {name: list(rgb) for name, _, _, _, rgb in LANDMARK68_PARTS}
    hand_checked = {  # (x, y) on each stroke, between two of its points -> that part's exact colour
        "jaw": [(45, 100), (13, 100), (119, 100), (45, 99), (45, 101)],
        "right_brow": [(20, 30), (20, 14)],
        "left_brow": [(60, 30)],
        "nose_bridge": [(100, 22)],
        "nose_base": [(42, 60)],
        "right_eye": [(86, 56), (86, 64)],
        "left_eye": [(106, 56)],
        "outer_lips": [(32, 75), (32, 85), (20, 80)],  # (20, 80): the closing segment 59 -> 48
        "inner_lips": [(85, 90)],
    }
    for part, pixels in hand_checked.items():
        for x, y in pixels:
            assert img[y, x].tolist() == colour[part], (part, x, y, img[y, x])
    for x, y in [(5, 120), (127, 0), (40, 45), (90, 80), (70, 100 - 6), (96, 60)]:  # far from every stroke
        assert img[y, x].tolist() == [0, 0, 0], (x, y, img[y, x])
    # eyes are closed polylines: the closing segment 41 -> 36, (84, 64) -> (80, 60), passes (82, 62)
    assert img[62, 82].tolist() == colour["right_eye"]


def test_kps5_limbs_and_dots_exact_colours():
    kps = np.array([[40, 50], [88, 50], [64, 72], [46, 96], [82, 96]], np.float32)
    img = np.round(render_kps5(kps, SIZE) * 255).astype(int)
    for a, b in ((0, 2), (1, 2), (3, 2), (4, 2)):  # limb midpoints: the outer point's colour at 60 %
        x, y = np.round((kps[a] + kps[b]) / 2).astype(int)
        assert img[y, x].tolist() == [round(c * 0.6) for c in KPS5_COLOURS[a]], (a, x, y)
    for (x, y), colour in zip(kps.astype(int), KPS5_COLOURS, strict=True):
        assert img[y, x].tolist() == list(colour)  # dots are drawn over the limbs at full brightness
        assert img[y, x + 1].tolist() == list(colour)  # radius 1.25 px at 128 px: the next pixel is covered too
    for x, y in [(0, 0), (120, 10), (10, 120), (64, 20)]:
        assert img[y, x].tolist() == [0, 0, 0]


def _run_lengths(mask_line: np.ndarray) -> int:
    return int(np.count_nonzero(mask_line))


@pytest.mark.parametrize("size", [1024, 512])
def test_kps5_default_sizes_are_instantids_proportions(size):
    """InstantID's draw_kps: limb ellipses of half-width 4 px and dots of radius 10 px on its ~1024 px image, i.e.
    a limb 8 px and a dot 20 px across at 1024, half that at 512. Measured on a horizontal limb, away from dots."""
    u = size / 1024
    kps = np.array([[100, 300], [100, 700], [900, 300], [100, 900], [300, 950]], np.float64) * u
    img = render_kps5(kps, size)
    red, green, blue = img[..., 0], img[..., 1], img[..., 2]
    limb = (red > 0.3) & (green < 0.1) & (blue < 0.1)  # the eye-to-nose limb: red at 60 %, half coverage and up
    column = round(500 * u)  # halfway between the left eye and the nose, far from every other stroke
    window = slice(round(250 * u), round(350 * u))
    assert _run_lengths(limb[window, column]) == pytest.approx(2 * 4 * u, abs=1)
    dot = (red > 0.8) & (green < 0.5) & (blue < 0.1)  # the left eye's dot: full red (the limb is 60 %)
    assert _run_lengths(dot[round(250 * u): round(350 * u), round(100 * u)]) == pytest.approx(2 * 10 * u, abs=1)
    assert _run_lengths(dot[round(300 * u), round(50 * u): round(150 * u)]) == pytest.approx(2 * 10 * u, abs=1)
