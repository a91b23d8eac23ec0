"""Tiny InstantID-shaped files, generated at test time (nothing is downloaded).

Layouts follow the public files of InstantX/InstantID (model card and diffusers' ControlNetModel):

* IdentityNet `ControlNetModel/diffusion_pytorch_model.safetensors`: diffusers ControlNetModel keys, e.g.
  `conv_in.weight` (320, 4, 3, 3), `time_embedding.linear_1.weight`, `add_embedding.linear_1.weight` (1280, 2816),
  `controlnet_cond_embedding.conv_in.weight` (16, 3, 3, 3), `controlnet_cond_embedding.blocks.{0..5}.*`,
  `controlnet_cond_embedding.conv_out.weight` (320, 256, 3, 3), `down_blocks.{i}.resnets.{j}.*`,
  `down_blocks.{i}.attentions.{j}.transformer_blocks.{t}.attn2.to_k.weight` (C, 2048),
  `down_blocks.{i}.downsamplers.0.conv.*`, `mid_block.*`, `controlnet_down_blocks.{0..8}.*`,
  `controlnet_mid_block.*`. Config: cross_attention_dim 2048, addition_embed_type text_time,
  conditioning_channels 3, block_out_channels [320, 640, 1280], transformer_layers_per_block [1, 2, 10].
* `ip-adapter.bin`: a torch pickle {"image_proj": Resampler state dict (latents (1, 16, 1280), proj_in (1280, 512),
  proj_out (2048, 1280), norm_out, layers.{0..3}.0.{norm1, norm2, to_q, to_kv, to_out}, layers.{0..3}.1.{0, 1, 3}),
  "ip_adapter": {"<i>.to_k_ip.weight": (C_i, 2048), "<i>.to_v_ip.weight": (C_i, 2048)} for i = 1, 3, 5, ...}.
  i counts diffusers' `unet.attn_processors` (attn1 even, attn2 odd), whose order is the UNet's module
  registration order: down_blocks, then up_blocks, then mid_block (UNet2DConditionModel creates both ModuleLists
  before mid_block). For SDXL that is 70 cross-attentions, i = 1..139; cubiq/ComfyUI_InstantID pairs them the same
  way (input 4, 5, 7, 8; output 0..5; middle last).

The tiny versions keep every key name and layout, sized for a tiny SDXL-family UNet config.
"""

from __future__ import annotations

import pathlib

import comfy.utils
import safetensors.torch
import torch

from realisid import branches, identity

TINY_RESAMPLER = {"dim": 64, "depth": 1, "dim_head": 64, "heads": 1, "num_queries": 4, "embedding_dim": 512,
                  "ff_mult": 2, "source_tokens": 1}


def _random_(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and p.ndim == 1 and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def _diffusers_names(unet_config: dict, state: dict) -> dict:
    """cldm key -> diffusers ControlNetModel key (the UNet part from ComfyUI's diffusers map)."""
    cfg = {**unet_config, "transformer_depth_output": [0] * sum(r + 1 for r in unet_config["num_res_blocks"])}
    names = {ldm: diff for diff, ldm in comfy.utils.unet_to_diffusers(cfg).items()}
    zero_convs = sum(1 for k in state if k.startswith("zero_convs.") and k.endswith(".weight"))
    for s in ("weight", "bias"):
        # ComfyUI maps label_emb from both class_embedding and add_embedding; SDXL ControlNets use add_embedding
        names[f"label_emb.0.0.{s}"], names[f"label_emb.0.2.{s}"] = f"add_embedding.linear_1.{s}", f"add_embedding.linear_2.{s}"
        names[f"middle_block_out.0.{s}"] = f"controlnet_mid_block.{s}"
        for i in range(zero_convs):
            names[f"zero_convs.{i}.0.{s}"] = f"controlnet_down_blocks.{i}.{s}"
        hint = ["conv_in"] + [f"blocks.{j}" for j in range(6)] + ["conv_out"]
        for j, part in enumerate(hint):
            names[f"input_hint_block.{2 * j}.{s}"] = f"controlnet_cond_embedding.{part}.{s}"
    return names


def identitynet_state(unet_config: dict, seed: int = 3, hint_channels: int = 3, device=None) -> dict:
    """A diffusers-format IdentityNet-shaped state dict for a base UNet config (random weights, or meta shapes)."""
    net = branches.build_branch(unet_config, hint_channels, device=device)
    if device is None:
        _random_(net, seed)
    state = net.state_dict()
    names = _diffusers_names(branches.controlnet_config_from_unet(unet_config), state)
    missing = sorted(set(state) - set(names))
    assert not missing, f"no diffusers name for {missing[:5]}"
    return {names[k]: v.contiguous() for k, v in state.items()}


def attn2_hidden_sizes(unet_config: dict) -> list[int]:
    """Widths of the UNet's cross-attentions in diffusers processor order (down, up, mid), from the config."""
    mc, mult, res = unet_config["model_channels"], unet_config["channel_mult"], unet_config["num_res_blocks"]
    depth, depth_out = list(unet_config["transformer_depth"]), list(unet_config["transformer_depth_output"])
    down, up = [], []
    for level, m in enumerate(mult):
        for _ in range(res[level]):
            down += [mc * m] * depth.pop(0)
    for level in reversed(range(len(mult))):
        for _ in range(res[level] + 1):
            up += [mc * mult[level]] * depth_out.pop()
    mid = [mc * mult[-1]] * unet_config["transformer_depth_middle"]
    return down + up + mid


def ip_adapter_state(unet_config: dict, seed: int = 4, resampler: dict | None = None) -> dict:
    """{"image_proj": ..., "ip_adapter": ...} shaped for the base UNet config (InstantID's layout)."""
    context = unet_config["context_dim"]
    proj = _random_(identity.build_projector({**TINY_RESAMPLER, **(resampler or {}), "output_dim": context}), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    ip = {}
    for n, width in enumerate(attn2_hidden_sizes(unet_config)):
        for kind in ("k", "v"):
            ip[f"{2 * n + 1}.to_{kind}_ip.weight"] = torch.randn(width, context, generator=gen) * 0.2
    return {"image_proj": proj.state_dict(), "ip_adapter": ip}


def write_instantid(folder: pathlib.Path, unet_config: dict, controlnet_name: str = "instantid_controlnet.safetensors",
                    ip_name: str = "ip-adapter.bin", seed: int = 3) -> tuple[pathlib.Path, pathlib.Path]:
    """Write (models/controlnet/<controlnet_name>, models/instantid/<ip_name>) under `folder`."""
    cn_path = folder / "controlnet" / controlnet_name
    ip_path = folder / "instantid" / ip_name
    cn_path.parent.mkdir(parents=True, exist_ok=True)
    ip_path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(identitynet_state(unet_config, seed), str(cn_path))
    data = ip_adapter_state(unet_config, seed + 1)
    if ip_name.endswith(".safetensors"):
        flat = {f"{section}.{k}": v.contiguous() for section, sd in data.items() for k, v in sd.items()}
        safetensors.torch.save_file(flat, str(ip_path))
    else:
        torch.save(data, str(ip_path))
    return cn_path, ip_path
