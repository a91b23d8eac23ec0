"""Resuming: the EMA follows its parameters after accelerate's load (issue 12), the randomness is one stream per
rank and micro-step, and a resumed run reproduces the uninterrupted one (single process here; 2-process DDP in
test_train_ddp.py)."""

import numpy as np
import pytest
import torch
from accelerate import PartialState
from accelerate.checkpointing import load_custom_state, save_custom_state
from torch import nn

from realisid import checkpoint
from realisid.train.ema import EMA
from realisid.train.loop import Trainer
from realisid.train.rng import step_generator
from tests.helpers import train_synthetic


@pytest.fixture
def accelerate_state():
    return PartialState(cpu=True)  # accelerate's checkpoint helpers log through it


def test_ema_follows_its_parameters_device_and_dtype_after_an_accelerate_load(tmp_path, accelerate_state):
    """accelerate's load_custom_state loads with map_location="cpu"; on a GPU run the shadow then sat on the CPU
    and the next update failed. 'meta' stands in for the accelerator (no GPU here)."""
    saved = nn.Linear(3, 2)
    ema = EMA(saved, 0.9)
    ema.shadow = {k: v.double() for k, v in ema.shadow.items()}  # a state in another dtype than the params
    save_custom_state(ema, str(tmp_path), 0)
    on_device = EMA(nn.Linear(3, 2, device="meta"), 0.5)
    load_custom_state(on_device, str(tmp_path), 0)
    for name, p in on_device.module.named_parameters():
        assert on_device.shadow[name].device == p.device and on_device.shadow[name].dtype == torch.float32, name
    on_device.update()  # the step after a resume: no device mismatch
    assert on_device.decay == 0.9


def test_ema_state_round_trips_and_updates_like_the_formula(tmp_path, accelerate_state):
    module = nn.Linear(3, 2)
    ema = EMA(module, 0.75)
    with torch.no_grad():
        module.weight.add_(1.0)
    ema.update()
    save_custom_state(ema, str(tmp_path), 0)
    fresh = EMA(nn.Linear(3, 2), 0.1)
    load_custom_state(fresh, str(tmp_path), 0)
    torch.testing.assert_close(fresh.shadow["weight"], ema.shadow["weight"], rtol=0, atol=0)
    before = fresh.shadow["weight"].clone()
    fresh.update(module)
    torch.testing.assert_close(fresh.shadow["weight"], 0.75 * before + 0.25 * module.weight.detach())
    with pytest.raises(ValueError, match="does not match"):
        EMA(nn.Linear(4, 2), 0.9).load_state_dict({"decay": 0.9, "shadow": {"weight": before}})


def test_step_streams_differ_by_rank_and_step_and_repeat_exactly():
    draw = [[torch.randn(16, generator=step_generator(7, rank, step)) for step in range(3)] for rank in range(2)]
    again = torch.randn(16, generator=step_generator(7, 1, 2))
    assert torch.equal(again, draw[1][2])  # a pure function of (seed, rank, micro-step): nothing to save
    flat = [t for per_rank in draw for t in per_rank]
    for i in range(len(flat)):
        for j in range(i):
            assert not torch.allclose(flat[i], flat[j])
    assert not torch.equal(torch.randn(16, generator=step_generator(8, 0, 0)), draw[0][0])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return train_synthetic.training_env(tmp_path_factory.mktemp("resume"), people=4)


