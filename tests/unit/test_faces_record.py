"""FaceRecord, selection, no-face policies, merging and embedding spaces."""

import json
import logging

import numpy as np
import pytest

from realisid.faces import (
    EmbeddingSpaceError,
    FaceRecord,
    NoFaceError,
    analyze_batch,
    apply_no_face_policy,
    check_space,
    merge_records,
    select_faces,
)


def make(x0=10, y0=20, w=40, h=50, emb=(3.0, 4.0), space="s", index=0):
    box = (x0, y0, x0 + w, y0 + h)
    kps = [(x0 + w * 0.3, y0 + h * 0.4), (x0 + w * 0.7, y0 + h * 0.4), (x0 + w / 2, y0 + h * 0.6), (x0 + w * 0.35, y0 + h * 0.8), (x0 + w * 0.65, y0 + h * 0.8)]
    return FaceRecord(box=box, score=0.9, kps=kps, embedding=emb, space=space, image_index=index, image_size=(200, 100))


def test_roundtrip_through_json_is_exact():
    lm = np.arange(136, dtype=np.float32).reshape(68, 2) / 3
    rec = make().replace(landmarks68=lm)
    back = FaceRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert back == rec
    np.testing.assert_array_equal(back.landmarks68, lm)
    assert back.embedding.dtype == np.float32 and back.image_size == (200, 100)


def test_arrays_are_private_readonly_and_embedding_normalised():
    kps = np.ones((5, 2))
    rec = FaceRecord(box=[0, 0, 4, 2], score=1, kps=kps, embedding=[3, 4])
    kps[0, 0] = 99
    assert rec.kps[0, 0] == 1
    with pytest.raises(ValueError):
        rec.box[0] = 5
    np.testing.assert_allclose(rec.embedding, [0.6, 0.8], rtol=1e-6)
    copy = rec.replace(score=0.5)
    assert copy.kps is rec.kps and copy.score == 0.5 and rec.score == 1.0


def test_geometry_helpers():
    rec = make(10, 20, 40, 50)
    assert rec.area == 2000
    np.testing.assert_allclose(rec.square_box(2.0), [-20, -5, 80, 95])
    assert rec.box_fractions() == pytest.approx((0.05, 0.2, 0.25, 0.7))


