"""Cluster features of the trainer: LR warm-up and schedule, the projector's own LR, checkpoint rotation, the
save on SIGTERM and the final save, bf16 export."""

import math
import signal

import pytest
import safetensors.torch
import torch
from torch import nn

from realisid import checkpoint
from realisid.train import outputs
from realisid.train.loop import Trainer, latest_state
from realisid.train.optim import lr_factor, param_groups, set_lrs
from tests.helpers import train_synthetic


def test_lr_warmup_then_schedules():
    assert [lr_factor(s, 10, warmup=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    # cosine from 1 at the end of the warm-up to min_ratio at the last step (step 9 of 10)
    cos = [lr_factor(s, 10, warmup=4, schedule="cosine", min_ratio=0.1) for s in range(4, 10)]
    want = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(6)]
    assert cos == pytest.approx(want)
    assert [lr_factor(s, 5, schedule="linear") for s in range(5)] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    with pytest.raises(ValueError):
        lr_factor(0, 10, schedule="step")


class _Nets(nn.Module):
    def __init__(self):
        super().__init__()
        self.local = nn.Linear(4, 4)
        self.projector = nn.Linear(4, 4)


def test_projector_has_its_own_lr_group():
    """Adam's first step moves every weight by about its LR: the projector's and the branches' differ."""
    nets = _Nets()
    opt = torch.optim.AdamW(param_groups(nets, {"branches": 1.0, "projector": 1.0}, weight_decay=0.0))
    set_lrs(opt, {"branches": 1e-3, "projector": 1e-2}, factor=0.5)
    before = {k: v.clone() for k, v in nets.state_dict().items()}
    x = torch.randn(3, 4)
    (nets.local(x).sum() + nets.projector(x).sum()).backward()
    opt.step()
    moved = {k: (v - before[k]).abs() for k, v in nets.state_dict().items()}
    torch.testing.assert_close(moved["local.weight"], torch.full((4, 4), 5e-4), rtol=1e-3, atol=0)
    torch.testing.assert_close(moved["projector.weight"], torch.full((4, 4), 5e-3), rtol=1e-3, atol=0)
    assert [g["name"] for g in opt.param_groups] == ["branches", "projector"]


def test_rotation_keeps_the_newest(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / "state" / f"step-{step:07d}").mkdir(parents=True)
        (tmp_path / f"realisid-step{step:07d}.safetensors").write_bytes(b"x")
        (tmp_path / f"realisid-step{step:07d}-raw.safetensors").write_bytes(b"x")
    (tmp_path / "realisid-final.safetensors").write_bytes(b"x")
    outputs.rotate(tmp_path, keep=2)
    assert [p.name for p in outputs.state_dirs(tmp_path)] == ["step-0000004", "step-0000006"]
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "realisid-final.safetensors", "realisid-step0000004-raw.safetensors", "realisid-step0000004.safetensors",
        "realisid-step0000006-raw.safetensors", "realisid-step0000006.safetensors"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return train_synthetic.training_env(tmp_path_factory.mktemp("outputs"), people=4)


def test_sigterm_saves_and_stops_then_resume_rotates_and_exports_bf16(env, tmp_path):
    kw = dict(steps=6, save_every=2, keep_last=2, export_dtype="bf16", identity_space="embedding", batch_size=1)
    trainer = Trainer(train_synthetic.train_config(env, tmp_path, **kw))
    after_step = trainer._after_step

    def preempt_at_3(loss, parts, start):
        after_step(loss, parts, start)
        if trainer.progress.step == 3:
            signal.raise_signal(signal.SIGTERM)  # the handler only sets a flag: the step ends, the state is saved

    trainer._after_step = preempt_at_3
    handler = signal.getsignal(signal.SIGTERM)
    assert len(trainer.fit()) == 3
    assert signal.getsignal(signal.SIGTERM) is handler  # the trainer's handler is gone again
    assert latest_state(tmp_path).endswith("step-0000003")
    assert [p.name for p in outputs.state_dirs(tmp_path)] == ["step-0000002", "step-0000003"]
    stopped = tmp_path / "realisid-step0000003.safetensors"
    saved = safetensors.torch.load_file(str(stopped))
    live = trainer.model.nets.state_dict()
    assert all(v.dtype == torch.bfloat16 for v in saved.values())
    for key, value in live.items():
        assert torch.equal(saved[key], value.to(torch.bfloat16)), key
    assert checkpoint.load_realisid(str(stopped)).weight_dtype == torch.bfloat16  # the loader takes it
    assert not (tmp_path / "realisid-final.safetensors").exists()

    resumed = Trainer(train_synthetic.train_config(env, tmp_path, resume=latest_state(tmp_path), **kw))
    assert resumed.progress.step == 3 and len(resumed.fit()) == 3
    assert [p.name for p in outputs.state_dirs(tmp_path)] == ["step-0000004", "step-0000006"]
    assert sorted(p.name for p in outputs.step_files(tmp_path)) == ["realisid-step0000004.safetensors",
                                                                    "realisid-step0000006.safetensors"]
    final = checkpoint.load_realisid(str(tmp_path / "realisid-final.safetensors"))
    assert final.weight_dtype == torch.bfloat16


def test_a_run_without_periodic_saves_still_ends_resumable(env, tmp_path):
    Trainer(train_synthetic.train_config(env, tmp_path, steps=1, identity_space="embedding", batch_size=1)).fit()
    assert latest_state(tmp_path).endswith("step-0000001") and (tmp_path / "realisid-final.safetensors").is_file()
