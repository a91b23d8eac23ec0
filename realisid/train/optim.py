"""Optimiser set-up: parameter groups (the projector starts from scratch, the branches from the base UNet) and the
learning-rate schedule, a pure function of the step (nothing to save; a resumed run follows the same curve and a
changed --lr on resume takes effect)."""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULES = ("constant", "cosine", "linear")
# adamw8bit: bitsandbytes' blockwise 8-bit AdamW (its two moments in uint8, 2 bytes per parameter instead of 8;
# CPU and CUDA); parameters under bitsandbytes' min_8bit_size (4096 elements) keep 32-bit moments
OPTIMIZERS = ("adamw", "adamw8bit")


def param_groups(nets: nn.Module, lrs: dict[str, float], weight_decay: float) -> list[dict]:
    """AdamW groups: "projector" (nets.projector) and "branches" (the local and global ControlNets)."""
    groups: dict[str, list] = {"branches": [], "projector": []}
    for name, p in nets.named_parameters():
        if p.requires_grad:
            groups["projector" if name.startswith("projector.") else "branches"].append(p)
    return [{"name": k, "params": v, "lr": lrs[k], "weight_decay": weight_decay} for k, v in groups.items() if v]


def make_optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimizer over `groups` (each group keeps its name, LR and weight decay)."""
    if name == "adamw":
        return torch.optim.AdamW(groups)
    if name != "adamw8bit":
        raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {name!r}")
    try:
        import bitsandbytes
    except ImportError as e:
        raise SystemExit("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes (>= 0.48 for CPU "
                         "support), or train with --optimizer adamw") from e
    return bitsandbytes.optim.AdamW8bit(groups)


def lr_factor(step: int, total: int, warmup: int = 0, schedule: str = "constant", min_ratio: float = 0.0) -> float:
    """The multiplier of the base LRs for optimizer step `step` (0-based) of `total`: linear warm-up from 1/warmup
    to 1 over `warmup` steps, then constant, cosine or linear decay to `min_ratio` at the last step."""
    if schedule not in SCHEDULES:
        raise ValueError(f"LR schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * shape


def set_lrs(optimizer: torch.optim.Optimizer, lrs: dict[str, float], factor: float) -> None:
    """Every group's lr = its configured base LR x factor (groups are found by name: a loaded optimizer state
    carries the old run's lr values, and the configuration wins)."""
    for group in optimizer.param_groups:
        group["lr"] = lrs[group["name"]] * factor