@pytest.mark.parametrize(
    "field,value,msg",
    [("kps", np.zeros((4, 2)), "kps must be 5x2"), ("box", [1, 2, 3], "box must be 4"), ("embedding", [0, 0], "zero")],
)
def test_bad_fields_are_rejected(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        make().replace(**{field: value})


def test_select_modes():
    small_left, big_mid, mid_right = make(0, 0, 10, 10), make(50, 0, 40, 40), make(150, 0, 20, 20)
    recs = [mid_right, small_left, big_mid]
    assert select_faces(recs) == [big_mid]
    assert select_faces(recs, "largest", count=2) == [big_mid, mid_right]
    assert select_faces(recs, "left_to_right") == [small_left, big_mid, mid_right]
    assert select_faces(recs, "left_to_right", index=1, count=1) == [big_mid]
    assert select_faces(recs, "index", index=2) == [big_mid]
    assert select_faces([], "largest") == []
    with pytest.raises(ValueError, match="only 3 face"):
        select_faces(recs, "index", index=3)
    with pytest.raises(ValueError, match="unknown face selection mode"):
        select_faces(recs, "biggest")


def test_no_face_policies(caplog):
    recs = [make()]
    assert apply_no_face_policy(recs, "error") == recs
    with pytest.raises(NoFaceError, match="image 3 of the batch.*larger.*InstantID workflows choose insightface "
                                          "antelopev2"):
        apply_no_face_policy([], "error", image_index=3)
    # for a model that reads one identity only (InstantID: ArcFace antelopev2), the tip names that backend alone
    with pytest.raises(NoFaceError) as error:
        apply_no_face_policy([], "error", required_space="arcface-antelopev2-512")
    assert "use insightface antelopev2 as the RealisID Face Analysis backend" in str(error.value)
    assert "embedded" not in str(error.value)
    with caplog.at_level(logging.WARNING):
        assert apply_no_face_policy([], "skip", image_index=1) == []
    assert "image 1" in caplog.text
    assert apply_no_face_policy([], "passthrough") is None
    with pytest.raises(ValueError, match="unknown no-face policy"):
        apply_no_face_policy([], "ignore")


def test_merge_is_normalised_mean_and_refuses_mixed_spaces():
    a, b = make(emb=(1.0, 0.0)), make(emb=(0.0, 2.0))
    merged = merge_records([a, b])
    np.testing.assert_allclose(merged.embedding, [2**-0.5, 2**-0.5], rtol=1e-6)
    np.testing.assert_array_equal(merged.box, a.box)
    with pytest.raises(EmbeddingSpaceError, match="'dlib-resnet-128'.*'arcface-antelopev2-512'"):
        merge_records([a.replace(space="arcface-antelopev2-512"), b.replace(space="dlib-resnet-128")])
    with pytest.raises(ValueError, match="at least one"):
        merge_records([])


def test_check_space():
    check_space("arcface-antelopev2-512", "arcface-antelopev2-512")
    with pytest.raises(EmbeddingSpaceError, match="got 'dlib-resnet-128'.*'arcface-antelopev2-512' is required") as err:
        check_space("dlib-resnet-128", "arcface-antelopev2-512")
    assert isinstance(err.value, ValueError)
    assert "choose backend 'insightface antelopev2'" in str(err.value)  # what to do, in the node's own words
    with pytest.raises(EmbeddingSpaceError, match="choose backend 'embedded"):
        check_space("arcface-antelopev2-512", "dlib-resnet-128")


def test_analyze_batch_passes_image_index():
    class Stub:
        space = "s"

        def analyze(self, image_rgb, image_index=0):
            return [make(index=image_index)] * int(image_rgb[0, 0, 0])

    out = analyze_batch(Stub(), [np.full((4, 4, 3), n, np.uint8) for n in (2, 0, 1)])
    assert [len(x) for x in out] == [2, 0, 1]
    assert [r.image_index for r in out[0] + out[2]] == [0, 0, 2]


def test_merge_averages_the_raw_embedding_norms():
    from realisid.faces import merge_records
    from realisid.faces.record import FaceRecord

    base = dict(box=[0, 0, 10, 10], score=0.9, kps=np.zeros((5, 2)), space="arcface-antelopev2-512")
    a = FaceRecord(embedding=np.eye(4)[0], embedding_norm=20.0, **base)
    b = FaceRecord(embedding=np.eye(4)[1], embedding_norm=24.0, **base)
    merged = merge_records([a, b])
    assert merged.embedding_norm == pytest.approx(22.0)
    np.testing.assert_allclose(merged.embedding, np.array([1, 1, 0, 0]) / np.sqrt(2), atol=1e-6)


def test_square_box_takes_the_max_or_the_mean_side_about_the_same_centre():
    from realisid.faces.record import square_box_xyxy

    box = (10.0, 20.0, 40.0, 30.0)  # 30 wide, 10 high, centre (25, 25)
    np.testing.assert_allclose(square_box_xyxy(box), [10, 10, 40, 40])
    np.testing.assert_allclose(square_box_xyxy(box, side="mean", dtype=np.float64), [15, 15, 35, 35])
    np.testing.assert_allclose(square_box_xyxy(box, expand=2.0, side="mean"), [5, 5, 45, 45])
    assert square_box_xyxy(box, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="side must be 'max' or 'mean'"):
        square_box_xyxy(box, side="min")


def test_kps5_from_landmarks68_takes_eye_centres_nose_tip_and_mouth_corners():
    from realisid.faces.record import kps5_from_landmarks68

    lm = np.zeros((68, 2))
    lm[36:42] = [[10, 20]] * 3 + [[12, 22]] * 3  # left eye ring: centre (11, 21)
    lm[42:48] = [30, 20]
    lm[30], lm[48], lm[54] = [20, 30], [14, 40], [26, 40]
    np.testing.assert_allclose(kps5_from_landmarks68(lm), [[11, 21], [30, 20], [20, 30], [14, 40], [26, 40]])
    with pytest.raises(ValueError, match="68x2"):
        kps5_from_landmarks68(np.zeros((5, 2)))
