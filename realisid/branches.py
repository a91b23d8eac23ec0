"""The local and global branches: ControlNets (comfy.cldm.cldm.ControlNet) shaped after the base UNet.

Local branch: 3-channel landmark hint at crop resolution. Global branch: 1-channel box mask at image resolution.
Both use the base UNet's encoder layout, so their residuals line up with the frozen UNet's skips and middle block.
"""

from __future__ import annotations

import inspect
import logging

import comfy.cldm.cldm
import comfy.ops
import torch

log = logging.getLogger(__name__)

# constructor arguments that are not architecture (set per build) or only apply to the decoder
_NOT_CONFIG = {"self", "hint_channels", "dtype", "device", "operations", "kwargs", "transformer_depth_output",
               "out_channels"}
ENCODER_PREFIXES = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")


def _controlnet_arg_names() -> set[str]:
    return set(inspect.signature(comfy.cldm.cldm.ControlNet.__init__).parameters) - _NOT_CONFIG


def json_value(value):
    """A config value as JSON gives it back (tuples become lists), so configs compare equal across a save."""
    return list(value) if isinstance(value, tuple) else value


def controlnet_config_from_unet(unet_config: dict) -> dict:
    """The architecture part of a UNet config that a ControlNet takes (JSON-serialisable).

    Accepts `model.model_config.unet_config` of a loaded base or a raw dict; drops decoder-only and runtime keys
    (out_channels, transformer_depth_output, dtype, ...) as ComfyUI's ControlNet loader does.
    """
    names = _controlnet_arg_names()
    config = {k: json_value(v) for k, v in unet_config.items() if k in names}
    for key in ("in_channels", "model_channels", "num_res_blocks", "channel_mult", "context_dim"):
        if key not in config:
            raise ValueError(f"UNet config lacks '{key}': not an SD1.5/SDXL-style UNet config ({sorted(unet_config)})")
    if unet_config.get("adm_in_channels") and config.get("num_classes") is None:
        config["num_classes"] = "sequential"  # adm ('y') nets use the sequential label embedding
    return config


def base_config_from_model(base) -> dict:
    """The UNet config of a ComfyUI MODEL (ModelPatcher) or BaseModel."""
    inner = getattr(base, "model", base)
    return inner.model_config.unet_config


def pick_operations(manual_cast_dtype: torch.dtype | None):
    """manual_cast when weights and compute dtypes differ (ComfyUI's rule), otherwise plain comfy ops."""
    return comfy.ops.manual_cast if manual_cast_dtype is not None else comfy.ops.disable_weight_init


def build_branch(unet_config: dict, hint_channels: int, dtype: torch.dtype = torch.float32, device=None,
                 manual_cast_dtype: torch.dtype | None = None) -> comfy.cldm.cldm.ControlNet:
    """An (uninitialised) ControlNet for the base described by `unet_config`. Comfy ops skip weight init:
    call `init_branch_from_unet` or `init_branch_random`, or load weights."""
    config = controlnet_config_from_unet(unet_config)
    return comfy.cldm.cldm.ControlNet(hint_channels=hint_channels, dtype=dtype, device=device,
                                      operations=pick_operations(manual_cast_dtype), **config)


def _zero_outputs(net: comfy.cldm.cldm.ControlNet) -> None:
    """Zero the zero-convs, the middle-block output and the last hint conv (standard ControlNet init)."""
    with torch.no_grad():
        for module in [*net.zero_convs, net.middle_block_out, net.input_hint_block[-1]]:
            for p in module.parameters():
                p.zero_()


def _init_hint_block(net: comfy.cldm.cldm.ControlNet) -> None:
    with torch.no_grad():
        for module in net.input_hint_block:
            if hasattr(module, "reset_parameters") and isinstance(module, torch.nn.Conv2d):
                torch.nn.Conv2d.reset_parameters(module)


def init_branch_random(net: comfy.cldm.cldm.ControlNet, std: float = 0.02, zero_outputs: bool = True,
                       generator: torch.Generator | None = None) -> None:
    """Fill every parameter with N(0, std) (comfy ops leave them uninitialised); zero the outputs unless told not."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32) * std)
    if zero_outputs:
        _zero_outputs(net)


def _strip_unet_prefix(state_dict: dict) -> dict:
    for prefix in ("model.diffusion_model.", "diffusion_model."):
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return dict(state_dict)


def init_branch_from_unet(net: comfy.cldm.cldm.ControlNet, unet_state_dict: dict) -> dict:
    """ControlNet init: copy the UNet encoder (time_embed, label_emb, input_blocks, middle_block), random hint
    block with a zero last conv, zero zero-convs and middle_block_out. Returns {"copied": n, "not_in_unet": [...]}.

    Accepts the UNet's own state dict or one with the `diffusion_model.` / `model.diffusion_model.` prefix.
    """
    source = _strip_unet_prefix(unet_state_dict)
    own = net.state_dict()
    copied, missing = 0, []
    with torch.no_grad():
        for key, param in own.items():
            if not key.startswith(ENCODER_PREFIXES):
                continue
            value = source.get(key)
            if value is None or value.shape != param.shape:
                missing.append(key)
                continue
            param.copy_(value.to(param.dtype))
            copied += 1
    if missing:
        log.warning("init_branch_from_unet: %d encoder tensors not found in the UNet (first: %s)",
                    len(missing), missing[:3])
    _init_hint_block(net)
    _zero_outputs(net)
    return {"copied": copied, "not_in_unet": missing}
