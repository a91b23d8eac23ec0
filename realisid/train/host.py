"""The frozen parts of training, loaded with ComfyUI's own loaders: base UNet, text encoder, VAE, CLIP vision.

Everything here runs without gradients; outputs are cloned so no inference tensor ever reaches autograd.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict

import torch

log = logging.getLogger(__name__)


def freeze_unet(unet: torch.nn.Module) -> None:
    """No grads, eval mode, and no old-LDM checkpointing: its backward differentiates frozen params and fails."""
    unet.requires_grad_(False)
    unet.eval()
    for module in unet.modules():
        if hasattr(module, "use_checkpoint"):
            module.use_checkpoint = False


def _normal(t: torch.Tensor) -> torch.Tensor:
    """A normal tensor (not an inference tensor), detached."""
    with torch.inference_mode(False):
        return t.detach().clone()


class FrozenHost:
    """The base model's frozen pieces on `device`. `base` is the comfy BaseModel (model_sampling, encode_adm)."""

    def __init__(self, ckpt_path: str, device: torch.device, weight_dtype: torch.dtype = torch.float32,
                 clip_vision_path: str | None = None, text_cache_size: int = 4096, max_text_chunks: int = 3):
        import comfy.sd

        from realisid.mini import family

        family.register()  # RealisID-Mini bases too (ComfyUI's detection then knows them; no other family changes)
        patcher, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            ckpt_path, output_vae=True, output_clip=True, embedding_directory=None,
            model_options={"dtype": weight_dtype})
        if clip is None or vae is None:
            raise ValueError(f"{ckpt_path} has no text encoder or no VAE; training needs a full checkpoint")
        self.patcher, self.clip, self.vae = patcher, clip, vae
        self.base = patcher.model
        self.device = device
        freeze_unet(self.base.diffusion_model)
        self.base.to(device)
        self.model_sampling = self.base.model_sampling
        self.clip_vision = self._load_clip_vision(clip_vision_path) if clip_vision_path else None
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self._text_cache_size = max(1, int(text_cache_size))
        self.max_text_chunks = max(1, int(max_text_chunks))
        self._warned_long_caption = False
        self.stored_texts = None  # set by the trainer when the caches have an encode-text store for this base

    @property
    def unet(self) -> torch.nn.Module:
        return self.base.diffusion_model

    @property
    def unet_config(self) -> dict:
        return self.base.model_config.unet_config

    @property
    def has_adm(self) -> bool:
        return bool(self.unet_config.get("adm_in_channels"))

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.base.manual_cast_dtype or self.base.get_dtype()

    @staticmethod
    def _load_clip_vision(path: str):
        import comfy.clip_vision

        model = comfy.clip_vision.load(path)
        if model is None:
            raise ValueError(f"{path} is not a CLIP-vision model ComfyUI recognises (comfy.clip_vision.load)")
        return model

    # text -------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_caption(self, caption: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(1, T, C) context and (1, P) pooled output, cached per caption (LRU; the empty caption stays cached)."""
        hit = self._text_cache.get(caption)
        if hit is not None:
            self._text_cache.move_to_end(caption)
            return hit
        stored = self.stored_texts.get(caption) if self.stored_texts is not None else None
        if stored is not None:  # encode-text's store (latents.StoredTexts): read, not encoded
            cond, pooled = stored
        else:
            cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(caption), return_pooled=True)
        value = (_normal(cond).cpu(), None if pooled is None else _normal(pooled).cpu())
        self._text_cache[caption] = value
        while len(self._text_cache) > self._text_cache_size:
            oldest = next(iter(self._text_cache))
            if oldest == "" and len(self._text_cache) > 1:
                self._text_cache.move_to_end(oldest)
                oldest = next(iter(self._text_cache))
            self._text_cache.pop(oldest)
        return value

    def chunk_tokens(self) -> int:
        """Tokens per text-encoder chunk (77 for CLIP): the empty caption is exactly one chunk."""
        return self.encode_caption("")[0].shape[1]

    def capped_context(self, cond: torch.Tensor) -> torch.Tensor:
        """The first `max_text_chunks` chunks of a context (each chunk is encoded on its own, so this is a clean
        cut: the caption as if it were that long)."""
        limit = self.max_text_chunks * self.chunk_tokens()
        if cond.shape[1] <= limit:
            return cond
        if not self._warned_long_caption:
            log.warning("captions longer than %d text-encoder chunks are cut to that (--max-text-chunks)",
                        self.max_text_chunks)
            self._warned_long_caption = True
        return cond[:, :limit]

    def encode_captions(self, captions: list[str], image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Batch context (B, T, C) and SDXL y (B, adm).

        Contexts of different chunk counts are repeated to the lcm of the counts, as ComfyUI batches conds:
        repeating all of a caption's tokens k times leaves cross-attention unchanged, so each sample trains on
        what its caption alone gives at inference. Counts are capped at `max_text_chunks` first, so a batch's
        context never exceeds lcm(1..cap) chunks (6 for the default 3; uncapped, five lengths meant 60)."""
        encoded = [self.encode_caption(c) for c in captions]
        conds = [self.capped_context(c) for c, _ in encoded]
        chunk = self.chunk_tokens()
        lcm = math.lcm(*(c.shape[1] // chunk for c in conds)) * chunk
        context = torch.cat([c.repeat(1, lcm // c.shape[1], 1) for c in conds]).to(self.device)
        if not self.has_adm:
            return context, None
        h, w = image_hw
        ys = [self.base.encode_adm(pooled_output=p, width=w, height=h, crop_w=0, crop_h=0, target_width=w,
                                   target_height=h, prompt_type="positive") for _, p in encoded]
        return context, torch.cat([_normal(y) for y in ys]).to(self.device)

    # images -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> model-space latents x0 (VAE encode + the latent format's scaling)."""
        raw = self.vae.encode(images.movedim(1, -1).float())
        return _normal(self.base.process_latent_in(raw.to(self.device).float()))

    @torch.no_grad()
    def encode_identity_clip(self, face_crops: torch.Tensor) -> torch.Tensor:
        """(B, 224, 224, 3) uint8 masked face crops -> CLIP-vision penultimate tokens (B, N, E), through the same
        function the inference nodes use (realisid.identity_sources)."""
        from realisid.identity_sources import clip_identity_source

        if self.clip_vision is None:
            raise ValueError("identity space 'clip' needs --clip-vision FILE (a CLIP-vision model)")
        return _normal(clip_identity_source(self.clip_vision, face_crops.cpu().numpy())).to(self.device)
