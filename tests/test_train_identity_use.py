"""Identity use (realisid/train/identity_use.py): own vs another's identity on the same noise, through the
trainer's loss, on tiny models."""

import pytest
import torch

from realisid.train import identity_use, validation
from realisid.train.loop import Trainer
from tests.helpers import train_synthetic


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(env, a responsive file, the same file with a projector that ignores its input). A few steps on tiny models
    move the loss by about a float32 ulp when the identity changes, so the identity tokens (the projector's output
    norm) and the branches' output layers (zero-initialised ControlNet convs) are scaled up."""
    root = tmp_path_factory.mktemp("use")
    env = train_synthetic.training_env(root)
    trainer = Trainer(train_synthetic.train_config(env, root / "fit", steps=3, identity_space="embedding",
                                                   batch_size=2, lr=1e-2))
    trainer.fit()
    with torch.no_grad():
        for name, p in trainer.model.nets.named_parameters():
            if "zero_convs" in name or "middle_block_out" in name:
                p.mul_(100.0)
        trainer.model.nets.projector.norm_out.weight.mul_(30.0)
    trained = root / "responsive.safetensors"
    trainer.save_model(trained)
    with torch.no_grad():  # every layer's weight zero: the identity tokens no longer depend on the embedding
        for name, p in trainer.model.nets.projector.named_parameters():
            if name.endswith("weight") and p.ndim > 1:
                p.zero_()
    blind = root / "blind.safetensors"
    trainer.save_model(blind)
    return env, trained, blind


def _measure(env, path):
    root, base, _ = env
    return identity_use.measure(str(path), str(base), [str(root / "cache")], n=4, batch_size=2)


def test_a_model_blind_to_the_identity_scores_the_same_with_either(models):
    """Only the identity is swapped: same noise, timestep, caption and box, so a blind projector gives equal losses."""
    env, _, blind = models
    use = _measure(env, blind)
    assert use.n == 4 and use.face_mse_own > 0
    assert use.face_mse_own == use.face_mse_other  # bit for bit: nothing but the identity differs
    assert use.win_rate == 0.0  # ties are not wins


def test_a_trained_model_responds_to_the_swap(models):
    env, trained, _ = models
    use = _measure(env, trained)
    assert use.face_mse_own != use.face_mse_other  # the swapped identity reaches the face-box loss
    assert use.as_dict()["gap"] == pytest.approx(1 - use.face_mse_own / use.face_mse_other)


def test_every_face_gets_another_face_identity():
    for b in (2, 3, 8):
        order = validation.other_identity_order(b)
        assert sorted(order) == list(range(b)) and all(i != j for i, j in enumerate(order))
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        validation.other_identity_order(1)


@pytest.fixture(scope="module")
def held_out_cache(models):
    """A second cache of other synthetic people (not the training cache: its sample indices collide with the
    training set's, so held-out latents must not come from the training store)."""
    from realisid.train import sources
    from realisid.train.prepare import PrepareOptions, make_analyzer, prepare_cache

    (root, _, _), _, _ = models
    train_synthetic.write_dataset(root / "val_images", people=3, seed=11)
    prepare_cache(sources.from_folder(root / "val_images"), make_analyzer("embedded"), root / "val_cache",
                  PrepareOptions(size=64, detect_size=256, min_face=8, hint_size=0), progress=False)
    return root / "val_cache"


