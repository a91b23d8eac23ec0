"""`python -m realisid.train prepare`: the single-person filter, skip counts, resume, the three input kinds."""

import io
import json
import tarfile

import numpy as np
import pytest
import safetensors.numpy

from realisid.train import sources
from realisid.train.cli import main
from tests.helpers import train_synthetic

ARGS = ["--size", "64", "--detect-size", "256", "--min-face", "8", "--hint-size", "32", "--no-progress"]
KEPT = 6


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    expected = train_synthetic.write_dataset(folder, people=KEPT)
    return folder, expected


@pytest.fixture(scope="module")
def cache(images, tmp_path_factory):
    folder, _ = images
    out = tmp_path_factory.mktemp("cache") / "c"
    assert main(["prepare", "--images", str(folder), "--out", str(out), *ARGS]) == 0
    return out


def _stats(out):
    return json.loads((out / "stats.json").read_text())


def test_prepare_counts_every_skip_reason_and_never_aborts(images, cache):
    _, expected = images
    stats = _stats(cache)
    assert stats["written"] == KEPT and stats["seen"] == KEPT + sum(expected.values())
    assert {k: v for k, v in stats["skipped"].items() if v} == expected
    rows = [json.loads(line) for line in (cache / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == [f"person{i:02d}.png" for i in range(KEPT)]
    skipped = {json.loads(line)["key"]: json.loads(line)["reason"] for line in (cache / "skipped.jsonl").read_text().splitlines()}
    assert skipped == {"corrupt.png": "corrupt", "uncaptioned.png": "no_caption", "noise.png": "no_face",
                       "two_people.png": "multiple_faces", "small_face.png": "face_too_small"}


def test_cached_sample_contents_are_consistent(cache):
    row = json.loads((cache / "manifest.jsonl").read_text().splitlines()[0])
    data = safetensors.numpy.load_file(str(cache / row["file"]))
    assert data["image"].shape == (64, 64, 3) and data["image"].dtype == np.uint8
    assert data["face_crop"].shape == (224, 224, 3) and data["hint"].shape == (32, 32, 3)
    assert data["landmarks"].shape == (68, 2) and data["embedding"].shape == (128,)
    box = data["box"]
    np.testing.assert_allclose(box, row["box"], atol=1e-5)
    assert box[2] - box[0] == pytest.approx(box[3] - box[1], abs=1e-5)  # square
    x0, y0, x1, y1 = (float(v) * 64 for v in box)
    expected = [[int(x0 <= i + 0.5 < x1 and y0 <= j + 0.5 < y1) for i in range(64)] for j in range(64)]
    np.testing.assert_array_equal(data["mask"], np.array(expected, np.uint8))  # pixel centres inside the box
    assert 0 < data["mask"].sum() < 64 * 64
    inside = (data["landmarks"] > -0.2) & (data["landmarks"] < 1.2)  # landmarks sit in the face box (crop coords)
    assert inside.mean() > 0.95
    assert data["hint"].max() > 200 and data["face_crop"][0, 0].sum() == 0  # drawn lines; masked corner


def test_resume_skips_decided_samples_and_takes_new_ones(images, tmp_path):
    folder, _ = images
    out = tmp_path / "c"
    assert main(["prepare", "--images", str(folder), "--out", str(out), *ARGS]) == 0
    assert main(["prepare", "--images", str(folder), "--out", str(out), *ARGS]) == 2  # refuses to overwrite
    extra = folder.parent / (folder.name + "_plus")
    extra.mkdir()
    for p in folder.iterdir():
        (extra / p.name).write_bytes(p.read_bytes())
    rng = np.random.default_rng(7)
    train_synthetic._write(extra / "person_new.png", train_synthetic.person_image(rng), "a new astronaut")
    assert main(["prepare", "--images", str(extra), "--out", str(out), "--resume", *ARGS]) == 0
    stats = _stats(out)
    assert stats["run"]["seen"] == 1 and stats["run"]["written"] == 1 and stats["run"]["already_done"] == 11
    assert stats["written"] == KEPT + 1 and stats["seen"] == 12
    assert len((out / "manifest.jsonl").read_text().splitlines()) == KEPT + 1


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_manifest_and_tar_shards_give_the_same_samples(images, tmp_path):
    folder, _ = images
    manifest = train_synthetic.write_manifest(folder)
    assert main(["prepare", "--manifest", str(manifest), "--out", str(tmp_path / "m"), *ARGS]) == 0
    members = []
    for p in sorted(folder.glob("*.png")):
        members.append((f"{p.stem}.png", p.read_bytes()))
        if p.with_suffix(".txt").exists():
            members.append((f"{p.stem}.txt", p.with_suffix(".txt").read_bytes()))
    _tar(tmp_path / "shard-000.tar", members[: len(members) // 2])
    _tar(tmp_path / "shard-001.tar", members[len(members) // 2:])
    (tmp_path / "shard-002.tar").write_bytes(b"not a tar")  # a broken shard is skipped, not fatal
    pattern = str(tmp_path / "shard-{000..002}.tar")
    assert main(["prepare", "--shards", pattern, "--out", str(tmp_path / "s"), *ARGS]) == 0
    m, s = _stats(tmp_path / "m"), _stats(tmp_path / "s")
    assert m["written"] == s["written"] == KEPT
    assert m["skipped"]["multiple_faces"] == s["skipped"]["multiple_faces"] == 1
    assert s["skipped"]["no_caption"] == 1  # uncaptioned.png has no .txt member


def test_shards_stream_through_webdataset_grouped_by_key_across_brace_ranges(tmp_path):
    """Members sharing a key (the path up to the basename's first dot) form one sample, captions from .txt or
    .json; `{000..001}` names both shards; a shard cut short keeps the samples before the damage."""
    _tar(tmp_path / "part-000.tar", [("dir/0001.jpg", b"img1"), ("dir/0001.txt", b" a caption \n"),
                                     ("dir/0002.png", b"img2"), ("dir/0002.json", b'{"caption": "json one"}')])
    _tar(tmp_path / "part-001.tar", [("0003.webp", b"img3"), ("0003.txt", b"third"), ("0004.png", b"img4")])
    whole = (tmp_path / "part-001.tar").read_bytes()
    (tmp_path / "part-002.tar").write_bytes(whole[:2560])  # sample 0003 whole, then 0004's header and no data
    samples = list(sources.from_shards(str(tmp_path / "part-{000..002}.tar")))
    got = [(s.key, s.caption, s.read()) for s in samples]
    assert got[:4] == [("part-000.tar/dir/0001", "a caption", b"img1"), ("part-000.tar/dir/0002", "json one", b"img2"),
                       ("part-001.tar/0003", "third", b"img3"), ("part-001.tar/0004", None, b"img4")]
    assert got[4:] == [("part-002.tar/0003", "third", b"img3")]  # the damaged shard's samples before the cut


class _OneFace:
    """A stub analyzer: one fixed face (68 landmarks on a circle-ish layout) in a 128 px detection image."""

    def analyze(self, rgb):
        from realisid.faces.record import FaceRecord

        rng = np.random.default_rng(0)
        lm = np.stack([rng.uniform(44, 84, 68), rng.uniform(40, 88, 68)], axis=1)
        lm[0:17] = np.stack([np.linspace(44, 84, 17), 40 + 48 * np.sin(np.linspace(0, np.pi, 17))], axis=1)
        kps = np.array([[54, 56], [74, 56], [64, 66], [56, 76], [72, 76]], np.float32)
        return [FaceRecord(box=np.array([44, 40, 84, 88], np.float32), score=0.99, kps=kps, landmarks68=lm,
                           image_size=rgb.shape[1::-1])]


def test_identity_crop_matches_inference_whatever_the_box_expand():
    """The CLIP identity crop is what inference feeds the encoder (identity_sources: masked_face_crop at the
    record's own square box); --box-expand widens the location box and the hint crop only."""
    from realisid.faces.identity_input import masked_face_crop
    from realisid.train.prepare import PrepareOptions, build_sample

    rgb = np.random.default_rng(1).integers(0, 255, (128, 160, 3), dtype=np.uint8)
    analyzer = _OneFace()
    opts = PrepareOptions(size=128, detect_size=128, min_face=8, box_expand=1.5, hint_size=32)
    tensors, fields = build_sample(rgb, analyzer, opts)
    record = analyzer.analyze(rgb)[0]  # the whole photo is analysed (its short side is already 128)
    np.testing.assert_array_equal(tensors["face_crop"], masked_face_crop(rgb, record, 224))
    assert fields["box_expand"] == 1.5  # the location box is still the expanded square
    # the box [28, 28, 100, 100] fits the centre crop (x from 16), which is therefore kept
    np.testing.assert_allclose(tensors["box"], (record.square_box(1.5) - [16, 0, 16, 0]) / 128, atol=1e-6)
    np.testing.assert_array_equal(tensors["image"], rgb[:, 16:144])


def test_face_window_moves_least_from_the_centre():
    from realisid.train.prepare import face_square_offset

    assert face_square_offset(512, 256, 300, 400) == 144  # the centre window [128, 384) misses 400: moved by 16
    assert face_square_offset(512, 256, 200, 300) == 128  # already inside the centre window: the centre crop
    assert face_square_offset(512, 256, 10, 110) == 10  # a head at the top: the window starts at it
    assert face_square_offset(512, 256, 0, 400) == 72  # larger than the window: centred on the face
    assert face_square_offset(512, 256, 480, 520) == 256  # clamped to the image


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_portrait_keeps_the_head_a_centre_crop_cuts_off():
    """Issue 12: a full-body portrait's face lies outside its centre square. The training image keeps it, and
    the face the detector finds again in the stored training image is where the stored box says."""
    from realisid.train.prepare import PrepareOptions, build_sample, make_analyzer

    rgb = train_synthetic.portrait(np.random.default_rng(3))
    analyzer = make_analyzer("embedded")
    tensors, _ = build_sample(rgb, analyzer, PrepareOptions(size=256, detect_size=256, min_face=8, hint_size=0))
    again = [f for f in analyzer.analyze(tensors["image"]) if f.score >= 0.9]
    assert len(again) == 1
    assert _iou(again[0].square_box() / 256, tensors["box"]) > 0.7


def test_parallel_prepare_shards_are_disjoint_and_together_the_whole_cache(images, cache, tmp_path):
    """`--num-shards 2 --shard-index i`: two processes' caches split the input by key, and fit's dataset over
    both caches holds every sample of the one-process cache."""
    from realisid.train.data import CachedFaceDataset

    folder, _ = images
    parts = []
    for index in range(2):
        out = tmp_path / f"part{index}"
        assert main(["prepare", "--images", str(folder), "--out", str(out), "--num-shards", "2",
                     "--shard-index", str(index), *ARGS]) == 0
        parts.append(out)
    keys = [{json.loads(line)["key"] for line in (p / "manifest.jsonl").read_text().splitlines()}
            | {json.loads(line)["key"] for line in (p / "skipped.jsonl").read_text().splitlines()} for p in parts]
    whole = {json.loads(line)["key"] for line in (cache / "manifest.jsonl").read_text().splitlines()}
    whole |= {json.loads(line)["key"] for line in (cache / "skipped.jsonl").read_text().splitlines()}
    assert not keys[0] & keys[1] and keys[0] | keys[1] == whole and keys[0] and keys[1]
    both = CachedFaceDataset(parts, 32)
    one = CachedFaceDataset(cache, 32)
    assert len(both) == len(one) == KEPT
    assert sorted(both[i]["caption"] for i in range(KEPT)) == sorted(one[i]["caption"] for i in range(KEPT))
    assert main(["prepare", "--images", str(folder), "--out", str(tmp_path / "bad"), "--num-shards", "2",
                 "--shard-index", "2", *ARGS]) == 2  # refused, nothing written
    assert not (tmp_path / "bad").exists()
    assert main(["prepare", "--images", str(folder), "--out", str(tmp_path / "bad"), "--num-shards", "0", *ARGS]) == 2
    assert not (tmp_path / "bad").exists()
