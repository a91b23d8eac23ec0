"""insightface backend against a synthetic pack generated at test time (tests/helpers/fake_insightface.py)."""

import logging
import socket

import numpy as np
import pytest

from realisid.faces.errors import FaceModelsMissingError
from realisid.faces.insightface_backend import InsightFaceAnalyzer, resolve_providers
from tests.helpers import fake_insightface as fake

pytest.importorskip("insightface")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # skimage 0.26 deprecation inside insightface


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory):
    return fake.build_fake_pack(tmp_path_factory.mktemp("insightface"))


@pytest.fixture(scope="module")
def analyzer(pack_root):
    return InsightFaceAnalyzer(pack_root, "antelopev2", "CPU")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the face backend tried to use the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    requests = pytest.importorskip("requests")
    monkeypatch.setattr(requests, "get", refuse)


def test_happy_path_matches_generator(analyzer):
    records = analyzer.analyze(fake.face_image(), image_index=4)
    assert len(records) == 1
    rec = records[0]
    np.testing.assert_allclose(rec.box, [256, 160, 384, 288], atol=1e-3)
    np.testing.assert_allclose(rec.box, fake.expected_box((320, 224)), atol=1e-3)
    np.testing.assert_allclose(rec.kps, fake.expected_kps((320, 224)), atol=1e-3)
    np.testing.assert_allclose(rec.kps[0], [294.4, 208.0], atol=1e-3)
    assert rec.score == pytest.approx(fake.SCORE * (2 * (255 - 127.5) / 128 - 1), abs=1e-4)
    assert rec.landmarks68.shape == (68, 2)
    np.testing.assert_allclose(rec.landmarks68, fake.expected_landmarks(rec.box), atol=0.05)
    assert rec.embedding.shape == (512,) and np.linalg.norm(rec.embedding) == pytest.approx(1, abs=1e-5)
    assert rec.space == "arcface-antelopev2-512" and rec.image_index == 4 and rec.image_size == (640, 640)


def test_input_is_converted_to_bgr(analyzer, monkeypatch):
    seen = []
    monkeypatch.setattr(analyzer.app, "get", lambda img, **kw: seen.append(img.copy()) or [])
    img = np.zeros((64, 64, 3), np.uint8)
    img[..., 0] = 200  # red in RGB
    analyzer.analyze(img)
    assert seen[0][0, 0].tolist() == [0, 0, 200]


def test_no_68_points_without_1k3d68(tmp_path):
    root = fake.build_fake_pack(tmp_path, "buffalo_l", with_68=False)
    an = InsightFaceAnalyzer(root, "buffalo_l")
    (rec,) = an.analyze(fake.face_image())
    assert rec.landmarks68 is None and rec.space == "arcface-buffalo_l-512"


def test_small_face_retry_runs_detector_at_smaller_sizes(analyzer, monkeypatch):
    # Four white cells: the main pass is made to miss (as a real detector misses a close-up); the retry runs
    # the real synthetic detector at 320 px, where the block is one cell, and completes it with the other models.
    image = fake.face_image(cells=((10, 8), (11, 8), (10, 9), (11, 9)))
    monkeypatch.setattr(analyzer.app, "get", lambda img, **kw: [])
    calls = []
    real_detect = analyzer.app.det_model.detect

    def spy(img, input_size=None, max_num=0, **kw):
        calls.append(input_size)
        if input_size == (512, 512):
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        return real_detect(img, input_size=input_size, max_num=max_num)

    monkeypatch.setattr(analyzer.app.det_model, "detect", spy)
    monkeypatch.setattr(analyzer, "retry_sizes", (512, 320, 256))
    (rec,) = analyzer.analyze(image)
    assert calls == [(512, 512), (320, 320)]
    np.testing.assert_allclose(rec.box, fake.expected_box((160, 128), det_scale=0.5), atol=1e-3)
    np.testing.assert_allclose(rec.kps, fake.expected_kps((160, 128), det_scale=0.5), atol=1e-3)
    np.testing.assert_allclose(rec.landmarks68, fake.expected_landmarks(rec.box), atol=0.05)
    assert rec.embedding.shape == (512,)