def test_fit_validates_on_the_held_out_faces_without_changing_the_training(models, held_out_cache, tmp_path):
    """--val-cache: identity use on the live weights every --val-every steps, in OUT/validation.jsonl; the run's
    losses are those of the same run without validation (it draws no training noise, leaves train mode on), and
    the last figure is what a fresh evaluation of the saved file gives on the same held-out batches."""
    import json

    env = models[0]
    plain = Trainer(train_synthetic.train_config(env, tmp_path / "plain", steps=3, identity_space="embedding",
                                                 batch_size=2, lr=1e-2)).fit()
    cfg = train_synthetic.train_config(env, tmp_path / "val", steps=3, identity_space="embedding", batch_size=2,
                                       lr=1e-2, val_cache=[str(held_out_cache)], val_every=3, val_n=3)
    trainer = Trainer(cfg)
    assert trainer.fit() == plain
    lines = [json.loads(x) for x in (tmp_path / "val" / "validation.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [3] and lines[0]["n"] == 3
    assert [len(b["index"]) for b in trainer.held_out.batches()] == [3]  # no batch of one: nobody to swap with
    fresh = Trainer(train_synthetic.train_config(env, tmp_path / "fresh", steps=1, identity_space="embedding",
                                                 batch_size=2, init=str(tmp_path / "val" / "realisid-final.safetensors"),
                                                 val_cache=[str(held_out_cache)], val_n=3))
    again = fresh.validate(3)
    for key in ("face_mse_own", "face_mse_other"):
        assert again[key] == pytest.approx(lines[0][key], rel=1e-5)


def test_validation_settings_are_checked(models, tmp_path):
    with pytest.raises(ValueError, match="--val-every needs --val-cache"):
        train_synthetic.train_config(models[0], tmp_path, val_every=5).validate()


def test_sampled_faces_are_read_back_as_realisid_evaluate_reads_them(models, held_out_cache):
    """sampled_faces_of against a direct computation: photos of held-out people given as their own 'samples' are
    found in their boxes (IoU 1) with cosine 1 to their own embedding; with each other's embeddings the cosine is
    the mean of those pairs (the synthetic people look alike: 0.997); a faceless image counts as missing."""
    import cv2
    import numpy as np

    from realisid.faces.analyzer import cosine
    from realisid.faces.embedded import SPACE, EmbeddedAnalyzer
    from realisid.train.prepare import make_analyzer

    (root, _, _), _, _ = models
    analyzer = make_analyzer("embedded", min_score=0.4)
    paths = sorted((root / "val_images").glob("person*.png"))  # one face each
    images = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])
    faces = [EmbeddedAnalyzer(min_confidence=0.4).analyze(img)[0] for img in images]
    boxes = np.stack([f.square_box() / [*f.image_size, *f.image_size] for f in faces])
    own = np.stack([f.embedding for f in faces])
    figures = validation.sampled_faces_of(images, boxes, own, SPACE, analyzer)
    assert figures.n == len(paths) and figures.found == 1.0
    assert figures.iou == pytest.approx(1.0, abs=1e-4) and figures.identity == pytest.approx(1.0, abs=1e-4)
    swapped = validation.sampled_faces_of(images, boxes, np.roll(own, 1, axis=0), SPACE, analyzer)
    direct = np.mean([cosine(own[(i - 1) % len(own)], own[i]) for i in range(len(own))])
    assert swapped.identity == pytest.approx(direct, abs=1e-6) and swapped.identity < figures.identity
    blank = validation.sampled_faces_of(np.zeros_like(images[:1]), boxes[:1], own[:1], SPACE, analyzer)
    assert blank.found == 0.0 and blank.iou == 0.0 and np.isnan(blank.identity)


def _plain_losses_and_sampling_trainer(env, held_out_cache, out, every: int):
    """(the losses of a 2-step run without validation, a trainer for the same run sampling 2 held-out faces every
    `every` steps)."""
    kw = dict(steps=2, identity_space="embedding", batch_size=2, lr=1e-2)
    plain = Trainer(train_synthetic.train_config(env, out / "plain", **kw)).fit()
    cfg = train_synthetic.train_config(env, out / "val", val_cache=[str(held_out_cache)], val_sample_every=every,
                                       val_sample_n=2, val_backend="embedded", sample_steps=2, **kw)
    return plain, Trainer(cfg)


