"""The Mini base model: text encoders and UNet trained together on VAE latents of Mini scenes (text only).

The base sees captions (people count, framing, place, clothing) and nothing else: location, identity, pose and
expression are the RealisID branches' job. Training is v-prediction through ComfyUI's own SDXL model code
(model_sampling, encode_adm), with min-SNR weighting, 10 % caption dropout (for CFG), a constant learning rate
after warm-up and an EMA copy (the one exported).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from realisid.mini import family, training, vae, world

log = logging.getLogger(__name__)

SHARD = 500  # scenes per latent shard
CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0
EMA_DECAY = 0.999
# ComfyUI's SDXL checkpoints drop CLIP-L's projection and logit scale, which SDXL never reads: a warm start keeps
# the network's own values for them
UNSAVED_TEXT_KEYS = frozenset({"clip_l.logit_scale", "clip_l.transformer.text_projection.weight"})
INIT_RECORD = "base.init.json"  # in --work: what a warm-started base stage started from
SCHEDULE_RECORD = "base.schedule.json"  # in --work: the learning-rate schedule the stage was started with
LR_SCHEDULES = ("constant", "cosine")
COSINE_FLOOR = 0.1  # a cosine stage ends at this fraction of its learning rate
WARMUP_STEPS = 200


def model_config() -> family.MiniSDXL:
    config = family.MiniSDXL(dict(family.UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    return config


def build(seed: int = 0):
    """(BaseModel, text encoder) with deterministic init; the UNet's last conv starts at zero."""
    import comfy.ops

    config = model_config()
    # v-prediction: ComfyUI's SDXL family reads it from a "v_pred" key (which state_dict_for_saving writes back);
    # an eps UNet must learn the identity map at high noise before it samples anything (measured here: after 800
    # steps, eps MSE 0.13 at sigma 10, so x0 errors of 13 and samples of pure noise)
    base = config.get_model({"v_pred": torch.tensor([])}, device="cpu")
    generator = torch.Generator().manual_seed(seed)
    training.init_like_torch(base.diffusion_model, generator)
    with torch.no_grad():
        for p in base.diffusion_model.out[-1].parameters():
            p.zero_()
    clip = family.MiniSDXLClipModel(device="cpu", dtype=torch.float32)
    training.init_like_torch(clip, generator)
    with torch.no_grad():
        for module in clip.modules():
            if isinstance(module, torch.nn.Embedding | comfy.ops.manual_cast.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)
    return base, clip


class Tokens:
    """ComfyUI's real SDXL tokenizers, captions -> (B, 77) token ids for CLIP-L and CLIP-G."""

    def __init__(self):
        import comfy.sdxl_clip

        self.tokenizer = comfy.sdxl_clip.SDXLTokenizer()

    def __call__(self, captions: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        ls, gs = [], []
        for text in captions:
            tokens = self.tokenizer.tokenize_with_weights(text)
            if len(tokens["l"]) != 1:
                raise ValueError(f"caption longer than one 77-token chunk: {text!r}")
            ls.append([t for t, *_ in tokens["l"][0]])
            gs.append([t for t, *_ in tokens["g"][0]])
        return ls, gs


def make_text_trainable(clip) -> None:
    """Let autograd through ComfyUI's CLIP layers: their forward adds the residuals in place (`x += ...`), which
    overwrites what LayerNorm saved for backward. Each layer of THIS module gets the out-of-place twin (same maths,
    checked against ComfyUI's forward in the tests); the class and every other instance are untouched."""
    import comfy.clip_model

    for layer in clip.modules():
        if isinstance(layer, comfy.clip_model.CLIPLayer):
            layer.forward = _out_of_place_forward(layer)
    clip.requires_grad_(True)
    clip.train()


def _out_of_place_forward(layer):
    def forward(x, mask=None, optimized_attention=None):
        x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
        return x + layer.mlp(layer.layer_norm2(x))
    return forward


def encode_text(clip, tokens_l, tokens_g) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's SDXL text forward for a batch (every token weight is 1): context (B, 77, C) and pooled (B, P)."""
    l_out, _ = clip.clip_l.encode(tokens_l)
    g_out, g_pooled = clip.clip_g.encode(tokens_g)
    return torch.cat([l_out, g_out], dim=-1), g_pooled


def adm(base, pooled: torch.Tensor) -> torch.Tensor:
    size = family.IMAGE_SIZE
    return base.encode_adm(pooled_output=pooled, width=size, height=size, crop_w=0, crop_h=0, target_width=size,
                           target_height=size, device=pooled.device)


def encode_shards(vae_model, out: str, n_shards: int, seed: int = 0) -> None:
    """Shard i: SHARD scenes of seeds drawn from (seed, i), their latents (fp16) and captions. Resumable."""
    from tqdm import tqdm

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(n_shards), desc="encode shards"):
        path = folder / f"shard_{i:04d}.pt"
        if path.exists():
            continue
        seeds = np.random.default_rng([seed, 4049, i]).integers(0, 2**31, SHARD)
        scenes = [world.random_scene(int(s), split="train") for s in seeds]
        latents = vae.encode(vae_model, np.stack([s.image for s in scenes])).half()
        tmp = path.with_suffix(".tmp")
        torch.save({"latents": latents, "captions": [s.caption for s in scenes], "seeds": seeds.tolist()}, tmp)
        tmp.rename(path)


