"""The Mini model family, taught to ComfyUI's checkpoint detection: an SDXL-architecture UNet of small widths,
ComfyUI's real SDXL tokenizers with small CLIP-L/G text encoders, and the TAESD-architecture Mini VAE.

Detection matches a checkpoint's UNet config against `comfy.supported_models.models`; MiniSDXL's keys (its context
and adm widths) match only Mini checkpoints, so every other checkpoint is detected exactly as before.
"""

from __future__ import annotations

import comfy.latent_formats
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base

CLIP_L = {"hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 64}
# projection_dim == hidden_size for G: ComfyUI transposes G's projection when it saves a checkpoint
CLIP_G = {"hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 64}
CONTEXT_DIM = CLIP_L["hidden_size"] + CLIP_G["hidden_size"]
POOLED_DIM = CLIP_G["projection_dim"]
ADM_CHANNELS = POOLED_DIM + 6 * 256  # pooled text + six 256-d size/crop embeddings (model_base.SDXL.encode_adm)
IMAGE_SIZE = 256
# 16 latent channels (as SD3's and Flux's autoencoders): at 8x, 4 channels erased irises and expressions of
# 1/4 faces after 2k training steps; identity's fine attributes need the extra capacity more than the UNet needs
# an easy latent
LATENT_CHANNELS = 16

# 32/64/128 channels at 32/16/8 cells: a training step (fwd + bwd, batch 32, one CPU thread) costs 3.5 s against
# 8.7 s for 64/128/128 (7.2 M parameters), so the base and the branches can train on a CPU; capacity is kept where
# it is cheap, at the coarsest level
UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS,
    "model_channels": 32, "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 4], "transformer_depth": [0, 1, 1],
    "transformer_depth_output": [0, 0, 1, 1, 1, 1], "transformer_depth_middle": 1, "use_spatial_transformer": True,
    "legacy": False, "use_temporal_attention": False, "use_temporal_resblock": False,
    "use_linear_in_transformer": True, "adm_in_channels": ADM_CHANNELS, "num_classes": "sequential",
    "context_dim": CONTEXT_DIM, "num_heads": -1, "num_head_channels": 64,
}


class MiniLatent(comfy.latent_formats.LatentFormat):
    """The Mini VAE is calibrated to zero-mean, unit-variance latents: no scale factor."""

    scale_factor = 1.0
    latent_channels = LATENT_CHANNELS


def _text_options(model_options: dict) -> dict:
    return {**model_options, "clip_l_model_config": dict(CLIP_L), "clip_g_model_config": dict(CLIP_G)}


class MiniSDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
    def __init__(self, device="cpu", dtype=None, model_options=None):
        super().__init__(device=device, dtype=dtype, model_options=_text_options(model_options or {}))


class MiniSDXL(comfy.supported_models.SDXL):
    unet_config = {"model_channels": 32, "use_linear_in_transformer": True, "transformer_depth": [0, 1, 1],
                   "context_dim": CONTEXT_DIM, "adm_in_channels": ADM_CHANNELS, "use_temporal_attention": False}
    latent_format = MiniLatent

    def inpaint_model(self):
        # ComfyUI takes any UNet with more than 4 input channels for an inpainting one (mask + image concat)
        return self.unet_config["in_channels"] > LATENT_CHANNELS

    def clip_target(self, state_dict=None):
        return comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, MiniSDXLClipModel)


def register() -> None:
    """Put MiniSDXL first in ComfyUI's detection list (idempotent)."""
    if MiniSDXL not in comfy.supported_models.models:
        comfy.supported_models.models.insert(0, MiniSDXL)