def test_fit_samples_the_held_out_faces_and_reads_them_back(models, held_out_cache, tmp_path, monkeypatch):
    """--val-sample-every: the first held-out faces sampled with the live weights (the tiny model draws no face, so
    the real backend finds none), figures in validation.jsonl; the training losses are unchanged. With a backend
    that reports each held-out face where it was asked for, with its own embedding, the figures are perfect: the
    boxes and references come from the held-out samples that were sampled."""
    import json

    from realisid.faces.record import FaceRecord

    plain, trainer = _plain_losses_and_sampling_trainer(models[0], held_out_cache, tmp_path, every=2)
    assert trainer.fit() == plain
    (line,) = [json.loads(x) for x in (tmp_path / "val" / "validation.jsonl").read_text().splitlines()]
    assert line["step"] == 2 and line["sample_n"] == 2 and 0.0 <= line["sample_found"] <= 1.0

    held = trainer.held_out.dataset

    class Oracle:  # each image's face exactly at the held-out box, with the held-out embedding
        calls = 0

        def analyze(self, image):
            item = held[Oracle.calls]
            Oracle.calls += 1
            h, w = image.shape[:2]
            box = item["box"].numpy() * [w, h, w, h]
            return [FaceRecord(box=box, score=1.0, kps=np.zeros((5, 2)), embedding=item["embedding"].numpy(),
                               space=held.rows[0][1]["space"], image_size=(w, h))]

    import numpy as np

    items, space, _ = trainer._val_faces
    trainer._val_faces = (items, space, Oracle())
    figures = trainer.validate_sampled(2)
    assert figures["sample_found"] == 1.0 and figures["sample_iou"] == pytest.approx(1.0, abs=1e-5)
    assert figures["sample_identity"] == pytest.approx(1.0, abs=1e-5) and Oracle.calls == 2


def test_sampled_validation_settings_are_checked(models, tmp_path):
    with pytest.raises(ValueError, match="--val-sample-every needs --val-cache"):
        train_synthetic.train_config(models[0], tmp_path, val_sample_every=5).validate()


def test_a_held_out_set_mixing_embedding_spaces_is_refused_at_start_up(models, held_out_cache, tmp_path):
    """The sampled validation compares embeddings of one space: a held-out cache whose first samples mix two
    spaces stops the run before its first step, naming --val-cache."""
    import json
    import shutil

    mixed = tmp_path / "mixed_cache"
    shutil.copytree(held_out_cache, mixed)
    rows = [json.loads(x) for x in (mixed / "manifest.jsonl").read_text().splitlines()]
    rows[1]["space"] = "another-space-64"
    (mixed / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = train_synthetic.train_config(models[0], tmp_path / "out", val_cache=[str(mixed)], val_sample_every=2,
                                       val_sample_n=2, val_backend="embedded", steps=2, identity_space="embedding")
    with pytest.raises(ValueError, match=r"--val-cache .*mixed_cache.*needs one embedding space in its first 2 "
                                         r"samples, found \['another-space-64', "):
        Trainer(cfg)


def test_a_failing_sampled_validation_is_logged_and_the_run_goes_on(models, held_out_cache, tmp_path, caplog):
    plain, trainer = _plain_losses_and_sampling_trainer(models[0], held_out_cache, tmp_path, every=1)

    class Broken:
        def analyze(self, image):
            raise RuntimeError("backend crashed")

    items, space, _ = trainer._val_faces
    trainer._val_faces = (items, space, Broken())
    with caplog.at_level("ERROR", logger="realisid.train.loop"):
        assert trainer.fit() == plain  # both steps ran, with the same losses
    failures = [r for r in caplog.records if "sampled validation at step" in r.getMessage()]
    assert [r.getMessage() for r in failures] == ["sampled validation at step 1 failed",
                                                  "sampled validation at step 2 failed"]
    assert not (tmp_path / "val" / "validation.jsonl").exists()


def test_a_validation_backend_that_cannot_load_stops_the_run_at_start_up(models, held_out_cache, tmp_path):
    empty = tmp_path / "no_models"
    empty.mkdir()
    cfg = train_synthetic.train_config(models[0], tmp_path / "out", val_cache=[str(held_out_cache)],
                                       val_sample_every=2, val_sample_n=2, val_backend="insightface",
                                       val_insightface_root=str(empty), steps=2, identity_space="embedding")
    from realisid.faces import FaceModelsMissingError

    with pytest.raises(FaceModelsMissingError, match=rf"'antelopev2' not found: folder {empty}/models/antelopev2/"):
        Trainer(cfg)
    assert not (tmp_path / "out" / "state").exists()  # nothing trained
