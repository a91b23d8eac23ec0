"""Training throughput of RealisID: images/s and peak memory of the trainer's step (realisid.train.step.step_loss).

One step = branches (per-sample branch_residuals, the shared forward) + frozen UNet forward, backward, AdamW.
The frozen encoders (VAE, text, CLIP vision) are left out: their inputs are random tensors of the right shapes,
and they add a fixed per-image cost (or none with cached latents/embeddings). No files are read.

    python benchmarks/train_throughput.py                                   # tiny SDXL-shaped, CPU
    python benchmarks/train_throughput.py --real-size --size 1024 --batch-size 4 --mixed-precision bf16 \
        --grad-checkpointing --device cuda                                  # real SDXL UNet shapes, random weights
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from real_shapes import REAL_UNET  # noqa: E402  (shared with the other benchmark)

REPO = pathlib.Path(__file__).resolve().parents[1]
log = logging.getLogger("train_throughput")

TINY_PROJECTOR = {"dim": 32, "depth": 1, "dim_head": 16, "heads": 2, "num_queries": 4, "ff_mult": 2}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=("sdxl", "sd15"), default="sdxl")
    p.add_argument("--real-size", action="store_true", help="the real UNet config with random weights")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 1024 real SDXL, 512 real "
                   "SD1.5, 64 tiny)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--crop-size", type=int, default=None, help="local crop in latent cells (default 64 real, 4 tiny)")
    p.add_argument("--face-side", type=float, default=0.2, help="face box side as a fraction of the image")
    p.add_argument("--id-tokens", type=int, default=257, help="identity source tokens (257 = CLIP ViT-H/14)")
    p.add_argument("--id-dim", type=int, default=1280, help="identity source width (1280 = CLIP ViT-H/14)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--checkpoint-unet", action="store_true", help="recompute the frozen UNet in backward")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", help="also write the result to this file")
    return p.parse_args(argv)


def _boot(device: str) -> None:
    sys.path.insert(0, str(REPO))
    from tests.helpers import host

    host.bootstrap()
    if device != "cpu":
        import comfy.cli_args

        comfy.cli_args.args.cpu = False


def build(args):
    """(base BaseModel, RealisIDModel, unet_config) on args.device, random weights."""
    import comfy.supported_models
    import torch

    from realisid import checkpoint
    from realisid.train.host import freeze_unet
    from tests.helpers import tiny_host_models as tiny

    config = dict(REAL_UNET[args.family]) if args.real_size else tiny.unet_config(args.family)
    cls = comfy.supported_models.SDXL if args.family == "sdxl" else comfy.supported_models.SD15
    model_config = cls(config)
    model_config.unet_config.update(config)  # SD15's extra config would override the heads
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]
    if args.device == "cpu":
        weight_dtype = torch.float32
    model_config.set_inference_dtype(weight_dtype, None)
    base = model_config.get_model({}, device=args.device)
    gen = torch.Generator(device=args.device).manual_seed(0)
    with torch.no_grad():
        for p in base.diffusion_model.parameters():  # comfy ops leave weights uninitialised
            p.copy_(torch.randn(p.shape, generator=gen, device=args.device, dtype=torch.float32) * 0.02)
    base.to(args.device)
    freeze_unet(base.diffusion_model)
    projector = None if args.real_size else TINY_PROJECTOR
    model = checkpoint.build_realisid_model(model_config.unet_config,
                                            base_state_dict={k: v.cpu() for k, v in
                                                             base.diffusion_model.state_dict().items()},
                                            identity_space="benchmark",
                                            projector_config={**(projector or {}), "embedding_dim": args.id_dim,
                                                              "source_tokens": args.id_tokens},
                                            crop_size=args.crop_size)
    model.nets.to(args.device).train()
    return base, model, model_config.unet_config


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run(args) -> dict:
    import torch
    from accelerate import Accelerator

    from realisid.machine import description
    from realisid.train.config import TrainConfig
    from realisid.train.step import BranchForward, StepInputs, step_loss

    args.size = args.size or ((1024 if args.family == "sdxl" else 512) if args.real_size else 64)
    args.crop_size = args.crop_size or (64 if args.real_size else 4)
    if args.device == "cpu":
        args.id_tokens, args.id_dim = (args.id_tokens, args.id_dim) if args.real_size else (1, 16)
    acc = Accelerator(mixed_precision=args.mixed_precision, cpu=args.device == "cpu")
    base, model, unet_config = build(args)
    forward = BranchForward(model, checkpointed=args.grad_checkpointing)
    opt = torch.optim.AdamW([p for p in model.nets.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-2)
    forward, opt = acc.prepare(forward, opt)
    cfg = TrainConfig(base="", cache="", out="", checkpoint_unet=args.checkpoint_unet)
    b, h = args.batch_size, args.size // 8
    dev = acc.device
    ms = base.model_sampling
    gen = torch.Generator().manual_seed(0)
    half = args.face_side / 2
    boxes = torch.tensor([[0.5 - half, 0.4 - half, 0.5 + half, 0.4 + half]] * b)
    mask = torch.zeros(b, 1, h, h, device=dev)
    mask[:, :, int((0.4 - half) * h):int((0.4 + half) * h), int((0.5 - half) * h):int((0.5 + half) * h)] = 1
    adm = unet_config.get("adm_in_channels")

    def inputs() -> StepInputs:
        idx = torch.randint(0, len(ms.sigmas), (b,), generator=gen)
        return StepInputs(
            x0=torch.randn(b, 4, h, h, generator=gen).to(dev), noise=torch.randn(b, 4, h, h, generator=gen).to(dev),
            sigma=ms.sigmas.cpu()[idx].float().to(dev),
            identity=torch.randn(b, args.id_tokens, args.id_dim, generator=gen).to(dev),
            hints=torch.rand(b, 3, args.crop_size * 8, args.crop_size * 8, generator=gen).to(dev), boxes=boxes,
            context=torch.randn(b, 77, unet_config["context_dim"], generator=gen).to(dev),
            y=None if not adm else torch.randn(b, adm, generator=gen).to(dev), drop_identity=[False] * b, mask=mask)

    compute_dtype = base.manual_cast_dtype or base.get_dtype()

    def step() -> float:
        loss, _ = step_loss(forward, base.diffusion_model, ms, inputs(), cfg, acc.autocast, compute_dtype)
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {
        "family": args.family, "real_size": args.real_size, "image_size": args.size, "batch_size": b,
        "crop_size": args.crop_size, "mixed_precision": args.mixed_precision,
        "grad_checkpointing": args.grad_checkpointing, "checkpoint_unet": args.checkpoint_unet, "device": str(dev),
        "machine": description(dev),
        "trainable_params": sum(p.numel() for p in model.nets.parameters() if p.requires_grad),
        "steps": args.steps, "seconds": round(seconds, 3), "images_per_s": round(b * args.steps / seconds, 3),
        "peak_memory_mb": round(peak_memory_mb(str(dev)), 1),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "process RSS",
        "final_loss": round(losses[-1], 5),
    }
    return result


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    _boot(args.device)
    result = run(args)
    log.info("%s", json.dumps(result, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
