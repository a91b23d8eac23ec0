"""Frozen pre-computation: the VAE latents of a training cache, computed once and kept beside it.

`python -m realisid.train encode-latents --base B --cache C [C ...]` writes, for each cache folder,
`C/latents/<key>.safetensors`: one model-space latent per sample (what `FrozenHost.encode_latents` gives, float32),
under the sample's file name. `<key>` is the first 16 hex digits of the base file's SHA-256, so latents are only
ever read by a run on the same base (VAE and latent format come from it). `fit` reads the store of its base when
there is one and encodes only samples it lacks; a step then runs the branches and the frozen UNet, not the VAE.

`... encode-text --base B --cache C [C ...]` does the same for the text encoders: `C/text/<key>.safetensors` holds
each distinct caption's context and pooled output (`ctx.<sha>`, `pooled.<sha>`, the caption's SHA-256, uncapped:
fit caps to its --max-text-chunks), plus the empty caption of condition dropout. `fit` reads them lazily (the
file is memory-mapped, one caption at a time), so a step runs no text encoder for a stored caption.

`... encode-identity --base B --clip-vision F --cache C [C ...]` stores each sample's CLIP-vision identity tokens
(identity space clip: the masked face crop's penultimate tokens, what `FrozenHost.encode_identity_clip` gives) in
`C/identity/<key>.safetensors` under the sample's file name, `<key>` from F's SHA-256: fit with that
--clip-vision reads them (the dataset, by file name) and runs no CLIP vision for them. Large: ViT-H/14's 257 x 1280
tokens are 1.3 MB a sample in float32 (as the encoder gives them on a CPU; in its dtype on a GPU), so a store per
cache shard of a few thousand samples, or none (the encoder costs one CLIP-vision pass a sample).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from tqdm import tqdm

from realisid.train.data import CachedFaceDataset, read_manifest, sample_image
from realisid.train.outputs import file_sha256

log = logging.getLogger(__name__)
KEY_LENGTH = 16


def base_key(base_file: str | Path) -> str:
    return key_of(file_sha256(base_file))


def key_of(sha256: str) -> str:
    """A store key from a file's SHA-256 (hex): its first KEY_LENGTH digits."""
    return sha256[:KEY_LENGTH]


def store_path(cache: str | Path, key: str) -> Path:
    return Path(cache) / "latents" / f"{key}.safetensors"


def read_store(cache: str | Path, key: str) -> dict[str, torch.Tensor]:
    """{sample file: latent} of one cache for the base `key` (empty when none was written)."""
    path = store_path(cache, key)
    return safetensors.torch.load_file(str(path)) if path.is_file() else {}


