"""The trainer's data path: batch order cost, compact items, caption contexts, the DataLoader (issue 12)."""

import os
import signal
import time

import pytest
import torch

from realisid.faces.render import render_face_hint
from realisid.train import data
from realisid.train.data import batch_indices
from realisid.train.host import FrozenHost
from tests.helpers import train_synthetic


def test_batch_order_draws_one_permutation_per_epoch_not_per_sample(monkeypatch):
    """At n = 2 M a fresh randperm(n) per sample cost ~23 ms a sample; the order itself must not change."""
    n, seed, batch, world = 50, 12345, 5, 2
    reference = []  # the seeded-permutation definition, written out
    for step in range(10):
        for rank in range(world):
            start = (step * world + rank) * batch
            perms = {e: torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + e)) for e in (0, 1)}
            reference.append([int(perms[p // n][p % n]) for p in range(start, start + batch)])
    calls = []
    real = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: calls.append(a) or real(*a, **k))
    got = [batch_indices(n, seed, step, batch, rank, world) for step in range(10) for rank in range(world)]
    assert got == reference  # 2 epochs of 50 samples
    assert len(calls) <= 2


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return train_synthetic.training_env(tmp_path_factory.mktemp("data"), people=4)


def test_items_stay_uint8_on_the_host_and_become_the_float_hint_on_the_device(env):
    """No per-step float work at full resolution on the host: image, mask and hint travel as uint8."""
    import safetensors.numpy

    root, _, _ = env
    dataset = data.CachedFaceDataset(root / "cache", 32)
    item = dataset[1]
    assert {k: item[k].dtype for k in ("image", "mask", "hint")} == dict.fromkeys(("image", "mask", "hint"), torch.uint8)
    stored = safetensors.numpy.load_file(str(root / "cache" / dataset.rows[1][1]["file"]))
    batch = data.to_device(data.collate([item]), "cpu")
    expected_hint = torch.from_numpy(render_face_hint(stored["landmarks"] * 32, 32)).permute(2, 0, 1)
    torch.testing.assert_close(batch["hint"][0], expected_hint, rtol=0, atol=0)
    torch.testing.assert_close(batch["image"][0], torch.from_numpy(stored["image"]).permute(2, 0, 1) / 255.0)
    assert batch["mask"].dtype == torch.float32 and batch["mask"].sum() == float(stored["mask"].sum())


def test_loader_with_workers_yields_the_step_batches_from_a_resumed_position(env):
    root, _, _ = env
    dataset = data.CachedFaceDataset(root / "cache", 32)
    sampler = data.StepBatches(len(dataset), 3, start=5, batch=2, rank=1, world=2)
    loader = iter(data.make_loader(dataset, sampler, workers=2, prefetch=2, pin_memory=False))
    for micro in range(5, 9):
        got = next(loader)
        idx = batch_indices(len(dataset), 3, micro, 2, 1, 2)
        want = data.collate([dataset[i] for i in idx])
        assert got["index"] == idx and got["caption"] == want["caption"]
        for key in data.TENSOR_KEYS:
            assert torch.equal(got[key], want[key]), key
    for worker in loader._workers:  # a cluster's SIGTERM reaches the workers too: they outlive the final save
        os.kill(worker.pid, signal.SIGTERM)
    time.sleep(1.0)
    assert next(loader)["index"] == batch_indices(len(dataset), 3, 9, 2, 1, 2)
    del loader


def _caption(chunks: int) -> str:
    return " ".join(["astronaut"] * (75 * (chunks - 1) + 10))  # 75 content tokens per CLIP chunk


def test_caption_contexts_are_capped_not_repeated_to_the_lcm(env):
    """Captions of 1..5 chunks used to be repeated to lcm(1..5) = 60 chunks; capped at 3 they take lcm(1..3) =
    6 at most, and each sample's context is its own (capped) caption's tokens, repeated whole (attention-exact)."""
    _, base, _ = env
    host = FrozenHost(str(base), torch.device("cpu"), max_text_chunks=3)
    captions = [_caption(k) for k in range(1, 6)]
    alone = [host.encode_caption(c)[0] for c in captions]
    chunk = host.chunk_tokens()
    assert chunk == 77 and [a.shape[1] // chunk for a in alone] == [1, 2, 3, 4, 5]
    context, y = host.encode_captions(captions, (64, 64))
    assert context.shape[1] == 6 * chunk and y.shape[0] == 5
    for row, own in zip(context, alone, strict=True):
        capped = own[0, : 3 * chunk]
        torch.testing.assert_close(row, capped.repeat(6 * chunk // capped.shape[0], 1), rtol=0, atol=0)
    short, _ = host.encode_captions(captions[:2], (64, 64))
    assert short.shape[1] == 2 * chunk  # a batch of short captions is not padded further


def test_a_compact_cache_gives_the_same_items_in_a_fraction_of_the_disk(env, tmp_path):
    """prepare --compact: PNG-encoded images, mask and hint derived when read; every item equals the full cache's
    bit for bit (the hint is rendered at the training size either way), and encode-latents reads its images."""
    from realisid.train import latents, sources
    from realisid.train.prepare import PrepareOptions, make_analyzer, prepare_cache

    root, _, _ = env
    full_cache, compact_cache = tmp_path / "full", tmp_path / "compact"
    for out, compact in ((full_cache, False), (compact_cache, True)):
        opts = PrepareOptions(size=64, detect_size=256, min_face=8, hint_size=0 if compact else 64, compact=compact)
        prepare_cache(sources.from_folder(root / "images"), make_analyzer("embedded"), out, opts, progress=False)
    full, compact = data.CachedFaceDataset(full_cache, 64), data.CachedFaceDataset(compact_cache, 64)
    assert len(full) == len(compact) > 0
    for i in range(len(full)):
        a, b = full[i], compact[i]
        for key in data.TENSOR_KEYS:
            assert torch.equal(a[key], b[key]), (i, key)
    import safetensors

    with safetensors.safe_open(str(compact_cache / compact.rows[0][1]["file"]), framework="np") as f:
        assert not {"image", "mask", "hint", "face_crop"} & set(f.keys())
    size = {c: sum(p.stat().st_size for p in (c / "samples").iterdir()) for c in (full_cache, compact_cache)}
    assert size[compact_cache] < 0.6 * size[full_cache], size
    assert torch.equal(latents._cached_image(compact_cache, compact.rows[0][1]["file"]), compact[0]["image"])
