"""What every Mini training stage shares: a resumable, seeded loop that logs its curve and its cost.

Resuming is exact: the state file holds the weights, the optimizer, the step and the wall time so far, and every
batch is drawn from a generator seeded by (stage seed, step), so no random state needs saving.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from realisid.machine import machine

log = logging.getLogger(__name__)



def step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(step)])


def init_like_torch(module: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """comfy ops skip weight init: give convs and linears PyTorch's default init, norms 1/0, deterministically."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, torch.nn.Conv2d | torch.nn.Linear):
                fan_in = sub.weight[0].numel()
                bound = 1.0 / fan_in**0.5
                sub.weight.copy_((torch.rand(sub.weight.shape, generator=generator) * 2 - 1) * bound * 3**0.5)
                if sub.bias is not None:
                    sub.bias.copy_((torch.rand(sub.bias.shape, generator=generator) * 2 - 1) * bound)
            elif isinstance(sub, torch.nn.GroupNorm | torch.nn.LayerNorm) and sub.weight is not None:
                sub.weight.fill_(1.0)
                sub.bias.zero_()
    return module


class ResumableRun:
    """`work/<name>.state.pt` (weights, optimizer, step, seconds) and `work/<name>.log.jsonl` (the curve)."""

    def __init__(self, work: str | os.PathLike, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 seed: int):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.name, self.model, self.optimizer, self.seed = name, model, optimizer, seed
        self.step, self.seconds = 0, 0.0
        self.state_path = self.work / f"{name}.state.pt"
        self.log_path = self.work / f"{name}.log.jsonl"
        if self.state_path.exists():
            self._load()

    def _load(self) -> None:
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        if state.get("seed") != self.seed:
            raise ValueError(f"{self.state_path} was trained with seed {state.get('seed')}, not {self.seed}: "
                             f"use another --work folder or the same seed")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        log.info("%s: resumed at step %d (%.0f s trained so far)", self.name, self.step, self.seconds)

    def save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                    "seconds": self.seconds, "seed": self.seed, "machine": machine()}, tmp)
        os.replace(tmp, self.state_path)  # never a half-written state file

    def run(self, steps: int, step_fn: Callable[[int], dict], save_every: int = 100, lr_at=None) -> None:
        """Run step_fn(step) -> {metric: float} until `steps` in total, saving every `save_every` steps."""
        if self.step >= steps:
            log.info("%s: already at step %d >= %d", self.name, self.step, steps)
            return
        bar = tqdm(total=steps, initial=self.step, desc=self.name, dynamic_ncols=True)
        with open(self.log_path, "a") as curve:
            while self.step < steps:
                if lr_at is not None:
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr_at(self.step)
                start = time.perf_counter()
                metrics = step_fn(self.step)
                self.seconds += time.perf_counter() - start
                self.step += 1
                curve.write(json.dumps({"step": self.step, "seconds": round(self.seconds, 2), **metrics}) + "\n")
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()})
                if self.step % save_every == 0 or self.step == steps:
                    curve.flush()
                    self.save()
        bar.close()

    def record(self) -> dict:
        """How this stage was trained, for the model card."""
        return {"steps": self.step, "seconds": round(self.seconds, 1), "seed": self.seed, "machine": machine()}


def warmup_constant(base_lr: float, warmup: int) -> Callable[[int], float]:
    """Linear warm-up, then constant: a stage that may be extended (more --steps, resumed) keeps one schedule,
    and its EMA copy does the annealing."""
    def lr(step: int) -> float:
        return float(base_lr * min(1.0, (step + 1) / warmup))
    return lr


@torch.no_grad()
def update_ema(live: torch.nn.Module, ema: torch.nn.Module, step: int, decay: float) -> None:
    """ema <- lerp(ema, live, 1 - d), d = min(decay, (1 + step) / (10 + step)): early averages do not keep the init."""
    d = min(decay, (1 + step) / (10 + step))
    for p, e in zip(live.parameters(), ema.parameters(), strict=True):
        e.lerp_(p, 1 - d)


def warmup_cosine(base_lr: float, warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    def lr(step: int) -> float:
        if step < warmup:
            return float(base_lr * (step + 1) / warmup)
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        # a Python float: the optimizer state is saved with weights_only loading in mind (no numpy scalars)
        return float(base_lr * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * t))))
    return lr
