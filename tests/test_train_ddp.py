"""The trainer under `accelerate launch` with 2 CPU processes (gloo DDP), no code change. ~15 s on a quiet
2-core machine; REALISID_SKIP_DDP=1 skips it (see docs/training.md)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from realisid.train import sources
from realisid.train.prepare import PrepareOptions, make_analyzer, prepare_cache
from tests.helpers import host, train_synthetic
from tests.helpers import tiny_host_models as tiny

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("REALISID_SKIP_DDP") == "1",
                                                   reason="REALISID_SKIP_DDP=1 is set")]

LAUNCHED = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    from tests.helpers import host
    host.bootstrap()
    from tests.helpers import tiny_host_models as tiny
    tiny.register_tiny_families()
    import torch
    from realisid.train.loop import TrainConfig, Trainer
    cfg = TrainConfig(**json.loads(sys.argv[1]))
    trainer = Trainer(cfg)
    seen = [trainer._batch(step)["index"] for step in range(2)]
    losses = trainer.fit()
    acc = trainer.accelerator
    checksum = float(sum(p.detach().double().sum() for p in trainer.model.nets.parameters()))
    with open(f"{{cfg.out}}/rank{{acc.process_index}}.json", "w") as f:
        json.dump({{"num_processes": acc.num_processes, "type": str(acc.distributed_type), "losses": losses,
                   "checksum": checksum, "batches": seen}}, f)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_on_cpu(tmp_path):
    tiny.register_tiny_families()
    base = tiny.write_checkpoint(tmp_path / "base.safetensors", "sdxl")
    train_synthetic.write_dataset(tmp_path / "images", people=4)
    prepare_cache(sources.from_folder(tmp_path / "images"), make_analyzer("embedded"), tmp_path / "cache",
                  PrepareOptions(size=64, detect_size=256, min_face=8, hint_size=0), progress=False)
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED.format(repo=str(host.REPO)))
    cfg = {"base": str(base), "cache": str(tmp_path / "cache"), "out": str(tmp_path / "out"),
           "identity_space": "embedding", "steps": 2, "batch_size": 1, "lr": 1e-3, "crop_size": 4,
           "projector": {"dim": 32, "depth": 1, "dim_head": 16, "heads": 2, "num_queries": 4, "ff_mult": 2},
           "save_every": 0, "log_every": 1}
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "COMFYUI_DIR": str(host.comfyui_dir())}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(script), json.dumps(cfg)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["num_processes"] == 2 and r["type"].endswith("MULTI_CPU") for r in ranks)
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)  # gradients were all-reduced
    assert ranks[0]["losses"] == pytest.approx(ranks[1]["losses"], rel=1e-6)  # the logged loss is the rank mean
    assert not set(map(tuple, ranks[0]["batches"])) & set(map(tuple, ranks[1]["batches"]))  # disjoint data
