"""Frozen pre-computation (realisid/train/latents.py): `encode-latents` stores the VAE latents beside the cache,
`fit` reads them instead of running the VAE, and trains exactly as it would have without them."""

import pytest
import torch

from realisid.train import latents
from realisid.train.cli import main
from realisid.train.data import collate, to_device
from realisid.train.loop import Trainer
from tests.helpers import tiny_host_models as tiny
from tests.helpers import train_synthetic


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return train_synthetic.training_env(tmp_path_factory.mktemp("latents"))


@pytest.fixture(scope="module")
def stored(env):
    root, base, _ = env
    assert main(["encode-latents", "--base", str(base), "--cache", str(root / "cache"), "--cpu", "--no-progress",
                 "--batch-size", "4"]) == 0
    return latents.store_path(root / "cache", latents.base_key(base))


def test_the_store_holds_each_samples_vae_latent(env, stored, tmp_path):
    root, base, _ = env
    trainer = Trainer(train_synthetic.train_config(env, tmp_path, cache_latents=False))
    store = latents.read_store(root / "cache", latents.base_key(base))
    assert stored.is_file() and len(store) == len(trainer.dataset) == len(trainer._latent_cache)
    for index in (0, len(trainer.dataset) - 1):  # encoded alone here, in a batch of 4 by the command
        item = to_device(collate([trainer.dataset[index]]), "cpu")  # what a training step feeds the VAE
        expected = trainer.host.encode_latents(item["image"])[0]
        # float32 convolutions of a batch of 4 and of 1 differ in the last bits (measured: 1.1e-5 at most)
        torch.testing.assert_close(store[trainer.dataset.rows[index][1]["file"]], expected, atol=5e-5, rtol=1e-3)


def test_fit_reads_the_store_and_trains_as_without_it(env, stored, tmp_path, monkeypatch):
    plain = Trainer(train_synthetic.train_config(env, tmp_path / "plain", steps=3, cache_latents=False))
    plain._latent_cache = {}  # the VAE for every batch, as before the store existed
    reference = plain.fit()
    trainer = Trainer(train_synthetic.train_config(env, tmp_path / "stored", steps=3, cache_latents=False))

    def no_vae(images):
        raise AssertionError("the VAE ran although every latent is stored")

    monkeypatch.setattr(trainer.host, "encode_latents", no_vae)
    assert trainer.fit() == pytest.approx(reference, rel=1e-4, abs=1e-6)


def test_a_store_of_another_base_is_not_read(env, stored, tmp_path):
    root, _, _ = env
    other = tiny.write_checkpoint(tmp_path / "other_base.safetensors", "sdxl", seed=11)
    trainer = Trainer(train_synthetic.train_config(env, tmp_path / "fit", base=str(other)))
    assert trainer._latent_cache == {}  # keyed by the base file: its VAE and latent format made them
    assert latents.base_key(other) != stored.stem


def test_encode_text_stores_each_caption_and_fit_trains_on_it_without_the_text_encoders(tmp_path, monkeypatch):
    """encode-text: every distinct caption (and the empty one of condition dropout) as the host encodes it; a fit
    then never runs the text encoders and trains as without the store."""
    env = train_synthetic.training_env(tmp_path / "env")
    root, base, _ = env
    reference = Trainer(train_synthetic.train_config(env, tmp_path / "plain", steps=3)).fit()
    assert main(["encode-text", "--base", str(base), "--cache", str(root / "cache"), "--cpu", "--no-progress"]) == 0
    trainer = Trainer(train_synthetic.train_config(env, tmp_path / "stored", steps=3))
    captions = {row.get("caption", "") for _, row in trainer.dataset.rows} | {""}
    assert trainer.host.stored_texts is not None and len(trainer.host.stored_texts) == len(captions) > 2
    fresh = Trainer(train_synthetic.train_config(env, tmp_path / "fresh", steps=1)).host
    fresh.stored_texts = None
    for caption in captions:  # the stored outputs are the text encoders' own
        context, pooled = trainer.host.stored_texts.get(caption)
        want_context, want_pooled = fresh.encode_caption(caption)
        assert torch.equal(context, want_context) and torch.equal(pooled, want_pooled)
    assert trainer.host.stored_texts.get("a caption nobody wrote") is None

    def no_text_encoder(*args, **kwargs):
        raise AssertionError("the text encoders ran although every caption is stored")

    monkeypatch.setattr(trainer.host.clip, "encode_from_tokens", no_text_encoder)
    assert trainer.fit() == pytest.approx(reference, rel=1e-5, abs=1e-7)


def test_encode_identity_stores_the_clip_tokens_and_fit_trains_on_them_without_clip_vision(tmp_path, monkeypatch):
    """encode-identity (identity space clip): each sample's CLIP-vision tokens as the host encodes its face crop,
    read by the dataset by file name; a fit then never runs CLIP vision for a training batch and trains as
    without the store, and a cache without a store (a held-out one) still encodes."""
    env = train_synthetic.training_env(tmp_path / "env")
    root, base, vision = env
    reference = Trainer(train_synthetic.train_config(env, tmp_path / "plain", steps=3)).fit()
    assert main(["encode-identity", "--base", str(base), "--clip-vision", str(vision), "--cache",
                 str(root / "cache"), "--cpu", "--no-progress", "--batch-size", "4"]) == 0
    trainer = Trainer(train_synthetic.train_config(env, tmp_path / "stored", steps=3))
    assert trainer.dataset.identity_key == latents.base_key(vision)
    for index in (0, len(trainer.dataset) - 1):  # encoded in batches of 4 by the command, alone here
        item = trainer.dataset[index]
        expected = trainer.host.encode_identity_clip(item["face_crop"][None])[0]
        torch.testing.assert_close(item["identity"], expected, atol=5e-5, rtol=1e-3)
    plain_dataset = Trainer(train_synthetic.train_config(env, tmp_path / "plain2", steps=1,
                                                         identity_space="embedding")).dataset
    assert "identity" not in plain_dataset[0]  # another identity space never reads the store

    def no_clip_vision(face_crops):
        raise AssertionError("CLIP vision ran although every identity source is stored")

    monkeypatch.setattr(trainer.host, "encode_identity_clip", no_clip_vision)
    assert trainer.fit() == pytest.approx(reference, rel=1e-4, abs=1e-6)
