"""Evaluation metrics against known answers: boxes, identity (embedded dlib space), pose, expression, CP, CLIP."""

import math

import cv2
import numpy as np
import pytest

from realisid.evaluate import metrics
from realisid.evaluate.pose import head_pose, pose_error, project_model
from realisid.faces import EmbeddingSpaceError, FaceRecord

CONTEXT = 1.8  # pasted crops carry this much context around the face square, so MTCNN sees a whole head


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def t1_face() -> np.ndarray:
    """One face (image-left person) of insightface's bundled t1.jpg, read from the installed package."""
    import insightface.data

    bgr = insightface.data.get_image("t1")
    return np.ascontiguousarray(bgr[200:470, 0:240, ::-1])


@pytest.fixture(scope="module")
def analyzer():
    from realisid.faces.embedded import EmbeddedAnalyzer

    return EmbeddedAnalyzer()


def face_patch(image: np.ndarray, face_square, side: int) -> np.ndarray:
    """The face square of `image` with CONTEXT around it, resized so the face square becomes `side` px."""
    x0, y0, x1, y1 = face_square
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * CONTEXT / 2
    out = int(round(side * CONTEXT))
    scale = out / (2 * half)
    mat = np.array([[scale, 0, out / 2 - cx * scale], [0, scale, out / 2 - cy * scale]], np.float32)
    return cv2.warpAffine(image, mat, (out, out), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def paste_faces(width: int, height: int, boxes_px, patches) -> np.ndarray:
    """A flat background with each face patch centred on its requested (square) box."""
    canvas = np.full((height, width, 3), (96, 110, 128), np.uint8)
    for (x0, y0, x1, y1), patch in zip(boxes_px, patches, strict=True):
        ph, pw = patch.shape[:2]
        left, top = int(round((x0 + x1) / 2 - pw / 2)), int(round((y0 + y1) / 2 - ph / 2))
        sx0, sy0 = max(0, -left), max(0, -top)
        dx0, dy0 = max(0, left), max(0, top)
        dx1, dy1 = min(width, left + pw), min(height, top + ph)
        canvas[dy0:dy1, dx0:dx1] = patch[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
    return canvas


def record(box, space="test-space", embedding=None, landmarks=None) -> FaceRecord:
    return FaceRecord(box=box, score=1.0, kps=np.zeros((5, 2)), landmarks68=landmarks, embedding=embedding,
                      space=space, image_size=(100, 100))


# boxes --------------------------------------------------------------------------------------------------------
def test_box_iou_known_values():
    assert metrics.box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert metrics.box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert metrics.box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert metrics.box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


def test_match_faces_is_globally_optimal_and_counts_missing_and_extra():
    requested = [[0, 0, 10, 10], [6, 0, 16, 10], [100, 100, 110, 110]]
    d1 = record([2, 0, 12, 10])  # IoU 2/3 with A, 3/7 with B
    d2 = record([-2, 0, 8, 10])  # IoU 2/3 with A, 1/9 with B
    far = record([300, 300, 310, 310])
    matches = metrics.match_faces([d1, d2, far], requested)
    assert matches[0].face is d2 and matches[1].face is d1  # greedy-by-order would give A <- d1
    assert matches[0].iou == pytest.approx(8 / 12) and matches[1].iou == pytest.approx(6 / 14)
    assert not matches[2].found and matches[2].iou == 0.0 and matches[2].location_error == 1.0
    assert matches[1].location_error == pytest.approx(1 - 6 / 14)
    assert metrics.extra_faces([d1, d2, far], matches) == 1


# identity -----------------------------------------------------------------------------------------------------
def test_identity_same_face_high_other_face_lower(analyzer):
    ref_img = astronaut()
    ref = analyzer.analyze(ref_img)[0]
    other_img = t1_face()
    other = max(analyzer.analyze(other_img), key=lambda f: f.area)
    box = [200, 150, 300, 250]  # 1/5 of a 500 px image side
    gen_same = paste_faces(500, 500, [box], [face_patch(ref_img, ref.square_box(), 100)])
    gen_other = paste_faces(500, 500, [box], [face_patch(other_img, other.square_box(), 100)])
    same = metrics.match_faces(analyzer.analyze(gen_same), [box])[0]
    diff = metrics.match_faces(analyzer.analyze(gen_other), [box])[0]
    assert same.found and diff.found
    assert same.iou > 0.6 and diff.iou > 0.5
    cos_same = metrics.identity_similarity(ref, same.face)
    cos_diff = metrics.identity_similarity(ref, diff.face)
    assert cos_same > 0.95
    assert cos_diff < cos_same - 0.05


def test_identity_refuses_mixed_spaces():
    a = record([0, 0, 1, 1], space="dlib-resnet-128", embedding=[1.0, 0.0])
    b = record([0, 0, 1, 1], space="arcface-antelopev2-512", embedding=[1.0, 0.0])
    with pytest.raises(EmbeddingSpaceError, match="mismatch"):
        metrics.identity_similarity(a, b)
    with pytest.raises(ValueError, match="no embedding"):
        metrics.identity_similarity(a, record([0, 0, 1, 1], space="dlib-resnet-128"))


def test_copy_paste_known_values():
    ref, tgt = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    mid = (ref + tgt) / np.sqrt(2)
    r, t = record([0, 0, 1, 1], embedding=ref), record([0, 0, 1, 1], embedding=tgt)
    assert metrics.copy_paste(record([0, 0, 1, 1], embedding=ref), r, t) == pytest.approx(1.0)
    assert metrics.copy_paste(record([0, 0, 1, 1], embedding=tgt), r, t) == pytest.approx(-1.0)
    assert metrics.copy_paste(record([0, 0, 1, 1], embedding=mid), r, t) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(metrics.copy_paste(r, r, r))


# pose ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("angles", [(0, 0, 0), (20, 0, 0), (-25, 10, 0), (0, -15, 10), (15, 8, -20)])
def test_head_pose_recovers_synthetic_angles(angles):
    yaw, pitch, roll = head_pose(project_model(*angles, centre=(400, 300), scale=0.8))
    assert yaw == pytest.approx(angles[0], abs=2.0)
    assert pitch == pytest.approx(angles[1], abs=2.0)
    assert roll == pytest.approx(angles[2], abs=1.0)


def test_pose_of_flipped_and_rotated_astronaut(analyzer):
    img = astronaut()
    face = analyzer.analyze(img)[0]
    flipped = analyzer.analyze(np.ascontiguousarray(img[:, ::-1]))[0]
    yaw, pitch, roll = head_pose(face.landmarks68)
    f_yaw, f_pitch, f_roll = head_pose(flipped.landmarks68)
    assert yaw > 2.0 and f_yaw < -2.0  # she looks slightly to the image right; the mirror looks left
    assert f_yaw == pytest.approx(-yaw, abs=2.0)
    assert f_roll == pytest.approx(-roll, abs=2.0) and f_pitch == pytest.approx(pitch, abs=3.0)
    assert pose_error(face.landmarks68, face.landmarks68)["pose_l1_deg"] == 0.0
    err = pose_error(face.landmarks68, flipped.landmarks68)
    assert err["yaw_err"] == pytest.approx(abs(yaw - f_yaw)) and err["yaw_err"] > 4.0
    assert err["pose_l1_norm"] == pytest.approx(err["pose_l1_deg"] / 180)
    # cv2 rotates counter-clockwise for a positive angle; our roll is clockwise-positive
    (cx, cy) = face.centre
    mat = cv2.getRotationMatrix2D((cx, cy), 20, 1.0)
    rotated = cv2.warpAffine(img, mat, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)
    r_face = max(analyzer.analyze(rotated), key=lambda f: f.area)
    assert head_pose(r_face.landmarks68)[2] == pytest.approx(roll - 20, abs=4.0)


def test_pose_needs_landmarks():
    with pytest.raises(ValueError, match="68-point landmarks"):
        head_pose(None)


# expression ---------------------------------------------------------------------------------------------------
def test_expression_error_zero_for_same_shape_positive_for_open_mouth(analyzer):
    lm = analyzer.analyze(astronaut())[0].landmarks68.astype(np.float64)
    assert metrics.expression_error(lm, lm) == pytest.approx(0.0, abs=1e-12)
    angle = math.radians(30)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = lm @ rot.T * 1.7 + np.array([40.0, -12.0])
    assert metrics.expression_error(moved, lm) == pytest.approx(0.0, abs=1e-9)
    iod = float(np.linalg.norm(lm[45] - lm[36]))
    opened = lm.copy()
    lower_lip = [56, 57, 58, 65, 66, 67]
    opened[lower_lip, 1] += 0.2 * iod
    expected = len(lower_lip) * 0.2 / len(metrics.EXPRESSION_POINTS)  # stable points unchanged: exact alignment
    assert metrics.expression_error(opened, lm) == pytest.approx(expected, rel=1e-6)


# CLIP ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_vision(tmp_path_factory):
    import comfy.clip_vision

    from tests.helpers import tiny_host_models as tiny

    tiny.register_tiny_families()
    path = tiny.write_clip_vision(tmp_path_factory.mktemp("cv") / "tiny_cv.safetensors")
    return comfy.clip_vision.load(str(path))


def test_clip_image_similarity_with_tiny_model(clip_vision):
    scorer = metrics.ClipScorer(clip_vision, name="tiny")
    img = astronaut()[:200, :200]
    assert scorer.image_similarity(img, img) == pytest.approx(1.0, abs=1e-5)
    other = np.ascontiguousarray(img[::-1, ::-1])
    import torch

    def embed(x):  # independent reference: ComfyUI's own encode_image on the [0, 1] IMAGE tensor
        with torch.no_grad():
            return clip_vision.encode_image(torch.from_numpy(x / 255.0).float()[None], crop=False)["image_embeds"][0]

    a, b = embed(img).double(), embed(other).double()
    assert scorer.image_embeds([img]).shape == (1, 32)
    assert scorer.image_similarity(img, other) == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-6)
    with pytest.raises(ValueError, match="CLIP-T needs a CLIP text model"):
        scorer.text_similarity("a photo", img)


def test_clip_text_similarity_checks_the_projection_space(clip_vision, models_dir):
    import comfy.sd

    def text_model(name):
        return comfy.sd.load_checkpoint_guess_config(str(models_dir / "checkpoints" / name), output_vae=False,
                                                     output_clipvision=False)[1]

    img = astronaut()[:200, :200]
    sd15 = metrics.ClipScorer(clip_vision, text_model("tiny_sd15.safetensors"))  # pooled 32 == vision proj 32
    value = sd15.text_similarity("an astronaut", img)
    assert -1.0 <= value <= 1.0 and value != 0.0
    sdxl = metrics.ClipScorer(clip_vision, text_model("tiny_sdxl.safetensors"))  # pooled 64
    with pytest.raises(ValueError, match="different CLIP spaces"):
        sdxl.text_similarity("an astronaut", img)


def test_crop_face_pads_outside_the_image():
    img = np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3)
    crop = metrics.crop_face(img, [-5, -5, 5, 5], expand=1.0)
    assert crop.shape == (10, 10, 3)
    assert np.array_equal(crop[5:, 5:], img[:5, :5])