def test_missing_folder_names_folder_and_files_without_network(tmp_path, no_network):
    with pytest.raises(FaceModelsMissingError) as err:
        InsightFaceAnalyzer(tmp_path, "antelopev2")
    msg = str(err.value)
    assert f"{(tmp_path / 'models' / 'antelopev2').resolve()}/" in msg
    assert "scrfd_10g_bnkps.onnx" in msg and "glintr100.onnx" in msg and "not downloaded" in msg


def test_nested_folder_hint(tmp_path, no_network):
    fake.build_fake_pack(tmp_path / "models" / "antelopev2")  # -> models/antelopev2/models/antelopev2
    (tmp_path / "models" / "antelopev2" / "models" / "antelopev2").rename(tmp_path / "nested")
    (tmp_path / "nested").rename(tmp_path / "models" / "antelopev2" / "antelopev2")
    with pytest.raises(FaceModelsMissingError, match="nested one level too deep.*Move them up one folder"):
        InsightFaceAnalyzer(tmp_path, "antelopev2")


def test_empty_folder_hint(tmp_path, no_network):
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    with pytest.raises(FaceModelsMissingError, match="contains no .onnx files. Put det_10g.onnx, w600k_r50.onnx"):
        InsightFaceAnalyzer(tmp_path, "buffalo_l")


def test_pack_is_loaded_without_network(pack_root, no_network):
    (rec,) = InsightFaceAnalyzer(pack_root).analyze(fake.face_image())
    assert rec.score > 0.9


def test_provider_fallback_to_cpu_with_warning(caplog, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.WARNING):
        assert resolve_providers("ROCM") == ["CPUExecutionProvider"]
    assert "ROCMExecutionProvider is not available" in caplog.text
    assert resolve_providers("CPU") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="unknown onnxruntime provider"):
        resolve_providers("TPU")


def test_a_listed_cuda_that_cannot_load_falls_back_with_one_warning(caplog, capfd, monkeypatch):
    """onnxruntime-gpu on a machine without usable CUDA libraries lists CUDA anyway. The probe session (real
    onnxruntime, asked for CUDA that this build cannot give) sees it, says so once, and prints nothing else."""
    import onnxruntime

    from realisid.faces import insightface_backend

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider",
                                                                         "CPUExecutionProvider"])
    monkeypatch.setattr(insightface_backend, "_USABLE", {})
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        assert resolve_providers("CUDA") == ["CPUExecutionProvider"]
        assert resolve_providers("CUDA") == ["CPUExecutionProvider"]  # probed once, warned each time it is asked
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2 and "lists CUDAExecutionProvider but cannot use it here" in warnings[0].getMessage()
    out, err = capfd.readouterr()
    assert "libcublas" not in out + err and "Failed to load" not in out + err, (out, err)


def test_a_usable_provider_is_kept_ahead_of_the_cpu(monkeypatch):
    import onnxruntime

    from realisid.faces import insightface_backend

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider",
                                                                         "CPUExecutionProvider"])
    monkeypatch.setattr(insightface_backend, "_USABLE", {"CUDAExecutionProvider": (True, "")})
    assert resolve_providers("CUDA") == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cuda_major_mismatch_is_named(monkeypatch):
    import torch
    from onnxruntime.capi import onnxruntime_validation

    from realisid.faces import insightface_backend

    monkeypatch.setattr(onnxruntime_validation, "get_package_name_and_version_info",
                        lambda: ("onnxruntime-gpu", "1.31.1", "13.0"))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert "built for CUDA 13.0, torch uses CUDA 12.8" in insightface_backend._cuda_major_mismatch()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert insightface_backend._cuda_major_mismatch() == ""
