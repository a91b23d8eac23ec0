"""One training step's forward and loss, the part of training that must match sampling: the branches through
`realisid.control.branch_residuals` (THE forward shared with sampling), the frozen UNet with their residuals, the
targets of the base's model_sampling (EPS / V-pred aware), sigmas, condition dropout, and loss = MSE + lambda *
face-box-masked MSE (paper Eq. 7)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

from realisid import checkpoint
from realisid.control import FaceCondition, branch_residuals
from realisid.train.config import TrainConfig

IP_KEY = "ip_adapter"  # BranchForward's output entry of a model with an IP-Adapter: {index: (K, V)}


class BranchForward(nn.Module):
    """The trainable networks as ONE module (what accelerate wraps in DDP); forward = branch_residuals, paired.

    Each sample has its own face: `paired=True` binds face i to batch entry i, so the whole batch runs as one
    local pass and one global pass, through the same code as sampling. Image dropout swaps in the null identity
    (the projection of a zero source), as the guidance does at inference.
    checkpointed: the branch pass is recomputed in backward (torch.utils.checkpoint, non-reentrant), so the
    ControlNets' attention activations are not kept either (their own use_checkpoint covers ResBlocks only).
    """

    def __init__(self, model: checkpoint.RealisIDModel, checkpointed: bool = False):
        super().__init__()
        self.nets = model.nets  # the same modules the RealisIDModel uses
        self.model = model
        self.checkpointed = checkpointed

    def _residuals(self, x_in, timesteps, p_id, hints, y, boxes):
        faces = [FaceCondition(p_id=p_id[i], landmark_hint=hints[i], box=tuple(float(v) for v in boxes[i]))
                 for i in range(x_in.shape[0])]
        out = branch_residuals(self.model, x_in, timesteps, faces, y=y, paired=True)
        return tuple(out["middle"]), tuple(out["output"])

    def forward(self, x_in, timesteps, identity, hints, boxes, y, drop_identity: list[bool]) -> dict:
        p_id = self.model.project(identity)
        dropped = torch.tensor([bool(d) for d in drop_identity], device=p_id.device)
        if bool(dropped.any()):
            null = self.model.null_identity(1).to(p_id)
            p_id = torch.where(dropped[:, None, None], null, p_id)
        args = (x_in, timesteps, p_id, hints, y, boxes)
        if self.checkpointed and torch.is_grad_enabled():
            middle, output = torch.utils.checkpoint.checkpoint(self._residuals, *args, use_reentrant=False)
        else:
            middle, output = self._residuals(*args)
        out = {"input": [], "middle": list(middle), "output": list(output)}
        ip_adapter = self.model.ip_adapter
        if ip_adapter is not None:  # projected here, inside the wrapped module, so DDP sees every parameter used
            out[IP_KEY] = {index: ip_adapter.project(index, p_id) for index in ip_adapter.indices}
        return out


def model_targets(model_sampling, sigma, x_noisy, x0) -> torch.Tensor:
    """The model output whose denoised value is x0, for any model_sampling linear in the output (EPS: the noise,
    V_PREDICTION: v, ...): denoised = a * x + b * out, so out = (x0 - denoised(0, x)) / denoised(1, 0)."""
    base = model_sampling.calculate_denoised(sigma, torch.zeros_like(x_noisy), x_noisy)
    gain = model_sampling.calculate_denoised(sigma, torch.ones_like(x_noisy), torch.zeros_like(x_noisy))
    return (x0 - base) / gain


def sample_sigmas(model_sampling, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Training sigmas: a uniform discrete timestep of the schedule (or a uniform percent when continuous)."""
    sigmas = getattr(model_sampling, "sigmas", None)
    if sigmas is not None and sigmas.ndim == 1 and len(sigmas) > 1:
        idx = torch.randint(0, len(sigmas), (batch,), generator=generator)
        return sigmas.cpu()[idx].float()
    u = torch.rand(batch, generator=generator)
    return torch.tensor([float(model_sampling.percent_to_sigma(float(v))) for v in u])


def dropout_flags(batch: int, cfg: TrainConfig, generator: torch.Generator) -> tuple[list[bool], list[bool]]:
    """(drop_image, drop_text) per sample: both with p_both, image only with p_image, text only with p_text."""
    u = torch.rand(batch, generator=generator).tolist()
    both = [v < cfg.drop_both for v in u]
    image = [b or cfg.drop_both <= v < cfg.drop_both + cfg.drop_image for v, b in zip(u, both, strict=True)]
    lo = cfg.drop_both + cfg.drop_image
    text = [b or lo <= v < lo + cfg.drop_text for v, b in zip(u, both, strict=True)]
    return image, text


