"""What the trainer writes: RealisID files (any export dtype, EMA or raw weights), state rotation, file hashes."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import safetensors.torch
import torch

from realisid import checkpoint_format

log = logging.getLogger(__name__)

EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STATE_PREFIX = "step-"


TRAINING_KEY = "realisid_training"  # metadata: how the file was trained (steps, seconds, seed, machine)


def write_realisid(state: dict[str, torch.Tensor], config: dict, path: Path, dtype: torch.dtype,
                   training: dict | None = None) -> None:
    """The layout of checkpoint.save_realisid (one .safetensors, config in the metadata), from a state dict cast
    to `dtype` (floating tensors only), so EMA weights are written without touching the live parameters."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in state.items()}
    metadata = {checkpoint_format.METADATA_KEY: json.dumps(config)}
    if training is not None:
        metadata[TRAINING_KEY] = json.dumps(training)
    tmp = path.with_name(path.name + ".tmp")
    safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)  # a run killed mid-write never leaves a truncated file under the final name


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def state_dirs(out: Path) -> list[Path]:
    """OUT/state/step-N folders, oldest first."""
    folder = out / "state"
    return sorted(p for p in folder.glob(f"{STATE_PREFIX}*") if p.is_dir()) if folder.is_dir() else []


def step_files(out: Path) -> list[Path]:
    """realisid-stepN[-raw].safetensors, oldest first (the zero-padded step sorts by name)."""
    return sorted(out.glob("realisid-step*.safetensors"))


def rotate(out: Path, keep: int) -> None:
    """Keep the newest `keep` resumable states and step files (0 keeps everything)."""
    if keep <= 0:
        return
    for old in state_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
        log.info("rotated out %s", old)
    steps = sorted({p.name.removesuffix(".safetensors").removesuffix("-raw") for p in step_files(out)})
    for stem in steps[:-keep]:
        for p in (out / f"{stem}.safetensors", out / f"{stem}-raw.safetensors"):
            p.unlink(missing_ok=True)
