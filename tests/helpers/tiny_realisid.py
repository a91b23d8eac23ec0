"""Tiny SD1.5/SDXL-shaped base models and RealisID models with random weights, for tests (CPU, fast).

API: tiny_unet_config(family), tiny_base_model(family, seed) -> ModelPatcher, tiny_realisid_model(family, ...)
-> RealisIDModel, tiny_conditioning(family, batch) -> (positive, negative), the CONTEXT_DIM / SOURCE_DIM / LATENT /
CROP constants.
"""

from __future__ import annotations

import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models
import torch

from realisid import branches, checkpoint, checkpoint_format

CONTEXT_DIM = 32
POOLED_DIM = 32  # SDXL adm = pooled text + six 256-d size embeddings (model_base.SDXL.encode_adm)
ADM_CHANNELS = POOLED_DIM + 6 * 256
SOURCE_DIM = 16  # identity-source embedding size of the tiny projector
LATENT = 8  # latent side used by the tests (64 px)
CROP = 8  # local-branch crop size (latent cells) of the tiny models


def tiny_unet_config(family: str = "sdxl") -> dict:
    """A complete UNet config (the shape comfy's detection produces) of a tiny SD1.5- or SDXL-shaped UNet."""
    if family not in ("sd15", "sdxl"):
        raise ValueError(f"family must be 'sd15' or 'sdxl', got {family!r}")
    sdxl = family == "sdxl"
    return dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=64,
                num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1] if not sdxl else [0, 1],
                transformer_depth_output=[1, 1, 1, 1] if not sdxl else [0, 0, 1, 1], transformer_depth_middle=1,
                use_spatial_transformer=True, legacy=False, use_linear_in_transformer=sdxl, context_dim=CONTEXT_DIM,
                adm_in_channels=ADM_CHANNELS if sdxl else None, num_classes="sequential" if sdxl else None,
                use_temporal_attention=False, use_temporal_resblock=False, num_heads=-1, num_head_channels=32)


NORMS = (torch.nn.GroupNorm, torch.nn.LayerNorm)


def _fill(module: torch.nn.Module, seed: int, std: float = 0.05, unit_norms: bool = False) -> None:
    """Random weights. unit_norms: norm gains near 1 instead of near 0; gains near 0 scale every attention query
    and feed-forward input down to its bias, so the net all but ignores its cross-attention context (a RealisID
    branch would then hardly see its identity tokens: 1e-4 of its output's scale, against 1e-2 with unit gains).
    The tiny bases keep gains near 0, which keeps their sampled latents small and the tests' tolerances absolute."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            for name, p in sub.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=gen) * std
                p.copy_(1.0 + noise if unit_norms and isinstance(sub, NORMS) and name == "weight" else noise)


def tiny_base_model(family: str = "sdxl", seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A random tiny base MODEL (EPS), wrapped like a loaded checkpoint's MODEL."""
    config_cls = comfy.supported_models.SDXL if family == "sdxl" else comfy.supported_models.SD15
    model_config = config_cls(tiny_unet_config(family))
    model_config.unet_config.update(num_heads=-1, num_head_channels=32)  # SD15 extra config forces 8 heads
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({}, device="cpu")
    _fill(base.diffusion_model, seed, std=0.02)
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def tiny_realisid_model(family: str = "sdxl", identity_space: str = "test-space-16", tokens: int = 4,
                        with_local: bool = True, with_global: bool = True, seed: int = 1,
                        crop_size: int = CROP, std: float = 0.05, global_hint: str = "box_mask"
                        ) -> checkpoint.RealisIDModel:
    """A tiny RealisID model with ALL weights random (zero-convs too, so the residuals are non-zero)."""
    proj = {"dim": 32, "depth": 1, "dim_head": 16, "heads": 2, "num_queries": tokens, "embedding_dim": SOURCE_DIM,
            "ff_mult": 2, "source_tokens": 1}
    model = checkpoint.build_realisid_model(tiny_unet_config(family), identity_space=identity_space,
                                            projector_config=proj, crop_size=crop_size, with_local=with_local,
                                            with_global=with_global, init=False, global_hint=global_hint)
    for i, net in enumerate((model.local_net, model.global_net, model.projector)):
        if net is not None:
            _fill(net, seed * 10 + i, std, unit_norms=True)
    for i, net in enumerate((model.local_net, model.global_net)):
        if net is not None:
            _keep_hint_scale(net.input_hint_block, seed * 10 + 5 + i)
    return model


def _keep_hint_scale(hint_block: torch.nn.Module, seed: int) -> None:
    """Fan-in-scaled weights in the hint block: its 8 convs at std 0.05 shrink the hint about 60-fold, so the
    boxes' masks and the landmarks would hardly reach the branch's output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hint_block.parameters():
            if p.dim() == 4:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / p[0].numel() ** 0.5))


def tiny_zero_init_branch(family: str = "sdxl") -> torch.nn.Module:
    """A branch initialised the ControlNet way from a random tiny base (for init tests)."""
    net = branches.build_branch(tiny_unet_config(family), checkpoint_format.LOCAL_HINT_CHANNELS)
    branches.init_branch_from_unet(net, tiny_base_model(family).model.state_dict())
    return net


def tiny_conditioning(family: str = "sdxl", seed: int = 0, tokens: int = 5) -> tuple[list, list]:
    """(positive, negative) CONDITIONING for the tiny base; SDXL entries carry pooled_output and sizes."""
    gen = torch.Generator().manual_seed(seed)
    extras = {}
    if family == "sdxl":
        extras = {"width": LATENT * 8, "height": LATENT * 8}
    pos_extra = {**extras, "pooled_output": torch.randn(1, POOLED_DIM, generator=gen)} if extras else {}
    neg_extra = {**extras, "pooled_output": torch.zeros(1, POOLED_DIM)} if extras else {}
    pos = [[torch.randn(1, tokens, CONTEXT_DIM, generator=gen), pos_extra]]
    neg = [[torch.zeros(1, tokens, CONTEXT_DIM), neg_extra]]
    return pos, neg