def test_resumed_run_reproduces_the_uninterrupted_run_with_ema_and_schedule(env, tmp_path):
    kw = dict(steps=4, save_every=2, drop_image=0.3, drop_text=0.3, drop_both=0.2, ema=0.9, lr_warmup=2,
              lr_schedule="cosine", projector_lr=3e-3, identity_space="embedding")
    full = Trainer(train_synthetic.train_config(env, tmp_path / "a", **kw)).fit()
    state = tmp_path / "a" / "state" / "step-0000002"
    resumed = Trainer(train_synthetic.train_config(env, tmp_path / "b", resume=str(state), **kw)).fit()
    assert len(full) == 4 and len(resumed) == 2
    np.testing.assert_allclose(resumed, full[2:], rtol=0, atol=1e-6)
    for name in ("realisid-final.safetensors", "realisid-final-raw.safetensors"):  # EMA and raw weights
        a = checkpoint.load_realisid(str(tmp_path / "a" / name)).nets.state_dict()
        b = checkpoint.load_realisid(str(tmp_path / "b" / name)).nets.state_dict()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_model_files_record_steps_and_training_time_across_a_resume(env, tmp_path):
    """Every model file names its steps, the wall time of all runs so far, the seed and the machine; a resumed
    run continues the time of the state it resumed (the model card's training table reads this)."""
    import json

    import safetensors

    from realisid.train.outputs import TRAINING_KEY

    def record(path):
        with safetensors.safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()[TRAINING_KEY])

    kw = dict(steps=2, save_every=1, log_every=1, identity_space="embedding", seed=4)
    Trainer(train_synthetic.train_config(env, tmp_path / "a", **kw)).fit()
    first, second = record(tmp_path / "a" / "realisid-step0000001.safetensors"), record(
        tmp_path / "a" / "realisid-step0000002.safetensors")
    assert (first["steps"], second["steps"], second["seed"]) == (1, 2, 4)
    assert 0 < first["seconds"] < second["seconds"] and "cores" in second["machine"]
    kw["steps"] = 3
    resume = str(tmp_path / "a" / "state" / "step-0000002")
    Trainer(train_synthetic.train_config(env, tmp_path / "a", resume=resume, **kw)).fit()
    third = record(tmp_path / "a" / "realisid-step0000003.safetensors")
    assert third["steps"] == 3 and third["seconds"] > second["seconds"]
    curve = [json.loads(line) for line in (tmp_path / "a" / "realisid.log.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [1, 2, 3]  # the resumed run appends its steps
    assert all(c["loss"] > 0 and c["face_mse"] >= 0 for c in curve)


def test_init_starts_from_a_realisid_file_and_refuses_one_of_another_shape(env, tmp_path):
    """--init: the branches start from the file (at learning rate 0 the next file equals it), with a fresh optimizer;
    a file built for another crop size is refused by name before training."""
    kw = dict(steps=2, identity_space="embedding")
    Trainer(train_synthetic.train_config(env, tmp_path / "a", **kw)).fit()
    first = tmp_path / "a" / "realisid-final.safetensors"
    Trainer(train_synthetic.train_config(env, tmp_path / "b", init=str(first), steps=1, lr=0.0, projector_lr=0.0,
                                         identity_space="embedding")).fit()
    a = checkpoint.load_realisid(str(first)).nets.state_dict()
    b = checkpoint.load_realisid(str(tmp_path / "b" / "realisid-final.safetensors")).nets.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    with pytest.raises(ValueError, match="crop_size"):
        Trainer(train_synthetic.train_config(env, tmp_path / "c", init=str(first), crop_size=2, **kw))


def test_8bit_adamw_trains_with_uint8_moments_and_resumes_exactly(env, tmp_path):
    """--optimizer adamw8bit (bitsandbytes, a dev requirement): the large tensors' Adam moments are uint8, the
    weights move, and a resumed run reproduces the uninterrupted one (its quantised state round-trips)."""
    pytest.importorskip("bitsandbytes")
    kw = dict(steps=4, save_every=2, identity_space="embedding", optimizer="adamw8bit", lr=1e-3)
    trainer = Trainer(train_synthetic.train_config(env, tmp_path / "a", **kw))
    before = {k: v.clone() for k, v in trainer.model.nets.state_dict().items()}
    full = trainer.fit()
    states = trainer.optimizer.optimizer.state.values()
    assert any(v.dtype == torch.uint8 for s in states for v in s.values() if torch.is_tensor(v))
    after = trainer.model.nets.state_dict()
    assert np.isfinite(full).all() and any(not torch.equal(before[k], after[k]) for k in before)
    state = tmp_path / "a" / "state" / "step-0000002"
    resumed = Trainer(train_synthetic.train_config(env, tmp_path / "b", resume=str(state), **kw)).fit()
    np.testing.assert_allclose(resumed, full[2:], rtol=0, atol=1e-6)
    a = checkpoint.load_realisid(str(tmp_path / "a" / "realisid-final.safetensors")).nets.state_dict()
    b = checkpoint.load_realisid(str(tmp_path / "b" / "realisid-final.safetensors")).nets.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
