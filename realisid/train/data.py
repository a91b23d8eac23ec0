"""Read the prepared cache: a torch Dataset of compact CPU items, the step-keyed batch order, the DataLoader.

Items stay uint8 on the host (image, mask, hint); `to_device` turns them into floats on the training device, so a
step moves a quarter of the bytes and the host does no per-step float work at full resolution.
"""

from __future__ import annotations

import functools
import json
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import safetensors
import safetensors.numpy
import torch
import torch.nn.functional as F

from realisid.faces.record import kps5_from_landmarks68
from realisid.faces.render import render_face_hint
from realisid.geometry import box_mask

TENSOR_KEYS = ("image", "mask", "box", "hint", "face_crop", "embedding")


def read_manifest(cache: str | Path) -> list[dict]:
    path = Path(cache) / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{cache} is not a training cache (no manifest.jsonl); run "
                                f"`python -m realisid.train prepare ... --out {cache}` first")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the last line of an interrupted prepare run
    if not rows:
        raise ValueError(f"the cache {cache} holds no samples (see its stats.json for why they were skipped)")
    return rows


def hint_uint8(unit_points: np.ndarray, size: int) -> np.ndarray:
    """The landmark hint of points in unit crop coordinates as uint8 (size, size, 3): the renderer's canvas is
    uint8 / 255, so this is lossless."""
    return np.round(render_face_hint(np.asarray(unit_points, np.float32) * size, size) * 255.0).astype(np.uint8)


