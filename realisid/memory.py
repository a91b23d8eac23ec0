"""The RealisID branches' working memory, for ComfyUI's memory estimate.

Before sampling ComfyUI frees enough memory for the base UNet's activations at 2 x batch rows
(`BaseModel.memory_required`) plus what each control reports (`ControlBase.inference_memory_requirements`). Core
ControlNet reports nothing beyond its chain: it runs at the UNet's own batch and resolution, so the UNet's figure
covers it. The RealisID branches do not: the local branch runs K faces x rows crops of S x S latent cells, the
global branch K x rows full latents (one pass per person), and the RealisID Guider evaluates three predictions in
one call. `RealisIDControl` reports that here, in the units of ComfyUI's own formula (an encoder's activations are
at most a UNet's of the same batch, so it errs on the safe side, as the host's estimate does), plus the residual
tensors it holds at full size.

Controls are not told the latent shape. The RealisID Guider publishes it for the duration of its sampling
(`sampling_context`); elsewhere (KSampler, other guiders) the estimate assumes batch 1 at the base family's native
size, one prediction per control object (core CFG runs the positive's control and the negative's null twin as
separate objects), and the control logs a warning when a call turns out bigger.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math

import comfy.model_management as mm
import comfy.supported_models
import torch

MIB = 1024 * 1024
# the base families' own classes carry ComfyUI's memory_usage_factor and native latent size
_FAMILY = {"sdxl": (comfy.supported_models.SDXL, 128), "sd15": (comfy.supported_models.SD15, 64)}
PASTE_WORK_BYTES = 4  # geometry resamples (and so pastes K x rows full-size residuals) in float32


@dataclasses.dataclass(frozen=True)
class SamplingShape:
    """What one UNet call of the coming sampling looks like: latent batch, latent (H, W), predictions per call."""

    batch: int
    latent_hw: tuple[int, int]
    predictions: int

    @property
    def rows(self) -> int:
        return self.batch * self.predictions


_CURRENT: contextvars.ContextVar[SamplingShape | None] = contextvars.ContextVar("realisid_sampling", default=None)


@contextlib.contextmanager
def sampling_context(noise_shape: tuple[int, ...], predictions: int):
    """Publish the latent shape (B, C, ..., H, W) and predictions per call while a guider samples."""
    token = _CURRENT.set(SamplingShape(int(noise_shape[0]), (int(noise_shape[-2]), int(noise_shape[-1])),
                                       int(predictions)))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_shape(base_family: str) -> SamplingShape:
    """The published shape, or the fallback: batch 1 at the family's native latent size, one prediction."""
    shape = _CURRENT.get()
    if shape is not None:
        return shape
    native = _FAMILY.get(base_family, _FAMILY["sdxl"])[1]
    return SamplingShape(1, (native, native), 1)


def unet_pass_bytes(rows: int, hw: tuple[int, int], dtype: torch.dtype, base_family: str) -> float:
    """ComfyUI's `BaseModel.memory_required` for an input of `rows` x (H, W), with the family's usage factor."""
    factor = _FAMILY.get(base_family, _FAMILY["sdxl"])[0].memory_usage_factor
    area = rows * hw[0] * hw[1]
    if mm.xformers_enabled() or mm.pytorch_attention_flash_attention():
        return area * mm.dtype_size(dtype) * 0.01 * factor * MIB
    return area * 0.15 * factor * MIB


def residual_elements(unet_config: dict, hw: tuple[int, int]) -> int:
    """Elements per batch row of one branch's residuals at latent (H, W): one per input block (the stem conv, every
    res block, every downsample) plus the middle block, at that block's resolution (stride-2 convs: ceil(h / 2))."""
    mc, mult = int(unet_config["model_channels"]), list(unet_config["channel_mult"])
    blocks = unet_config["num_res_blocks"]
    blocks = [int(blocks)] * len(mult) if isinstance(blocks, int) else [int(b) for b in blocks]
    h, w = hw
    total = mc * h * w  # the stem conv
    for level, (m, n) in enumerate(zip(mult, blocks, strict=True)):
        total += n * mc * m * h * w
        if level < len(mult) - 1:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
            total += mc * m * h * w  # the downsample's output, at the next level's size
    return total + mc * mult[-1] * h * w


def branch_bytes(model, k: int, shape: SamplingShape, dtype: torch.dtype, options: dict) -> float:
    """Peak working memory of one control's call: the larger of its two branch passes (they run one after the
    other), each with the tensors it materialises, plus the residuals the control returns for the UNet."""
    rows, hw, family = shape.rows, shape.latent_hw, model.base_family
    size = mm.dtype_size(dtype)
    full = residual_elements(model.unet_config, hw)
    peaks, kept = [0.0], 0.0
    if options.get("use_local", True) and model.local_net is not None:
        s = options.get("crop_size") or model.crop_size
        peaks.append(unet_pass_bytes(k * rows, (s, s), dtype, family) + k * rows * full * PASTE_WORK_BYTES)
        kept += rows * full * size
    if options.get("use_global", True) and model.global_net is not None:
        passes = k if options.get("global_mode", "per_person") == "per_person" else 1
        peaks.append(unet_pass_bytes(passes * rows, hw, dtype, family) + passes * rows * full * size)
        kept += rows * full * size
    return max(peaks) + kept
