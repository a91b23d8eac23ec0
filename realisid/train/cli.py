"""Command line: `python -m realisid.train prepare ...`, `... encode-latents ...`, `... encode-text ...`, `... encode-identity ...`
and `... fit ...` (see docs/training.md)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

log = logging.getLogger("realisid.train")


def _prepare_parser(sub) -> None:
    p = sub.add_parser("prepare", help="analyse image-caption pairs once and write the training cache")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images with <stem>.txt captions")
    src.add_argument("--manifest", help='JSONL of {"image": path, "caption": text}')
    src.add_argument("--shards", help="WebDataset-style tars, brace ranges allowed: 'data-{000..009}.tar'")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--backend", choices=("embedded", "insightface", "mini"), default="embedded",
                   help="face backend: embedded (dlib), insightface (ArcFace, --insightface-root) or mini "
                        "(RealisID-Mini scenes, the bundled Mini face networks)")
    p.add_argument("--insightface-root", help="folder with models/<pack>/ (insightface backend)")
    p.add_argument("--min-face", type=int, default=64, help="minimum square face box side, pixels of the training image")
    p.add_argument("--min-score", type=float, default=0.9, help="detector score below which a face is ignored")
    p.add_argument("--box-expand", type=float, default=1.0, help="square box side = longer detection side * this")
    p.add_argument("--size", type=int, default=512, help="training image side (centre crop + resize)")
    p.add_argument("--detect-size", type=int, default=512, help="analyse faces at max(--size, this) pixels")
    p.add_argument("--hint-size", type=int, default=512, help="stored landmark hint side (0: render when training)")
    p.add_argument("--compact", action="store_true",
                   help="PNG-encoded images, no stored mask or hint (derived from box and landmarks when read)")
    p.add_argument("--allow-empty-captions", action="store_true", help="keep images without a caption")
    p.add_argument("--resume", action="store_true", help="continue a cache: skip every key already decided")
    p.add_argument("--num-shards", type=int, default=1,
                   help="split the input among this many prepare processes, each writing its own --out")
    p.add_argument("--shard-index", type=int, default=0, help="which of the --num-shards parts this process takes")
    p.add_argument("--provider", default="CPU",
                   help="onnxruntime provider of the insightface backend: CPU, CUDA, ROCM, CoreML")
    p.add_argument("--no-progress", action="store_true")


def _fit_parser(sub) -> None:
    p = sub.add_parser("fit", help="train the RealisID branches and projector")
    p.add_argument("--base", required=True, help="base checkpoint (.safetensors) with UNet, text encoder and VAE")
    p.add_argument("--cache", required=True, nargs="+",
                   help="cache folder(s) written by `prepare` (several: e.g. the shards of a parallel prepare)")
    p.add_argument("--out", required=True, help="output folder: checkpoints, state/, logs/, samples/")
    p.add_argument("--identity-space", choices=("clip", "arcface", "embedding"), default="clip")
    p.add_argument("--clip-vision", help="CLIP-vision model file (identity space clip)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=4, help="per process")
    p.add_argument("--lr", type=float, default=1e-5, help="LR of the branches (they start from the base UNet)")
    p.add_argument("--projector-lr", type=float, default=None,
                   help="LR of the identity projector, trained from scratch (default: --lr)")
    p.add_argument("--lr-warmup", type=int, default=0, help="optimizer steps of linear LR warm-up")
    p.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default="constant",
                   help="after the warm-up: constant, or decay to --lr-min-ratio x LR at the last step")
    p.add_argument("--lr-min-ratio", type=float, default=0.0)
    p.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default="adamw",
                   help="adamw8bit: bitsandbytes' 8-bit AdamW, a quarter of AdamW's optimizer-state memory")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--lambda-face", type=float, default=1.0)
    p.add_argument("--face-loss-norm", choices=("area", "none"), default="area")
    p.add_argument("--drop-image", type=float, default=0.05)
    p.add_argument("--drop-text", type=float, default=0.05)
    p.add_argument("--drop-both", type=float, default=0.05)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--grad-checkpointing", action="store_true", help="checkpoint the trainable ControlNets")
    p.add_argument("--checkpoint-unet", action="store_true",
                   help="also recompute the frozen UNet's activations in backward (less memory, ~30%% slower)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay (e.g. 0.9999); 0 disables EMA")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--keep-last", type=int, default=0, help="keep only the newest N states and step files (0: all)")
    p.add_argument("--export-dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="dtype of the RealisID files written (bf16 halves them; the state stays fp32)")
    p.add_argument("--sample-every", type=int, default=0, help="0 disables sample images")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--sample-count", type=int, default=2, help="preview images per sampling")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--resume", help="a state folder (OUT/state/step-N) or 'latest'")
    p.add_argument("--init", help="start the branches and projector from this RealisID .safetensors (e.g. a "
                                  "committed model) with a fresh optimizer; ignored with --resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop-size", type=int, default=64, help="local branch crop side in latent cells")
    p.add_argument("--branches", choices=("both", "local", "global"), default="both",
                   help="train both branches (RealisID) or one alone (the paper's ablations)")
    p.add_argument("--hint", choices=("cache", "kps5"), default="cache",
                   help="the local branch's hint: the cache's landmark layout, or 5 keypoints drawn from its 68 "
                        "landmarks (the paper's 68-landmark vs 5-keypoint comparison); saved in the model")
    p.add_argument("--global-hint", choices=("box_mask", "face_hint"), default="box_mask",
                   help="the global branch's hint: the box mask (RealisID), or the face's hint drawn in its box on "
                        "the whole image (with --branches global --hint kps5: the InstantID-style baseline, one "
                        "identity ControlNet on the full latent with 5 keypoints); saved in the model")
    p.add_argument("--ip-adapter", action="store_true",
                   help="also train an IP-Adapter: the identity tokens read by every cross-attention of the frozen "
                        "base inside the face's box (InstantID's decoupled cross-attention; its to_k copies the "
                        "base's, its to_v starts at zero); saved in the model, applied at sampling by RealisID "
                        "InstantID Regional Attention")
    p.add_argument("--val-cache", nargs="+", default=None,
                   help="held-out cache folder(s) prepared like --cache (other people): identity use on the live "
                        "weights every --val-every steps, logged to TensorBoard and OUT/validation.jsonl")
    p.add_argument("--val-every", type=int, default=0, help="steps between validations (0: none)")
    p.add_argument("--val-n", type=int, default=64, help="held-out samples per validation (the first N, in order)")
    p.add_argument("--val-sample-every", type=int, default=0,
                   help="steps between sampled validations: the first --val-sample-n held-out faces sampled with the "
                        "live weights as inference does, read back by --val-backend (found, IoU, identity cosine)")
    p.add_argument("--val-sample-n", type=int, default=4)
    p.add_argument("--val-backend", choices=("embedded", "insightface", "mini"), default=None,
                   help="the face backend that prepared the held-out cache (its embeddings are the references)")
    p.add_argument("--val-insightface-root", default=None, help="models folder of --val-backend insightface")
    p.add_argument("--projector", default="{}", help='JSON overrides of the projector config, e.g. \'{"depth": 2}\'')
    p.add_argument("--text-cache-size", type=int, default=4096)
    p.add_argument("--max-text-chunks", type=int, default=3, help="captions are cut to this many 77-token chunks")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers reading the cache (0: none)")
    p.add_argument("--prefetch", type=int, default=2, help="batches each worker reads ahead")
    p.add_argument("--cache-latents", action="store_true", help="keep VAE latents in memory (small data sets)")
    p.add_argument("--overfit", action="store_true", help="sanity check: train on one fixed batch (the loss must fall)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI folder (default $COMFYUI_DIR)")


def _encode_parser(sub) -> None:
    p = sub.add_parser("encode-latents", help="the frozen VAE's latents of prepared caches, computed once and kept "
                       "beside them (fit then reads them instead of running the VAE)")
    p.add_argument("--base", required=True, help="the base checkpoint fit will train on (its VAE encodes)")
    p.add_argument("--cache", required=True, nargs="+", help="cache folder(s): each gets latents/<base key>.safetensors")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cpu", action="store_true", help="encode on the CPU")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI folder (default $COMFYUI_DIR)")
    t = sub.add_parser("encode-text", help="the frozen text encoders' outputs of each cache's captions, computed "
                       "once and kept beside them (fit then reads them instead of running the text encoders)")
    t.add_argument("--base", required=True, help="the base checkpoint fit will train on (its text encoders)")
    t.add_argument("--cache", required=True, nargs="+", help="cache folder(s): each gets text/<base key>.safetensors")
    t.add_argument("--cpu", action="store_true", help="encode on the CPU")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI folder (default $COMFYUI_DIR)")
    i = sub.add_parser("encode-identity", help="the frozen CLIP vision's identity tokens of each sample's face crop "
                       "(identity space clip), computed once and kept beside the caches (fit then reads them)")
    i.add_argument("--base", required=True, help="the base checkpoint fit will train on")
    i.add_argument("--clip-vision", required=True, help="the CLIP-vision file fit will use (--clip-vision)")
    i.add_argument("--cache", required=True, nargs="+",
                   help="cache folder(s): each gets identity/<CLIP-vision key>.safetensors")
    i.add_argument("--batch-size", type=int, default=16)
    i.add_argument("--cpu", action="store_true", help="encode on the CPU")
    i.add_argument("--no-progress", action="store_true")
    i.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI folder (default $COMFYUI_DIR)")


def run_encode(args) -> dict:
    _boot_comfy(args.comfyui, args.cpu)
    import comfy.model_management as mm
    import torch

    from realisid.train import latents
    from realisid.train.host import FrozenHost

    device = torch.device("cpu") if args.cpu else mm.get_torch_device()
    if args.command == "encode-identity":
        host = FrozenHost(args.base, device, clip_vision_path=args.clip_vision)
        return latents.encode_identities(host, args.cache, latents.base_key(args.clip_vision), args.batch_size,
                                         progress=not args.no_progress)
    host = FrozenHost(args.base, device)
    key = latents.base_key(args.base)
    if args.command == "encode-text":
        return latents.encode_texts(host, args.cache, key, progress=not args.no_progress)
    return latents.encode_caches(host, args.cache, key, args.batch_size, progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m realisid.train", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _prepare_parser(sub)
    _fit_parser(sub)
    _encode_parser(sub)
    return parser


def run_prepare(args) -> dict:
    from realisid.train import sources
    from realisid.train.prepare import PrepareOptions, make_analyzer, prepare_cache

    if args.images:
        samples = sources.from_folder(args.images)
    elif args.manifest:
        samples = sources.from_manifest(args.manifest)
    else:
        samples = sources.from_shards(args.shards)
    opts = PrepareOptions(size=args.size, detect_size=args.detect_size, min_face=args.min_face, min_score=args.min_score,
                          box_expand=args.box_expand, hint_size=0 if args.compact else args.hint_size,
                          compact=args.compact,
                          require_caption=not args.allow_empty_captions, resume=args.resume)
    if args.num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1 (the number of parallel prepare processes), got {args.num_shards}")
    if not 0 <= args.shard_index < args.num_shards:
        raise ValueError(f"--shard-index must be in [0, --num-shards = {args.num_shards}), got {args.shard_index}")
    samples = sources.shard_of(samples, args.num_shards, args.shard_index)
    analyzer = make_analyzer(args.backend, args.insightface_root, args.min_score, args.provider)
    stats = prepare_cache(samples, analyzer, args.out, opts, progress=not args.no_progress)
    log.info("cache %s: %s", args.out, json.dumps(stats))
    return stats


def _boot_comfy(comfyui: str | None, cpu: bool) -> None:
    """Put ComfyUI on sys.path (unless `comfy` is importable already) before anything imports comfy."""
    if "comfy.model_management" in sys.modules:
        return
    if comfyui:
        from realisid.host import comfy_host

        comfy_host.boot(comfyui, cpu=cpu)
        return
    try:
        import comfy.cli_args
    except ImportError as e:
        raise SystemExit("fit needs ComfyUI: pass --comfyui DIR or set COMFYUI_DIR") from e
    if cpu:
        comfy.cli_args.args.cpu = True


def config_from_args(args):
    from realisid.train.config import TrainConfig
    from realisid.train.loop import latest_state

    try:
        projector = json.loads(args.projector)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--projector is not valid JSON: {e}") from e
    resume = latest_state(args.out) if args.resume == "latest" else args.resume
    if args.resume == "latest" and resume is None:
        log.warning("--resume latest: no saved state in %s/state; starting fresh", args.out)
    return TrainConfig(
        base=args.base, cache=args.cache, out=args.out, identity_space=args.identity_space,
        clip_vision=args.clip_vision, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        projector_lr=args.projector_lr, lr_warmup=args.lr_warmup, lr_schedule=args.lr_schedule,
        lr_min_ratio=args.lr_min_ratio, optimizer=args.optimizer, keep_last=args.keep_last, export_dtype=args.export_dtype,
        sample_count=args.sample_count, max_text_chunks=args.max_text_chunks, workers=args.workers,
        prefetch=args.prefetch,
        weight_decay=args.weight_decay, lambda_face=args.lambda_face, face_loss_norm=args.face_loss_norm,
        drop_image=args.drop_image, drop_text=args.drop_text, drop_both=args.drop_both,
        mixed_precision=args.mixed_precision, grad_checkpointing=args.grad_checkpointing,
        checkpoint_unet=args.checkpoint_unet, grad_accum=args.grad_accum,
        ema=args.ema, save_every=args.save_every, sample_every=args.sample_every, sample_steps=args.sample_steps,
        resume=resume, seed=args.seed, crop_size=args.crop_size, projector=projector, log_every=args.log_every,
        max_grad_norm=args.max_grad_norm, text_cache_size=args.text_cache_size,
        cache_latents=args.cache_latents, overfit=args.overfit, cpu=args.cpu, init=args.init,
        branches=args.branches, hint=args.hint, global_hint=args.global_hint, ip_adapter=args.ip_adapter,
        val_cache=args.val_cache,
        val_every=args.val_every, val_n=args.val_n, val_sample_every=args.val_sample_every,
        val_sample_n=args.val_sample_n, val_backend=args.val_backend, val_insightface_root=args.val_insightface_root)


def run_fit(args) -> list[float]:
    cpu = args.cpu or os.environ.get("ACCELERATE_USE_CPU") == "1"
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and not cpu:
        import torch

        if torch.cuda.is_available():  # ComfyUI's device is the current CUDA device: make it this rank's
            torch.cuda.set_device(int(local_rank))
    _boot_comfy(args.comfyui, cpu)
    from realisid.train.loop import fit

    return fit(config_from_args(args))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "prepare":
            run_prepare(args)
        elif args.command in ("encode-latents", "encode-text", "encode-identity"):
            run_encode(args)
        else:
            run_fit(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        log.error("%s", e)
        return 2
    return 0