def load_shards(folder: str) -> tuple[torch.Tensor, list[str]]:
    paths = sorted(Path(folder).glob("shard_*.pt"))
    if not paths:
        raise FileNotFoundError(f"no latent shards in {folder}: run `python -m realisid.mini encode` first")
    data = [torch.load(p, weights_only=True) for p in paths]
    return torch.cat([d["latents"] for d in data]).float(), [c for d in data for c in d["captions"]]


class BaseNets(torch.nn.Module):
    """What one training state holds: the UNet and text encoders, and their EMA copies."""

    def __init__(self, base, clip):
        super().__init__()
        self.unet, self.clip = base.diffusion_model, clip
        self.ema_unet, self.ema_clip = copy.deepcopy(self.unet), copy.deepcopy(clip)
        for p in [*self.ema_unet.parameters(), *self.ema_clip.parameters()]:
            p.requires_grad_(False)

    def update_ema(self, step: int) -> None:
        training.update_ema(self.unet, self.ema_unet, step, EMA_DECAY)
        training.update_ema(self.clip, self.ema_clip, step, EMA_DECAY)


def diffusion_loss(base, unet, context, y, x0, generator) -> torch.Tensor:
    """Min-SNR-weighted denoising error at uniformly drawn training timesteps, in x0 space through ComfyUI's own
    model_sampling (so the parametrisation is the one the stock sampler uses): weight min(SNR, gamma) on
    |x0_hat - x0|^2, which for v-prediction is min(SNR, gamma) / (SNR + 1) on the v error."""
    ms = base.model_sampling
    t = torch.randint(0, len(ms.sigmas), (x0.shape[0],), generator=generator)
    sigma = ms.sigmas[t].float()
    noise = torch.randn(x0.shape, generator=generator)
    x_noisy = ms.noise_scaling(sigma, noise, x0)
    out = unet(ms.calculate_input(sigma, x_noisy), ms.timestep(sigma).float(), context=context, y=y)
    denoised = ms.calculate_denoised(sigma, out, x_noisy)
    weight = torch.clamp(1.0 / sigma.square(), max=MIN_SNR_GAMMA)
    return (weight * F.mse_loss(denoised, x0, reduction="none").mean(dim=(1, 2, 3))).mean()


def load_checkpoint_weights(nets: BaseNets, path: str) -> dict:
    """A committed base checkpoint's UNet and text encoders into both the live and the EMA copies (a warm start:
    a stage that continues a committed one, as scratch training states do not outlive their machine); returns its
    metadata. Every tensor of the networks must be in the file."""
    import comfy.utils

    state, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    prefix = "model.diffusion_model."
    unet = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    clip = model_config().process_clip_state_dict(state)
    for live, ema, weights in ((nets.unet, nets.ema_unet, unet), (nets.clip, nets.ema_clip, clip)):
        missing = [k for k in live.state_dict() if k not in weights and k not in UNSAVED_TEXT_KEYS]
        if missing:
            raise ValueError(f"{path} is not a Mini base checkpoint of this code's shape: {len(missing)} tensors "
                             f"missing, e.g. {missing[:3]}")
        own = {k: weights.get(k, v).to(v.dtype) for k, v in live.state_dict().items()}
        live.load_state_dict(own)
        ema.load_state_dict(own)
    return json.loads((metadata or {}).get("realisid_mini", "{}"))