def diffusion_loss(pred, target, mask_latent, lambda_face: float, norm: str) -> tuple[torch.Tensor, dict]:
    """MSE over the latent + lambda * MSE inside the face box (area-normalised per sample, or a plain mean)."""
    err = (pred.float() - target.float()) ** 2
    mse = err.mean()
    masked = err * mask_latent
    if norm == "area":
        denom = mask_latent.sum(dim=(1, 2, 3)) * err.shape[1]
        face = (masked.sum(dim=(1, 2, 3)) / denom.clamp_min(1e-6)).mean()
    else:
        face = masked.mean()
    return mse + lambda_face * face, {"mse": mse.detach(), "face_mse": face.detach()}


@dataclass
class StepInputs:
    """Everything one training micro-step needs, already on the device (encoders applied)."""

    x0: torch.Tensor  # (B, 4, h, w) model-space latents
    noise: torch.Tensor
    sigma: torch.Tensor  # (B,)
    identity: torch.Tensor  # identity source for the projector
    hints: torch.Tensor  # (B, 3, S*8, S*8)
    boxes: torch.Tensor  # (B, 4) fractions
    context: torch.Tensor  # (B, T, C) text
    y: torch.Tensor | None  # (B, adm) for SDXL-style bases
    drop_identity: list[bool]
    mask: torch.Tensor  # (B, 1, h, w) face box at latent resolution


_CONTROL_KEYS = ("input", "middle", "output")


def ip_transformer_options(unet, ip_adapter, ip_kv: dict | None, boxes: torch.Tensor, latent_hw) -> dict:
    """The frozen UNet's transformer_options for one training forward: with an IP-Adapter, every cross-attention
    replaced by `PairedIPAttention` (row b's identity K/V inside row b's box), ComfyUI's patches_replace as at
    sampling; {} otherwise."""
    if not ip_kv:
        return {}
    from realisid import geometry
    from realisid.instantid.attention import PairedIPAttention, pair_blocks

    latent_boxes = geometry.frac_to_latent(boxes.detach().double().cpu(), latent_hw)
    levels = geometry.unet_levels(unet)
    replace = {key: PairedIPAttention(*ip_kv[index], latent_boxes, levels) for key, index in pair_blocks(unet, ip_adapter)}
    # With identity in its attention, the frozen UNet's activations need gradients from the first block on, and
    # ComfyUI adds the output-side residuals in place (`h += ctrl`) to the skip tensors it stored, tensors the
    # next block saved for its backward. The next block therefore gets a copy; the stored skip stays unsaved.
    return {"patches_replace": {"attn2": replace}, "patches": {"input_block_patch_after_skip": [_fresh_copy]}}


def _fresh_copy(h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
    return h.clone()


def unet_forward(unet, x, timesteps, context, y, control: dict, checkpointed: bool = False,
                 transformer_options: dict | None = None) -> torch.Tensor:
    """The frozen UNet with the residuals (and the IP-Adapter's attention patches, `ip_transformer_options`).
    Checkpointed: torch.utils.checkpoint (non-reentrant) with the control dict rebuilt inside, since the UNet pops
    it (ComfyUI's own use_checkpoint fails on frozen weights)."""
    extra = {} if y is None else {"y": y}
    options = transformer_options or {}
    if not checkpointed:
        return unet(x, timesteps, context=context, control=control, transformer_options=dict(options), **extra)
    counts = [len(control.get(k, [])) for k in _CONTROL_KEYS]
    flat = [t for k in _CONTROL_KEYS for t in control.get(k, [])]

    def run(x, timesteps, context, *residuals):
        it = iter(residuals)
        rebuilt = {k: [next(it) for _ in range(n)] for k, n in zip(_CONTROL_KEYS, counts, strict=True)}
        return unet(x, timesteps, context=context, control=rebuilt, transformer_options=dict(options), **extra)

    return torch.utils.checkpoint.checkpoint(run, x, timesteps, context, *flat, use_reentrant=False)


def _unwrapped(module: nn.Module) -> nn.Module:
    """The BranchForward inside a DDP wrapper (accelerate's prepare), or the module itself."""
    return getattr(module, "module", module)


def step_loss(forward_module, unet, model_sampling, s: StepInputs, cfg: TrainConfig, autocast, compute_dtype):
    """Noise with the base's model_sampling, run branches + frozen UNet, return (loss, parts)."""
    x_noisy = model_sampling.noise_scaling(s.sigma, s.noise, s.x0)
    x_in = model_sampling.calculate_input(s.sigma, x_noisy)
    timesteps = model_sampling.timestep(s.sigma).float()
    with autocast():
        control = forward_module(x_in, timesteps, s.identity, s.hints, s.boxes, s.y, s.drop_identity)
        options = ip_transformer_options(unet, _unwrapped(forward_module).model.ip_adapter, control.pop(IP_KEY, None),
                                         s.boxes, tuple(x_in.shape[-2:]))
        y = None if s.y is None else s.y.to(compute_dtype)
        pred = unet_forward(unet, x_in.to(compute_dtype), timesteps, s.context.to(compute_dtype), y, control,
                            cfg.checkpoint_unet, options)
    target = model_targets(model_sampling, s.sigma, x_noisy, s.x0)
    return diffusion_loss(pred, target, s.mask, cfg.lambda_face, cfg.face_loss_norm)
