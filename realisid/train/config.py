"""The trainer's settings (`python -m realisid.train fit`'s options, one dataclass) and their validation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from realisid import checkpoint, checkpoint_format
from realisid.train.optim import OPTIMIZERS, SCHEDULES
from realisid.train.outputs import EXPORT_DTYPES

IDENTITY_SPACES = ("clip", "arcface", "embedding")
BRANCHES = ("both", "local", "global")  # which branches a model has (the paper's ablations train one alone)
HINTS = ("cache", "kps5")  # the cache's landmark layout, or 5 keypoints drawn from its 68 landmarks
GLOBAL_HINTS = tuple(checkpoint_format.GLOBAL_HINTS)  # the box mask (RealisID), or the face drawing (InstantID-style)
FACE_LOSS_NORMS = ("area", "none")
PRECISIONS = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    base: str
    cache: str | list[str]  # one cache folder, or several (the shards of a parallel prepare)
    out: str
    identity_space: str = "clip"  # clip: CLIP-vision tokens of the face crop; arcface: the cached ArcFace vector;
    # embedding: the cached vector of whatever backend prepared the cache (tests, experiments)
    clip_vision: str | None = None
    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-5
    projector_lr: float | None = None  # the projector starts from scratch: its own LR (None: --lr)
    lr_warmup: int = 0  # optimizer steps of linear warm-up
    lr_schedule: str = "constant"  # after warm-up: constant, cosine or linear decay to lr_min_ratio * lr
    lr_min_ratio: float = 0.0
    weight_decay: float = 1e-2
    optimizer: str = "adamw"  # or adamw8bit (bitsandbytes), see optim.OPTIMIZERS
    lambda_face: float = 1.0
    face_loss_norm: str = "area"
    drop_image: float = 0.05
    drop_text: float = 0.05
    drop_both: float = 0.05
    mixed_precision: str = "no"
    grad_checkpointing: bool = False
    checkpoint_unet: bool = False  # recompute the frozen UNet's activations in backward (non-reentrant)
    grad_accum: int = 1
    ema: float = 0.0
    save_every: int = 500
    keep_last: int = 0  # resumable states and step files kept (0: all)
    export_dtype: str = "fp32"  # dtype of the RealisID files written (fp32, bf16, fp16)
    sample_every: int = 0
    sample_steps: int = 20
    sample_count: int = 2
    resume: str | None = None
    seed: int = 0
    crop_size: int = checkpoint.DEFAULT_CROP_SIZE
    projector: dict = field(default_factory=dict)  # overrides of identity.DEFAULT_CONFIG
    log_every: int = 10
    progress: bool = True  # tqdm bar on the main process
    max_grad_norm: float = 1.0
    text_cache_size: int = 4096
    max_text_chunks: int = 3  # captions are cut to this many text-encoder chunks (77 tokens each for CLIP)
    workers: int = 4  # DataLoader worker processes reading the cache (0: in the training process)
    prefetch: int = 2  # batches each worker reads ahead
    overfit: bool = False  # sanity check: the same batch, noise, sigmas and dropout at every step
    init: str | None = None  # a RealisID file to start the branches from (ignored when resuming a state)
    cache_latents: bool = False  # keep each sample's VAE latent in memory after its first encode (small sets)
    cpu: bool = False
    branches: str = "both"
    hint: str = "cache"
    global_hint: str = "box_mask"
    ip_adapter: bool = False  # identity tokens in the base's cross-attention too (InstantID's IP-Adapter)
    val_cache: list[str] | None = None  # held-out caches: identity use on the live weights every val_every steps
    val_every: int = 0
    val_n: int = 64
    val_sample_every: int = 0  # steps between sampled validations (held-out faces sampled and read back)
    val_sample_n: int = 4  # held-out faces sampled each time (one sampling run each)
    val_backend: str | None = None  # the face backend that reads them back: embedded, insightface or mini
    val_insightface_root: str | None = None

    @property
    def caches(self) -> list[str]:
        return [self.cache] if isinstance(self.cache, str) else list(self.cache)

    def validate(self) -> None:
        if self.identity_space not in IDENTITY_SPACES:
            raise ValueError(f"--identity-space must be one of {IDENTITY_SPACES}, got {self.identity_space!r}")
        if self.identity_space == "clip" and not self.clip_vision:
            raise ValueError("--identity-space clip needs --clip-vision FILE (e.g. CLIP-ViT-H-14 .safetensors)")
        if self.face_loss_norm not in FACE_LOSS_NORMS:
            raise ValueError(f"--face-loss-norm must be one of {FACE_LOSS_NORMS}, got {self.face_loss_norm!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"--mixed-precision must be one of {tuple(PRECISIONS)}, got {self.mixed_precision!r}")
        if self.drop_image + self.drop_text + self.drop_both > 1:
            raise ValueError("the condition-dropout probabilities add up to more than 1")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("--steps, --batch-size and --grad-accum must be >= 1")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"--ema must be in [0, 1), got {self.ema}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"--lr-schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.export_dtype not in EXPORT_DTYPES:
            raise ValueError(f"--export-dtype must be one of {tuple(EXPORT_DTYPES)}, got {self.export_dtype!r}")
        if self.branches not in BRANCHES:
            raise ValueError(f"--branches must be one of {BRANCHES}, got {self.branches!r}")
        if self.hint not in HINTS:
            raise ValueError(f"--hint must be one of {HINTS}, got {self.hint!r}")
        if self.global_hint not in GLOBAL_HINTS:
            raise ValueError(f"--global-hint must be one of {GLOBAL_HINTS}, got {self.global_hint!r}")
        if self.global_hint != "box_mask" and self.branches == "local":
            raise ValueError("--global-hint needs a global branch (--branches both or global)")
        if self.val_every < 0 or (self.val_every and not self.val_cache) or self.val_n < 2:
            raise ValueError("--val-every needs --val-cache, and --val-n must be >= 2")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.val_sample_every < 0 or self.val_sample_n < 1:
            raise ValueError("--val-sample-every must be >= 0 and --val-sample-n >= 1")
        if self.val_sample_every and not (self.val_cache and self.val_backend):
            raise ValueError("--val-sample-every needs --val-cache (the held-out faces) and --val-backend (the face "
                             "backend that reads the samples back: the one that prepared the held-out cache)")
        if self.lr_warmup < 0 or self.keep_last < 0 or self.workers < 0 or self.prefetch < 1:
            raise ValueError("--lr-warmup, --keep-last and --workers must be >= 0, --prefetch >= 1")

    def lrs(self) -> dict[str, float]:
        return {"branches": self.lr, "projector": self.lr if self.projector_lr is None else self.projector_lr}
