"""The trainer under `accelerate launch` with 2 CPU processes (gloo DDP), no code change: weights stay equal on
both ranks, data is disjoint, ranks draw different noise, and a run stopped and resumed ends with the parameters
of the uninterrupted run (issue 12). Two launches, about a minute on a quiet 2-core machine; REALISID_SKIP_DDP=1
skips it (see docs/training.md)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch

from tests.helpers import host, train_synthetic

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("REALISID_SKIP_DDP") == "1",
                                                   reason="REALISID_SKIP_DDP=1 is set")]

LAUNCHED = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    from tests.helpers import host
    host.bootstrap()
    from tests.helpers import tiny_host_models as tiny
    tiny.register_tiny_families()
    import safetensors.torch
    import torch
    from realisid.train.config import TrainConfig
    from realisid.train.loop import Trainer
    cfg = TrainConfig(**json.loads(sys.argv[1]))
    trainer = Trainer(cfg)
    seen = [trainer._batch(step)["index"] for step in range(2)]
    draws = []
    compute_loss = trainer.compute_loss

    def recording(batch, generator):  # the first noise values this micro-step draws, then the real step
        probe = torch.Generator()
        probe.set_state(generator.get_state())
        draws.append(torch.randn(8, generator=probe).tolist())
        return compute_loss(batch, generator)

    trainer.compute_loss = recording
    losses = trainer.fit()
    acc = trainer.accelerator
    rank = acc.process_index
    params = {{k: v.detach().cpu().contiguous() for k, v in trainer.model.nets.state_dict().items()}}
    safetensors.torch.save_file(params, f"{{cfg.out}}/params{{rank}}.safetensors")
    with open(f"{{cfg.out}}/rank{{rank}}.json", "w") as f:
        json.dump({{"num_processes": acc.num_processes, "type": str(acc.distributed_type), "losses": losses,
                   "batches": seen, "draws": draws}}, f)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script, cfg: dict) -> list[dict]:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "COMFYUI_DIR": str(host.comfyui_dir())}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(script), json.dumps(cfg)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = cfg["out"]
    ranks = []
    for r in (0, 1):
        rank = json.loads(open(f"{out}/rank{r}.json").read())
        rank["params"] = safetensors.torch.load_file(f"{out}/params{r}.safetensors")
        ranks.append(rank)
    return ranks


def test_two_process_ddp_on_cpu_resumes_exactly(tmp_path):
    root, base, _ = train_synthetic.training_env(tmp_path, people=4)
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED.format(repo=str(host.REPO)))
    cfg = {"base": str(base), "cache": str(root / "cache"), "out": str(tmp_path / "full"),
           "identity_space": "embedding", "steps": 4, "batch_size": 1, "lr": 1e-3, "crop_size": 4,
           "projector": train_synthetic.TINY_PROJECTOR, "save_every": 2, "log_every": 1, "ema": 0.5,
           "drop_image": 0.3, "drop_text": 0.3, "drop_both": 0.2, "workers": 0, "progress": False}
    full = _launch(script, cfg)
    assert all(r["num_processes"] == 2 and r["type"].endswith("MULTI_CPU") for r in full)
    for key, value in full[0]["params"].items():  # gradients were all-reduced
        torch.testing.assert_close(full[1]["params"][key], value, rtol=0, atol=1e-7)
    assert full[0]["losses"] == pytest.approx(full[1]["losses"], rel=1e-6)  # the logged loss is the rank mean
    assert not set(map(tuple, full[0]["batches"])) & set(map(tuple, full[1]["batches"]))  # disjoint data
    for a, b in zip(full[0]["draws"], full[1]["draws"], strict=True):  # the ranks' noise differs at every step
        assert a != pytest.approx(b, abs=1e-3)

    resumed = _launch(script, {**cfg, "out": str(tmp_path / "resumed"),
                               "resume": str(tmp_path / "full" / "state" / "step-0000002")})
    for rank in (0, 1):
        assert resumed[rank]["draws"] == full[rank]["draws"][2:]  # each rank continues its own stream
        assert resumed[rank]["losses"] == pytest.approx(full[rank]["losses"][2:], rel=0, abs=1e-6)
        for key, value in full[rank]["params"].items():
            torch.testing.assert_close(resumed[rank]["params"][key], value, rtol=0, atol=1e-6)
    ema = [safetensors.torch.load_file(str(tmp_path / d / "realisid-final.safetensors")) for d in ("full", "resumed")]
    for key, value in ema[0].items():  # the EMA (the main file) resumed too
        torch.testing.assert_close(ema[1][key], value, rtol=0, atol=1e-6)
