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
