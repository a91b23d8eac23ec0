"""Training previews, sampled the way inference samples, without lending the live weights to ComfyUI.

* The weights: a detached snapshot (the EMA weights when EMA is on, what the exported file holds) in its own
  RealisIDModel. ComfyUI's memory manager may move, partially offload or patch what it loads; the trainer's
  parameters and the optimizer's state must never take part in that.
* The conditioning: the positive carries the RealisID control, the negative its null-identity twin
  (`null_identity.attach_with_null_twin`), sampled with the RealisID Guider (three-way guidance, delayed identity).
  Sharing one identity-carrying control with the negative would let CFG cancel the identity signal.
* Afterwards every model the sampler loaded is unloaded through ComfyUI (its own unpatching), and the frozen base
  goes back to the training device, frozen as the trainer keeps it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from realisid import checkpoint
from realisid.control import FaceCondition, RealisIDControl
from realisid.geometry import LATENT_DOWNSCALE
from realisid.train.host import FrozenHost, freeze_unet

log = logging.getLogger(__name__)


@dataclass
class PreviewSettings:
    """The RealisID Guider node's defaults, so previews look like a default inference run."""

    steps: int = 20
    text_scale: float = 7.5
    id_scale: float = 5.0
    id_delay: float = 0.2
    sampler: str = "euler"
    scheduler: str = "normal"


def snapshot(model: checkpoint.RealisIDModel, unet_config: dict, dtype: torch.dtype,
             shadow: dict[str, torch.Tensor] | None = None) -> checkpoint.RealisIDModel:
    """A RealisIDModel of its own (CPU, `dtype`, no grads) with `model`'s weights, or the EMA `shadow` in place of
    its parameters. ComfyUI loads it to its device like any model."""
    snap = checkpoint.build_realisid_model(
        unet_config, identity_space=model.identity_space, projector_config=model.config["projector"],
        crop_size=model.crop_size, with_local=model.local_net is not None, with_global=model.global_net is not None,
        dtype=dtype, base_family=model.base_family, init=False)
    snap.config = copy.deepcopy(model.config)  # box_expand, hint, clip_vision: what inference reads
    state = {k: v.detach() for k, v in model.nets.state_dict().items()}
    state.update(shadow or {})
    snap.nets.load_state_dict({k: v.to("cpu", dtype if v.is_floating_point() else v.dtype) for k, v in state.items()})
    snap.nets.requires_grad_(False).eval()
    return snap


def conditioning(host: FrozenHost, caption: str, h: int, w: int) -> list:
    cond, pooled = host.encode_caption(caption)
    extra = {"width": w, "height": h}
    if pooled is not None:
        extra["pooled_output"] = pooled
    return [[cond, extra]]


@torch.no_grad()
def sample_faces(host: FrozenHost, model: checkpoint.RealisIDModel, faces: list[FaceCondition], captions: list[str],
                 hw: tuple[int, int], settings: PreviewSettings, seed: int = 0) -> torch.Tensor:
    """(len(faces), H, W, 3) images: one face per image, sampled with the RealisID Guider as at inference."""
    import comfy.sample
    import comfy.samplers

    from realisid.guidance import RealisIDGuider
    from realisid.null_identity import attach_with_null_twin

    h, w = hw
    images = []
    for i, (face, caption) in enumerate(zip(faces, captions, strict=True)):
        positive, negative = attach_with_null_twin(conditioning(host, caption, h, w), conditioning(host, "", h, w),
                                                   RealisIDControl(model, [face]))
        guider = RealisIDGuider(host.patcher)
        guider.set_conds(positive, negative)
        guider.set_scales(settings.text_scale, settings.id_scale, settings.id_delay)
        latent = comfy.sample.fix_empty_latent_channels(
            host.patcher, torch.zeros(1, 4, h // LATENT_DOWNSCALE, w // LATENT_DOWNSCALE))
        noise = comfy.sample.prepare_noise(latent, seed + i)
        sigmas = comfy.samplers.calculate_sigmas(host.model_sampling, settings.scheduler, settings.steps)
        out = guider.sample(noise, latent, comfy.samplers.sampler_object(settings.sampler), sigmas,
                            disable_pbar=True, seed=seed + i)
        images.append(host.vae.decode(out.cpu()))
    return torch.cat(images)


def release(host: FrozenHost) -> None:
    """Unload what sampling loaded (ComfyUI unpatches lowvram hooks and weight patches as it unloads), then put
    the frozen base back on the training device."""
    import comfy.model_management as mm

    for loaded in list(mm.current_loaded_models):
        patcher = loaded.model
        if patcher is None:
            continue
        if patcher.is_clone(host.patcher) or isinstance(getattr(patcher, "model", None), checkpoint.RealisIDNets):
            loaded.model_unload()
            mm.current_loaded_models.remove(loaded)
    host.base.to(host.device)
    freeze_unet(host.unet)
