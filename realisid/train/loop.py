"""The RealisID trainer (accelerate): frozen ComfyUI base, trainable local + global branches and projector.

Per optimizer step: this rank's batches (data.py), their VAE latents (stored by encode-latents, or encoded here),
noise, sigmas and dropout from the step's generator (rng.py), the loss of step.py (the forward shared with
sampling), the optimizer with its schedule (optim.py), EMA (ema.py), logs, resumable states and RealisID files
(outputs.py), previews (previews.py). Runs unchanged under `accelerate launch` (DDP: only the branches are wrapped).
Settings: config.py.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from realisid import checkpoint
from realisid.control import FaceCondition
from realisid.geometry import LATENT_DOWNSCALE
from realisid.identity_sources import clip_space
from realisid.ip_adapter import attn2_widths, init_from_unet
from realisid.machine import machine
from realisid.train import latents, previews
from realisid.train.config import PRECISIONS, TrainConfig
from realisid.train.data import (
    CachedFaceDataset,
    StepBatches,
    batch_indices,
    collate,
    latent_mask,
    make_loader,
    to_device,
)
from realisid.train.ema import EMA
from realisid.train.host import FrozenHost
from realisid.train.optim import lr_factor, make_optimizer, param_groups, set_lrs
from realisid.train.outputs import EXPORT_DTYPES, file_sha256, rotate, write_realisid
from realisid.train.rng import step_generator
from realisid.train.step import BranchForward, StepInputs, dropout_flags, sample_sigmas, step_loss
from realisid.train.validation import HeldOut, identity_use_of, sampled_faces_of

log = logging.getLogger(__name__)
CURVE_FILE = "realisid.log.jsonl"
VALIDATION_FILE = "validation.jsonl"  # one line per validation (fit --val-cache)


# ---- trainer -------------------------------------------------------------------------------------------------------
class Progress:
    """The optimizer-step counter, saved with the training state. The randomness needs no saving: each rank's
    noise, sigmas and dropout come from rng.step_generator(seed, rank, micro_step)."""

    def __init__(self):
        self.step = 0
        self.seconds = 0.0  # training wall time over every run of this output folder (the model card's figure)

    def state_dict(self) -> dict:
        return {"step": self.step, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.seconds = float(state.get("seconds", 0.0))  # states written before the time was recorded


class Trainer:
    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.accelerator = self._make_accelerator()
        acc = self.accelerator
        torch.manual_seed(cfg.seed + acc.process_index)
        weight_dtype = PRECISIONS[cfg.mixed_precision] if acc.device.type != "cpu" else torch.float32
        self.host = FrozenHost(cfg.base, acc.device, weight_dtype, cfg.clip_vision if cfg.identity_space == "clip"
                               else None, cfg.text_cache_size, cfg.max_text_chunks)
        self.dataset = CachedFaceDataset(cfg.caches, cfg.crop_size * LATENT_DOWNSCALE, kps5_hints=cfg.hint == "kps5",
                                         identity_key=self._identity_store_key())
        self.held_out = None if not cfg.val_cache else HeldOut(
            cfg.val_cache, cfg.crop_size * LATENT_DOWNSCALE, cfg.hint == "kps5", cfg.val_n, cfg.batch_size)
        self._check_spaces()
        self._val_faces = self._sampled_validation_set() if cfg.val_sample_every else None
        self.model = self._build_model()
        self.forward_module = BranchForward(self.model, checkpointed=cfg.grad_checkpointing)
        optimizer = make_optimizer(cfg.optimizer, param_groups(self.model.nets, cfg.lrs(), cfg.weight_decay))
        self.forward_module, self.optimizer = acc.prepare(self.forward_module, optimizer)
        self.ema = EMA(self.model.nets, cfg.ema) if cfg.ema > 0 else None
        self.progress = Progress()
        acc.register_for_checkpointing(self.progress)
        if self.ema is not None:
            acc.register_for_checkpointing(self.ema)
        if cfg.resume:
            acc.load_state(cfg.resume)
            log.info("resumed from %s at step %d", cfg.resume, self.progress.step)
        self._latent_cache = self._stored_latents()
        self._read_stored_texts()
        self._saved_step = self.progress.step if cfg.resume else -1
        self._sigterm = False

    def _make_accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        log_with = "tensorboard" if _has_tensorboard() else None
        ddp = DistributedDataParallelKwargs(find_unused_parameters=False)
        acc = Accelerator(mixed_precision=self.cfg.mixed_precision, gradient_accumulation_steps=self.cfg.grad_accum,
                          log_with=log_with, cpu=self.cfg.cpu or os.environ.get("ACCELERATE_USE_CPU") == "1",
                          project_config=ProjectConfiguration(project_dir=str(self.cfg.out), logging_dir=str(
                              Path(self.cfg.out) / "logs")), kwargs_handlers=[ddp])
        if log_with:
            acc.init_trackers("realisid", config=_flat_config(self.cfg))
        return acc

    def _check_spaces(self) -> None:
        if self.cfg.identity_space == "clip":
            return
        spaces = self.dataset.spaces()
        if len(spaces) != 1:
            raise ValueError(f"the cache mixes embedding spaces {sorted(spaces)}; prepare it with one face backend")
        space = next(iter(spaces))
        if self.cfg.identity_space == "arcface" and not space.startswith("arcface"):
            raise ValueError(f"--identity-space arcface needs a cache prepared with --backend insightface (ArcFace "
                             f"embeddings); this cache holds '{space}' embeddings")
        self.embedding_space = space

    def _identity_layout(self) -> tuple[str, int, int]:
        """(identity_space, source_tokens, embedding_dim) of the identity source."""
        if self.cfg.identity_space == "clip":
            probe = self.host.encode_identity_clip(torch.zeros(1, 224, 224, 3, dtype=torch.uint8))
            return clip_space(probe.shape[2], probe.shape[1]), probe.shape[1], probe.shape[2]
        emb = self.dataset[0]["embedding"]
        if emb.numel() == 0:
            raise ValueError("the cache has no face embeddings; use --identity-space clip")
        return self.embedding_space, 1, emb.numel()

    def _build_model(self) -> checkpoint.RealisIDModel:
        space, tokens, dim = self._identity_layout()
        projector = {**self.cfg.projector, "embedding_dim": dim, "source_tokens": tokens}
        torch.manual_seed(self.cfg.seed)  # same initial weights on every rank
        model = checkpoint.build_realisid_model(self.host.unet_config, base_state_dict=self.host.unet.state_dict(),
                                                identity_space=space, projector_config=projector,
                                                crop_size=self.cfg.crop_size, with_local=self.cfg.branches != "global",
                                                with_global=self.cfg.branches != "local",
                                                global_hint=self.cfg.global_hint,
                                                ip_adapter_widths=attn2_widths(self.host.unet) if self.cfg.ip_adapter
                                                else None)
        if model.ip_adapter is not None:
            init_from_unet(model.ip_adapter, self.host.unet)
        model.config.update(self._hint_conventions())
        if self.cfg.init and not self.cfg.resume:
            self._warm_start(model)
        if self.cfg.identity_space == "clip" and self.accelerator.is_main_process:  # only the main process saves
            # the identity space depends on the exact encoder: users must load the same file at inference
            model.config["clip_vision"] = {"file": Path(self.cfg.clip_vision).name,
                                           "sha256": self._clip_vision_sha256}
        model.nets.to(self.accelerator.device).train()
        return model

    def _warm_start(self, model: checkpoint.RealisIDModel) -> None:
        """Start the branches and the projector from an earlier RealisID file (a committed model, or the last file
        of a run whose state is gone) instead of the base UNet; a fresh optimizer. Its config must be the one this
        run would build."""
        previous = checkpoint.load_realisid(self.cfg.init, dtype=torch.float32)
        for key in ("identity_space", "crop_size", "projector", "local", "global", "ip_adapter", "box_expand", "hint"):
            if key in model.config and previous.config.get(key) != model.config[key]:
                raise ValueError(f"--init {self.cfg.init}: its {key} {previous.config.get(key)!r} differs from this "
                                 f"run's {model.config[key]!r}; train with the same base, cache and --crop-size")
        model.nets.load_state_dict(previous.nets.state_dict(), strict=True)
        log.info("warm start from %s", self.cfg.init)

    def _hint_conventions(self) -> dict:
        """The box squaring and landmark layout of the cache, saved in the checkpoint so inference draws the same."""
        rows = [row for _, row in self.dataset.rows]
        expands = {row.get("box_expand", 1.0) for row in rows}
        hints = {row.get("hint", "landmarks68") for row in rows}
        if len(expands) > 1 or len(hints) > 1:
            raise ValueError(f"the cache mixes box_expand {sorted(expands)} / hint layouts {sorted(hints)}: prepare "
                             "it with one setting")
        return {"box_expand": float(expands.pop()), "hint": "kps5" if self.cfg.hint == "kps5" else hints.pop()}

    # data -----------------------------------------------------------------------------------------------------------
    def _batch(self, micro_step: int) -> dict:
        """This rank's micro-batch of `micro_step`, read in this process (the loop reads through the DataLoader)."""
        acc = self.accelerator
        idx = batch_indices(len(self.dataset), self.cfg.seed, micro_step, self.cfg.batch_size, acc.process_index,
                            acc.num_processes)
        return collate([self.dataset[i] for i in idx])

    def _loader(self, start_micro: int):
        acc, cfg = self.accelerator, self.cfg
        sampler = StepBatches(len(self.dataset), cfg.seed, 0 if cfg.overfit else start_micro, cfg.batch_size,
                              acc.process_index, acc.num_processes, fixed=cfg.overfit)
        return make_loader(self.dataset, sampler, cfg.workers, cfg.prefetch, pin_memory=acc.device.type == "cuda")

    def _stored_latents(self) -> dict[int, torch.Tensor]:
        """The latents `encode-latents` stored for this base beside the caches (realisid/train/latents.py), read
        into memory; the base file is hashed only when some cache has a store at all."""
        if not any((Path(c) / "latents").is_dir() for c in self.cfg.caches):
            return {}
        stored = latents.stored_latents(self.dataset, self._base_key)
        log.info("%d of %d samples' VAE latents read from the caches' stores", len(stored), len(self.dataset))
        return {i: t.to(self.accelerator.device) for i, t in stored.items()}

    @functools.cached_property
    def _base_key(self) -> str:
        """The base file's store key (its SHA-256 prefix): hashed once, an SDXL file takes seconds."""
        return latents.base_key(self.cfg.base)

    def _read_stored_texts(self) -> None:
        """The captions `encode-text` stored for this base beside the caches: the text encoders then only run for
        captions the stores lack (held-out ones, previews)."""
        if not any((Path(c) / "text").is_dir() for c in self.cfg.caches):
            return
        stored = latents.StoredTexts(self.cfg.caches, self._base_key)
        if len(stored):
            self.host.stored_texts = stored
            log.info("%d captions' text-encoder outputs read from the caches' stores", len(stored))

    def _latents(self, batch: dict) -> torch.Tensor:
        """Stored (or, with cache_latents, already encoded) latents, the VAE for the rest of the batch."""
        indices = batch["index"]
        missing = [j for j, i in enumerate(indices) if i not in self._latent_cache]
        fresh = dict(zip(missing, self.host.encode_latents(batch["image"][missing]), strict=True)) if missing else {}
        if self.cfg.cache_latents:
            self._latent_cache.update({indices[j]: lat for j, lat in fresh.items()})
        return torch.stack([fresh[j] if j in fresh else self._latent_cache[i] for j, i in enumerate(indices)])

    def _identity_store_key(self) -> str | None:
        """The CLIP-vision file's store key when some cache holds `encode-identity` tokens (hashed only then)."""
        cfg = self.cfg
        if cfg.identity_space != "clip" or not any((Path(c) / "identity").is_dir() for c in cfg.caches):
            return None
        return latents.key_of(self._clip_vision_sha256)

    @functools.cached_property
    def _clip_vision_sha256(self) -> str:
        """Hashed once: recorded in the model's config and keying the identity store (ViT-H/14 is 2.5 GB)."""
        return file_sha256(self.cfg.clip_vision)

    def _identity_source(self, batch: dict) -> torch.Tensor:
        if self.cfg.identity_space == "clip":
            if "identity" in batch:  # stored by encode-identity: no CLIP-vision pass
                return batch["identity"].to(self.accelerator.device)
            return self.host.encode_identity_clip(batch["face_crop"])
        return batch["embedding"].to(self.accelerator.device)

    # one micro-step ---------------------------------------------------------------------------------------------------
    def compute_loss(self, batch: dict, generator: torch.Generator, latents: torch.Tensor | None = None,
                     dropout: bool = True) -> tuple[torch.Tensor, dict]:
        """The loss of one micro-batch (collated CPU items); `generator` draws its noise, sigmas and dropout.
        latents: the batch's VAE latents when they come from elsewhere (the held-out set); dropout=False keeps
        every condition (validation)."""
        dev = self.accelerator.device
        batch = to_device(batch, dev)
        b = batch["image"].shape[0]
        x0 = self._latents(batch) if latents is None else latents.to(dev)
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        sigma = sample_sigmas(self.host.model_sampling, b, generator).to(dev)
        drop_image, drop_text = dropout_flags(b, self.cfg, generator) if dropout else ([False] * b, [False] * b)
        captions = ["" if d else c for c, d in zip(batch["caption"], drop_text, strict=True)]
        context, y = self.host.encode_captions(captions, tuple(batch["image"].shape[-2:]))
        inputs = StepInputs(x0=x0, noise=noise, sigma=sigma, identity=self._identity_source(batch),
                            hints=batch["hint"], boxes=batch["box"], context=context, y=y,
                            drop_identity=drop_image, mask=latent_mask(batch["mask"], tuple(x0.shape[-2:])))
        return step_loss(self.forward_module, self.host.unet, self.host.model_sampling, inputs, self.cfg,
                         self.accelerator.autocast, self.host.compute_dtype)

    def _train_step(self, batches) -> tuple[float, dict]:
        """One optimizer step (grad_accum micro-batches); returns the rank-averaged loss and the last parts."""
        acc, cfg = self.accelerator, self.cfg
        factor = lr_factor(self.progress.step, cfg.steps, cfg.lr_warmup, cfg.lr_schedule, cfg.lr_min_ratio)
        set_lrs(self.optimizer, cfg.lrs(), factor)
        total, started = 0.0, time.perf_counter()
        for k in range(cfg.grad_accum):
            micro = 0 if cfg.overfit else self.progress.step * cfg.grad_accum + k
            batch = next(batches)
            with acc.accumulate(self.forward_module):
                loss, parts = self.compute_loss(batch, step_generator(cfg.seed, acc.process_index, micro))
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.model.nets.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            total += float(acc.reduce(loss.detach(), reduction="mean")) / cfg.grad_accum
        self.progress.step += 1
        if self.ema is not None:
            self.ema.update()
        self.progress.seconds += time.perf_counter() - started
        return total, {**parts, "lr_factor": factor}

    # the loop -------------------------------------------------------------------------------------------------------
    def fit(self) -> list[float]:
        """Train to cfg.steps optimizer steps (or until SIGTERM); returns the rank-averaged loss of each step run
        here. Always ends with a resumable state and a RealisID file of the last step."""
        acc, cfg = self.accelerator, self.cfg
        losses = []
        if acc.is_main_process:
            log.info("training %d params on %d samples, %d process(es), device %s", _count(self.model.nets),
                     len(self.dataset), acc.num_processes, acc.device)
        start = (time.perf_counter(), self.progress.step)  # a resumed run counts only the steps it runs
        bar = tqdm(total=cfg.steps, initial=self.progress.step, desc="fit", unit="step",
                   disable=not (acc.is_main_process and cfg.progress))
        batches = iter(self._loader(self.progress.step * cfg.grad_accum))
        previous_handler = self._catch_sigterm()
        try:
            while self.progress.step < cfg.steps and not self._stop_requested():
                loss, parts = self._train_step(batches)
                losses.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                self._after_step(loss, parts, start)
        finally:
            bar.close()
            del batches  # ends the DataLoader workers
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        self._final_save(interrupted=self.progress.step < cfg.steps)
        acc.end_training()
        return losses

    def _catch_sigterm(self):
        """A cluster's SIGTERM (preemption, time limit) ends the run after the current step, with a saved state."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_sigterm(signum, frame):
            log.warning("SIGTERM: saving the state after this step, then stopping")
            self._sigterm = True

        return signal.signal(signal.SIGTERM, on_sigterm)

    def _stop_requested(self) -> bool:
        """Whether any rank got SIGTERM (all ranks then stop at the same step, or DDP would hang)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return self._sigterm
        flag = torch.tensor([1.0 if self._sigterm else 0.0], device=acc.device)
        return bool(acc.reduce(flag, reduction="sum").item() > 0)

    def _final_save(self, interrupted: bool) -> None:
        step = self.progress.step
        if step != self._saved_step:
            self.checkpoint(step, model_file=interrupted)
        if interrupted:
            log.warning("stopped at step %d of %d; resume with --resume latest", step, self.cfg.steps)
        elif self.accelerator.is_main_process:
            self.save_model(self.out / "realisid-final.safetensors")
        self.accelerator.wait_for_everyone()

    def _after_step(self, loss: float, parts: dict, start: tuple[float, int]) -> None:
        acc, cfg, step = self.accelerator, self.cfg, self.progress.step
        if step % cfg.log_every == 0 or step == 1:
            t0, step0 = start
            images = (step - step0) * cfg.batch_size * cfg.grad_accum * acc.num_processes
            rate = images / max(time.perf_counter() - t0, 1e-9)
            acc.log({"loss": loss, "mse": float(parts["mse"]), "face_mse": float(parts["face_mse"]),
                     "images_per_s": rate, "lr": cfg.lr * float(parts.get("lr_factor", 1.0))}, step=step)
            if acc.is_main_process:
                log.info("step %d loss %.5f (mse %.5f face %.5f) %.2f img/s", step, loss, float(parts["mse"]),
                         float(parts["face_mse"]), rate)
                self._append_curve({"step": step, "seconds": round(self.progress.seconds, 1), "loss": loss,
                                    "mse": float(parts["mse"]), "face_mse": float(parts["face_mse"])})
        if cfg.save_every and step % cfg.save_every == 0:
            self.checkpoint(step)
        if cfg.sample_every and step % cfg.sample_every == 0 and acc.is_main_process:
            self.log_samples(step)
        if cfg.val_every and step % cfg.val_every == 0:
            self.validate(step)
        if cfg.val_sample_every and step % cfg.val_sample_every == 0 and acc.is_main_process:
            self.validate_sampled(step)

    def validate(self, step: int) -> dict:
        """Identity use on the held-out set with the live weights (every rank computes it, so DDP's collective
        calls stay in step; the main process logs): TensorBoard `val/*` and OUT/validation.jsonl."""
        held = self.held_out

        def loss_fn(batch, generator):
            latents = held.latents(batch, self.host.encode_latents)
            return self.compute_loss(batch, generator, latents=latents, dropout=False)

        self.model.nets.eval()
        try:
            figures = identity_use_of(loss_fn, held.batches(), self.cfg.seed, held.n).as_dict()
        finally:
            self.model.nets.train()
        self.accelerator.log({f"val/{k}": v for k, v in figures.items() if k != "n"}, step=step)
        if self.accelerator.is_main_process:
            log.info("step %d held-out face-box loss %.5f own identity, %.5f another's (gap %.1f %%)", step,
                     figures["face_mse_own"], figures["face_mse_other"], 100 * figures["gap"])
            with open(self.out / VALIDATION_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **figures}) + "\n")
        return figures

    def _sampled_validation_set(self) -> tuple[list[dict], str, object]:
        """(held-out items, their embedding space, the backend that reads the samples back), checked at start-up
        so a wrong --val-cache or --val-backend fails before training, not at its first validation."""
        from realisid.train.prepare import make_analyzer

        held = self.held_out.dataset
        count = min(self.cfg.val_sample_n, len(held))
        items = [held[i] for i in range(count)]
        spaces = {held.rows[i][1].get("space", "") for i in range(count)}
        if len(spaces) != 1 or not all(len(it["embedding"]) for it in items):
            raise ValueError(f"--val-cache {self.cfg.val_cache}: the sampled validation needs one embedding space "
                             f"in its first {count} samples, found {sorted(spaces)}")
        # lenient detection: a generated face counts when the backend sees it at all; the box match decides
        analyzer = make_analyzer(self.cfg.val_backend, self.cfg.val_insightface_root, min_score=0.4)
        return items, spaces.pop(), analyzer

    def validate_sampled(self, step: int) -> dict:
        """The first held-out faces sampled with the live (EMA) weights as inference samples them, read back by
        the validation backend (`sampled_faces_of`): TensorBoard `val/sample_*` and OUT/validation.jsonl. Main
        process only (sampling is not a collective)."""
        items, space, analyzer = self._val_faces
        try:
            images = self.sample_images(items=items)
            rgb = (images.clamp(0, 1).cpu().numpy() * 255).round().astype("uint8")
            figures = sampled_faces_of(rgb, np.stack([it["box"].numpy() for it in items]),
                                       np.stack([it["embedding"].numpy() for it in items]), space, analyzer).as_dict()
        except Exception:  # as previews: a validation must never end a training run
            log.exception("sampled validation at step %d failed", step)
            return {}
        self.accelerator.log({f"val/{k}": v for k, v in figures.items() if k != "sample_n"}, step=step)
        log.info("step %d sampled held-out faces: found %.2f, IoU %.2f, identity cosine %.3f", step,
                 figures["sample_found"], figures["sample_iou"], figures["sample_identity"])
        with open(self.out / VALIDATION_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **figures}) + "\n")
        return figures

    # outputs --------------------------------------------------------------------------------------------------------
    def _append_curve(self, entry: dict) -> None:
        """OUT/realisid.log.jsonl, one line per logged step (a resumed run appends; readers keep each step's last
        line), the curve `python -m realisid.mini curves --stages realisid` plots without TensorBoard."""
        with open(self.out / CURVE_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def checkpoint(self, step: int, model_file: bool = True) -> None:
        """state/step-N (resumable), realisid-stepN.safetensors, the `latest` marker, then rotation."""
        acc = self.accelerator
        self.save_state(self.out / "state" / f"step-{step:07d}")
        if acc.is_main_process:
            if model_file:
                self.save_model(self.out / f"realisid-step{step:07d}.safetensors")
            rotate(self.out, self.cfg.keep_last)
        acc.wait_for_everyone()

    def save_state(self, path: Path) -> None:
        """Resumable state: branches, optimizer, RNG, step, EMA (accelerate's save_state)."""
        self.accelerator.save_state(str(path))
        self.accelerator.wait_for_everyone()  # every rank's files are written before `latest` names them
        if self.accelerator.is_main_process:
            (self.out / "state" / "latest").write_text(path.name)
        self._saved_step = self.progress.step

    def save_model(self, path: Path) -> None:
        """The RealisID file in --export-dtype: the EMA weights when EMA is on (the raw weights then go to
        `<name>-raw.safetensors`), written from state dicts, so the live parameters are never touched."""
        dtype = EXPORT_DTYPES[self.cfg.export_dtype]
        raw = self.model.nets.state_dict()
        training = self.training_record()
        if self.ema is None:
            write_realisid(raw, self.model.config, path, dtype, training)
            return
        write_realisid(raw, self.model.config, path.with_name(path.stem + "-raw.safetensors"), dtype, training)
        write_realisid({**raw, **self.ema.shadow}, self.model.config, path, dtype, training)

    def training_record(self) -> dict:
        """Steps, wall time, seed and machine of this output folder's training so far (in every model file)."""
        return {"steps": self.progress.step, "seconds": round(self.progress.seconds, 1), "seed": self.cfg.seed,
                "batch_size": self.cfg.batch_size * self.cfg.grad_accum * self.accelerator.num_processes,
                "processes": self.accelerator.num_processes, "machine": machine()}

    @torch.no_grad()
    def log_samples(self, step: int, count: int | None = None) -> None:
        """Preview images of the first cached faces (see previews.py); PNGs + TensorBoard."""
        try:
            images = self.sample_images(count)
        except Exception:  # a preview must never end a training run
            log.exception("sample images at step %d failed", step)
            return
        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        import cv2

        for i, img in enumerate(images):
            rgb = (img.clamp(0, 1).cpu().numpy() * 255).round().astype("uint8")
            cv2.imwrite(str(folder / f"step{step:07d}-{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        tracker = _tensorboard(self.accelerator)
        if tracker is not None:
            tracker.add_images("samples", images.permute(0, 3, 1, 2).clamp(0, 1).cpu(), step)

    @torch.no_grad()
    def sample_images(self, count: int | None = None, seed: int = 0, items: list[dict] | None = None) -> torch.Tensor:
        """(count, H, W, 3) images sampled as inference samples, from a snapshot of the current (EMA) weights: the
        first `count` training samples' faces and captions, or those of `items`."""
        if items is None:
            items = [self.dataset[i % len(self.dataset)] for i in range(count or self.cfg.sample_count)]
        batch = to_device(collate(items), "cpu")
        snap = previews.snapshot(self.model, self.host.unet_config, self.host.compute_dtype,
                                 None if self.ema is None else self.ema.shadow)
        p_id = snap.project(self._identity_source(batch))
        faces = [FaceCondition(p_id=p_id[i], landmark_hint=batch["hint"][i], box=tuple(batch["box"][i].tolist()))
                 for i in range(len(items))]
        settings = previews.PreviewSettings(steps=self.cfg.sample_steps)
        try:
            return previews.sample_faces(self.host, snap, faces, batch["caption"], tuple(batch["image"].shape[-2:]),
                                         settings, seed)
        finally:
            previews.release(self.host)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _tensorboard(accelerator):
    try:
        return accelerator.get_tracker("tensorboard", unwrap=True)
    except Exception:
        return None


def _flat_config(cfg: TrainConfig) -> dict:
    """TensorBoard hparams accept only scalars and strings."""
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        out[k] = v if isinstance(v, int | float | str | bool) else json.dumps(v)
    return out


def fit(cfg: TrainConfig) -> list[float]:
    return Trainer(cfg).fit()


def latest_state(out: str | Path) -> str | None:
    """The newest saved state under OUT/state (for --resume auto)."""
    marker = Path(out) / "state" / "latest"
    if marker.is_file():
        return str(Path(out) / "state" / marker.read_text().strip())
    return None