def write_store(cache: str | Path, key: str, latents: dict[str, torch.Tensor]) -> Path:
    """Written to a temporary name first, so an interrupted write never leaves a store that reads half."""
    path = store_path(cache, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    safetensors.torch.save_file({k: v.contiguous().cpu() for k, v in latents.items()}, str(partial),
                                metadata={"format": "realisid-latents", "base_key": key})
    os.replace(partial, path)
    return path


def stored_latents(dataset: CachedFaceDataset, key: str) -> dict[int, torch.Tensor]:
    """{dataset index: latent} of every sample whose cache has a store for `key`."""
    stores: dict[Path, dict[str, torch.Tensor]] = {}
    out = {}
    for index, (cache, row) in enumerate(dataset.rows):
        if cache not in stores:
            stores[cache] = read_store(cache, key)
        latent = stores[cache].get(row["file"])
        if latent is not None:
            out[index] = latent
    return out


def _cached_image(cache: str | Path, file: str) -> torch.Tensor:
    """(3, S, S) uint8: a sample's image alone (its hint, crop and mask are not read)."""
    with safetensors.safe_open(str(Path(cache) / file), framework="np") as f:
        key = "image" if "image" in f.keys() else "image_png"  # a compact cache stores it PNG-encoded
        image = sample_image({key: f.get_tensor(key)}, "image")
    return torch.from_numpy(image).permute(2, 0, 1)


def encode_caches(host, caches: list[str], key: str, batch_size: int = 16, progress: bool = True) -> dict:
    """Encode every sample of each cache that its store lacks; returns {cache: number of latents stored}."""
    counts = {}
    for cache in caches:
        latents = read_store(cache, key)
        missing = [row["file"] for row in read_manifest(cache) if row["file"] not in latents]
        for start in tqdm(range(0, len(missing), batch_size), desc=f"latents {Path(cache).name}", disable=not progress):
            files = missing[start:start + batch_size]
            images = torch.stack([_cached_image(cache, file) for file in files])
            with torch.no_grad():  # the same [0, 1] floats a training step feeds the VAE (data.to_device)
                encoded = host.encode_latents(images.to(host.device).float() / 255.0).cpu()
            latents.update(zip(files, encoded, strict=True))
        write_store(cache, key, latents)
        counts[str(cache)] = len(latents)
        log.info("%s: %d latents (%d new) in %s", cache, len(latents), len(missing), store_path(cache, key))
    return counts


# identity sources ---------------------------------------------------------------------------------------------------
def identity_store_path(cache: str | Path, key: str) -> Path:
    return Path(cache) / "identity" / f"{key}.safetensors"


def _cached_face_crop(cache: str | Path, file: str) -> torch.Tensor:
    """(224, 224, 3) uint8: a sample's masked face crop alone."""
    with safetensors.safe_open(str(Path(cache) / file), framework="np") as f:
        key = "face_crop" if "face_crop" in f.keys() else "face_crop_png"
        crop = sample_image({key: f.get_tensor(key)}, "face_crop")
    return torch.from_numpy(crop)


def encode_identities(host, caches: list[str], key: str, batch_size: int = 16, progress: bool = True) -> dict:
    """CLIP-vision tokens of every sample's face crop that its cache's store lacks; {cache: samples stored}."""
    counts = {}
    for cache in caches:
        path = identity_store_path(cache, key)
        stored = safetensors.torch.load_file(str(path)) if path.is_file() else {}
        missing = [row["file"] for row in read_manifest(cache) if row["file"] not in stored]
        for start in tqdm(range(0, len(missing), batch_size), desc=f"identity {Path(cache).name}",
                          disable=not progress):
            files = missing[start:start + batch_size]
            with torch.no_grad():
                tokens = host.encode_identity_clip(torch.stack([_cached_face_crop(cache, f) for f in files])).cpu()
            stored.update(zip(files, tokens, strict=True))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        safetensors.torch.save_file({k: v.contiguous() for k, v in stored.items()}, str(partial),
                                    metadata={"format": "realisid-identity", "clip_vision_key": key})
        os.replace(partial, path)
        counts[str(cache)] = len(stored)
        log.info("%s: %d identity sources (%d new) in %s", cache, len(stored), len(missing), path)
    return counts


# text ---------------------------------------------------------------------------------------------------------------
def text_store_path(cache: str | Path, key: str) -> Path:
    return Path(cache) / "text" / f"{key}.safetensors"


def caption_key(caption: str) -> str:
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


class StoredTexts:
    """The text stores of several caches for one base: caption -> (context, pooled) or None, read on demand."""

    def __init__(self, caches: list[str], key: str):
        self._files = [safetensors.safe_open(str(p), framework="pt") for c in caches
                       if (p := text_store_path(c, key)).is_file()]
        self._names = [set(f.keys()) for f in self._files]

    def __len__(self) -> int:
        return sum(sum(1 for n in names if n.startswith("ctx.")) for names in self._names)

    def get(self, caption: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        k = caption_key(caption)
        for f, names in zip(self._files, self._names, strict=True):
            if f"ctx.{k}" in names:
                pooled = f.get_tensor(f"pooled.{k}") if f"pooled.{k}" in names else None
                return f.get_tensor(f"ctx.{k}"), pooled
        return None


def encode_texts(host, caches: list[str], key: str, progress: bool = True) -> dict:
    """Encode each cache's distinct captions (and the empty one) that its store lacks; {cache: captions stored}."""
    counts = {}
    for cache in caches:
        path = text_store_path(cache, key)
        stored = safetensors.torch.load_file(str(path)) if path.is_file() else {}
        captions = sorted({row.get("caption", "") for row in read_manifest(cache)} | {""})
        missing = [c for c in captions if f"ctx.{caption_key(c)}" not in stored]
        for caption in tqdm(missing, desc=f"text {Path(cache).name}", disable=not progress):
            context, pooled = host.encode_caption(caption)
            stored[f"ctx.{caption_key(caption)}"] = context.float()
            if pooled is not None:
                stored[f"pooled.{caption_key(caption)}"] = pooled.float()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        safetensors.torch.save_file({k: v.contiguous().cpu() for k, v in stored.items()}, str(partial),
                                    metadata={"format": "realisid-text", "base_key": key})
        os.replace(partial, path)
        counts[str(cache)] = sum(1 for k in stored if k.startswith("ctx."))
        log.info("%s: %d captions (%d new) in %s", cache, counts[str(cache)], len(missing), path)
    return counts
