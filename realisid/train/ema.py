"""Exponential moving average of the trainable parameters, resumable through accelerate's save/load_state."""

from __future__ import annotations

import torch
from torch import nn


def shadow_dtype(param: torch.Tensor) -> torch.dtype:
    """The shadow is kept at least in float32: bf16/fp16 steps of (1 - decay) * delta would round away."""
    return torch.promote_types(param.dtype, torch.float32)


class EMA:
    """A float32 (or wider) shadow of each trainable parameter of `module`, on that parameter's device.

    accelerate's load_state hands custom objects a state loaded with map_location="cpu": `load_state_dict`
    places every tensor back beside its parameter, so a resumed GPU run updates it without a device mismatch.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = module
        self.shadow = {n: p.detach().to(shadow_dtype(p), copy=True) for n, p in self._params()}

    def _params(self):
        return ((n, p) for n, p in self.module.named_parameters() if p.requires_grad)

    @torch.no_grad()
    def update(self, module: nn.Module | None = None) -> None:
        for n, p in (module or self.module).named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().to(self.shadow[n].dtype), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module | None = None) -> None:
        for n, p in (module or self.module).named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n].to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        params = dict(self._params())
        if set(shadow) != set(params):
            missing, extra = sorted(set(params) - set(shadow)), sorted(set(shadow) - set(params))
            raise ValueError(f"EMA state does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
        self.decay = float(state["decay"])
        self.shadow = {n: shadow[n].to(device=p.device, dtype=shadow_dtype(p), copy=True) for n, p in params.items()}