def sample_image(data: dict, key: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB: stored as it is, or PNG-encoded under `<key>_png` (a compact cache)."""
    if key in data:
        return data[key]
    png = data.get(f"{key}_png")
    if png is None:
        raise KeyError(f"the cached sample has neither '{key}' nor '{key}_png'")
    bgr = cv2.imdecode(np.asarray(png, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"the cached sample's '{key}_png' is not a readable PNG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def box_mask_uint8(box: np.ndarray, size: int) -> np.ndarray:
    """(size, size) uint8 mask of a box given as fractions: what prepare stores as `mask` (pixel centres in it)."""
    return box_mask([np.asarray(box, np.float64)], size, size)[0, 0].numpy().astype(np.uint8)


class CachedFaceDataset(torch.utils.data.Dataset):
    """Items: image (3, S, S) uint8, mask (1, S, S) uint8, box (4,) fractions, hint (3, H, H) uint8 with
    H = hint_size (re-rendered from the landmarks when the cache holds another size, or with kps5_hints the 5
    keypoints of its 68 landmarks), face_crop (224, 224, 3)
    uint8, embedding (D,) (zeros of length 0 when the cache has none), caption str, index int.

    `cache` is one cache folder or several (e.g. the shards `prepare --num-shards` wrote in parallel): their
    samples in the order given, one index space. With `identity_key` (a CLIP-vision file's store key), an item
    also carries `identity`, its stored CLIP-vision tokens, when its cache's store has them
    (`realisid.train.latents.encode_identities`): read by file name, so any dataset (training or held-out) reads
    its own samples' tokens."""

    def __init__(self, cache: str | Path | Sequence[str | Path], hint_size: int, kps5_hints: bool = False,
                 identity_key: str | None = None):
        caches = [cache] if isinstance(cache, str | Path) else list(cache)
        if not caches:
            raise ValueError("no training cache given (--cache)")
        self.rows = [(Path(c), row) for c in caches for row in read_manifest(c)]
        self.hint_size = int(hint_size)
        self.kps5_hints = kps5_hints  # draw the 5 keypoints of the cached 68 landmarks instead (fit --hint kps5)
        self.identity_key = identity_key
        self._identity_stores: dict = {}  # cache -> (open store, its names) or None; opened in the reading process

    def __getstate__(self) -> dict:  # DataLoader workers under spawn get the dataset pickled: open files are not
        return {**self.__dict__, "_identity_stores": {}}

    def _stored_identity(self, cache: Path, file: str) -> torch.Tensor | None:
        if cache not in self._identity_stores:
            from realisid.train.latents import identity_store_path

            path = identity_store_path(cache, self.identity_key)
            store = safetensors.safe_open(str(path), framework="pt") if path.is_file() else None
            self._identity_stores[cache] = None if store is None else (store, set(store.keys()))
        entry = self._identity_stores[cache]
        return entry[0].get_tensor(file) if entry is not None and file in entry[1] else None

    def __len__(self) -> int:
        return len(self.rows)

    def spaces(self) -> set[str]:
        return {row.get("space", "") for _, row in self.rows}

    def __getitem__(self, index: int) -> dict:
        cache, row = self.rows[index]
        data = safetensors.numpy.load_file(str(cache / row["file"]))
        image = sample_image(data, "image")
        hint = data.get("hint")
        if self.kps5_hints:
            points = data["landmarks"]
            hint = hint_uint8(kps5_from_landmarks68(points) if len(points) == 68 else points, self.hint_size)
        elif hint is None or hint.shape[0] != self.hint_size:
            hint = hint_uint8(data["landmarks"], self.hint_size)
        embedding = data.get("embedding", np.zeros(0, np.float32))
        item = {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "mask": torch.from_numpy(data["mask"] if "mask" in data else box_mask_uint8(data["box"], len(image)))[None],
            "box": torch.from_numpy(data["box"]).float(),
            "hint": torch.from_numpy(hint).permute(2, 0, 1).contiguous(),
            "face_crop": torch.from_numpy(sample_image(data, "face_crop")),
            "embedding": torch.from_numpy(np.asarray(embedding, np.float32)),
            "caption": row.get("caption", ""),
            "index": index,
        }
        identity = self._stored_identity(cache, row["file"]) if self.identity_key else None
        if identity is not None:
            item["identity"] = identity
        return item


def collate(items: list[dict]) -> dict:
    batch = {k: torch.stack([it[k] for it in items]) for k in TENSOR_KEYS}
    batch["caption"] = [it["caption"] for it in items]
    batch["index"] = [int(it["index"]) for it in items]
    if all("identity" in it for it in items):  # else the trainer encodes the whole batch's face crops
        batch["identity"] = torch.stack([it["identity"] for it in items])
    return batch


def to_device(batch: dict, device) -> dict:
    """The uint8 image / hint / mask as float32 in [0, 1] on `device` (converted there, after the copy)."""
    out = dict(batch)
    for key in ("image", "hint", "mask"):
        t = batch[key].to(device, non_blocking=True)
        out[key] = t.float() / 255.0 if key != "mask" else t.float()
    out["embedding"] = batch["embedding"].to(device, non_blocking=True)
    return out


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) pixel box mask -> (B, 1, h, w) latent-resolution mask (area average: soft edge cells)."""
    return F.adaptive_avg_pool2d(mask, latent_hw) if mask.shape[-2:] != latent_hw else mask


# ---- batch order ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)  # a micro-batch spans at most two epochs
def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def batch_indices(n: int, seed: int, micro_step: int, batch: int, rank: int, world: int) -> list[int]:
    """Sample indices of one rank's micro-batch: epochs are seeded permutations, ranks take disjoint slices.

    A pure function of the step, so a resumed run sees exactly the batches the uninterrupted run would have; each
    epoch's permutation is drawn once (O(n) per epoch, not per sample)."""
    out = []
    start = (micro_step * world + rank) * batch
    for pos in range(start, start + batch):
        epoch, offset = divmod(pos, n)
        out.append(int(epoch_permutation(n, seed, epoch)[offset]))
    return out


class StepBatches(torch.utils.data.Sampler):
    """The batch sampler of one rank: batch_indices of micro-steps start, start + 1, ... (for ever; the loop
    stops). `fixed` repeats micro-step `start` (--overfit)."""

    def __init__(self, n: int, seed: int, start: int, batch: int, rank: int, world: int, fixed: bool = False):
        self.args = (n, seed, batch, rank, world)
        self.start, self.fixed = start, fixed

    def __iter__(self) -> Iterator[list[int]]:
        n, seed, batch, rank, world = self.args
        micro = self.start
        while True:
            yield batch_indices(n, seed, micro, batch, rank, world)
            micro += 0 if self.fixed else 1


def _ignore_sigterm(_worker_id: int) -> None:
    """A cluster signals the whole process group: workers must outlive the trainer's save-on-SIGTERM step."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: CachedFaceDataset, sampler: StepBatches, workers: int, prefetch: int,
                pin_memory: bool) -> torch.utils.data.DataLoader:
    """Workers read and decode items ahead of the step (prefetch batches each); order is the sampler's."""
    extra = {"prefetch_factor": prefetch, "worker_init_fn": _ignore_sigterm} if workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                                       pin_memory=pin_memory, **extra)