def learning_rate(work: str, steps: int, lr: float, schedule: str):
    """The stage's lr(step). "constant" (after warm-up) lets a stage be extended by a larger --steps; "cosine"
    decays to COSINE_FLOOR x lr at `steps`, so its schedule is fixed when the stage starts (recorded in the work
    folder) and a resume with another schedule or step count is refused rather than silently bent."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {schedule!r}")
    record = Path(work) / SCHEDULE_RECORD
    wanted = {"lr_schedule": schedule, "steps": steps if schedule == "cosine" else None, "lr": lr}
    if record.exists():
        started = json.loads(record.read_text())
        if started != wanted:
            raise ValueError(f"{work} holds a base stage started with {started}, not {wanted}: resume it with the "
                             "same --lr-schedule and (for cosine) --steps, or use a new --work folder")
    else:
        Path(work).mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(wanted))
    if schedule == "cosine":
        return training.warmup_cosine(lr, WARMUP_STEPS, steps, floor=COSINE_FLOOR)
    return training.warmup_constant(lr, WARMUP_STEPS)


def train(work: str, shards: str, steps: int, seed: int = 0, batch: int = 32, lr: float = 3e-4,
          init: str | None = None, lr_schedule: str = "constant"):
    """`init`: a base checkpoint to start from (both copies, a fresh optimizer and warm-up) when the run has no
    state yet; a resumed run ignores it (its state already holds the weights). `lr_schedule`: see
    learning_rate."""
    lr_at = learning_rate(work, steps, lr, lr_schedule)
    torch.manual_seed(seed)
    base, clip = build(seed)
    nets = BaseNets(base, clip)
    if init is not None and not (Path(work) / "base.state.pt").exists():
        log.info("base: warm start from %s", init)
        previous = load_checkpoint_weights(nets, init)
        # the export names the stages this one continues (the card's training table)
        Path(work).mkdir(parents=True, exist_ok=True)
        (Path(work) / INIT_RECORD).write_text(json.dumps({"from": Path(init).name, **previous.get("training", {})}))
    nets.unet.requires_grad_(True)
    make_text_trainable(nets.clip)
    params = [p for p in [*nets.unet.parameters(), *nets.clip.parameters()]]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    run = training.ResumableRun(work, "base", nets, optimizer, seed)
    latents, captions = load_shards(shards)
    log.info("base: %d latents, UNet %.2f M parameters, text %.2f M", len(latents),
             sum(p.numel() for p in nets.unet.parameters()) / 1e6, sum(p.numel() for p in nets.clip.parameters()) / 1e6)
    tokens = Tokens()
    empty_l, empty_g = tokens([""])

    def step_fn(step: int) -> dict:
        rng = training.step_rng(seed, step)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        idx = rng.integers(len(latents), size=batch)
        tl, tg = tokens([captions[i] for i in idx])
        for j in np.nonzero(rng.random(batch) < CAPTION_DROPOUT)[0]:
            tl[j], tg[j] = empty_l[0], empty_g[0]
        context, pooled = encode_text(nets.clip, tl, tg)
        loss = diffusion_loss(base, nets.unet, context, adm(base, pooled), latents[idx], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        nets.update_ema(step)
        return {"loss": float(loss.detach())}

    run.run(steps, step_fn, save_every=50, lr_at=lr_at)
    return nets, base, run.record()


def save_checkpoint(path: str, base, unet_state: dict, clip_state: dict, vae_state: dict, metadata: dict) -> None:
    """One single-file checkpoint in the SDXL key layout (fp16), readable by ComfyUI's CheckpointLoaderSimple."""
    import json

    import comfy.utils

    base.diffusion_model.load_state_dict(unet_state)
    state = base.state_dict_for_saving(clip_state, vae_state)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    comfy.utils.save_torch_file(state, str(path), metadata={"realisid_mini": json.dumps(metadata)})


def replace_checkpoint_vae(path, vae_state: dict, vae_records: dict) -> None:
    """Swap a Mini base checkpoint's VAE for a retrained decoder of the same encoder (the UNet and text encoders,
    trained on that encoder's latents, are kept bit for bit); its training record takes the VAE's stages."""
    import comfy.utils

    state, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    prefix = "first_stage_model."
    new = {prefix + k: v.half() if v.is_floating_point() else v for k, v in vae_state.items()}
    if set(new) != {k for k in state if k.startswith(prefix)}:
        raise ValueError(f"{path}: its VAE tensors are not those of the Mini VAE; re-export the base instead")
    changed = [k for k in new if "taesd_decoder" not in k and not torch.equal(state[k], new[k])]
    if changed:
        raise ValueError(f"{path}: the new VAE's encoder differs from the checkpoint's ({len(changed)} tensors, e.g. "
                         f"{changed[0]}), so the base's latents would no longer be its own: retrain the base instead")
    info = json.loads((metadata or {}).get("realisid_mini", "{}"))
    info["training"] = {**vae_records, **{k: v for k, v in info.get("training", {}).items() if k not in vae_records}}
    state.update(new)
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in state.items()}, str(path),
                                metadata={"realisid_mini": json.dumps(info)})
