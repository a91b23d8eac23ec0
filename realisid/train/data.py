"""Read the prepared cache as a torch Dataset (CPU tensors; the frozen encoders run in the loop)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch
import torch.nn.functional as F

from realisid.train.prepare import render_hint


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


class CachedFaceDataset(torch.utils.data.Dataset):
    """Items: image (3, S, S) in [0, 1], mask (1, S, S), box (4,) fractions, hint (3, H, H) in [0, 1] with
    H = hint_size (re-rendered from the landmarks when the cache holds another size), face_crop (224, 224, 3)
    uint8, embedding (D,) (zeros of length 0 when the cache has none), caption str, index int."""

    def __init__(self, cache: str | Path, hint_size: int):
        self.cache = Path(cache)
        self.rows = read_manifest(cache)
        self.hint_size = int(hint_size)

    def __len__(self) -> int:
        return len(self.rows)

    def spaces(self) -> set[str]:
        return {row.get("space", "") for row in self.rows}

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        data = safetensors.numpy.load_file(str(self.cache / row["file"]))
        hint = data.get("hint")
        if hint is None or hint.shape[0] != self.hint_size:
            hint_t = torch.from_numpy(render_hint(data["landmarks"], self.hint_size))
        else:
            hint_t = torch.from_numpy(hint).float() / 255.0
        embedding = data.get("embedding", np.zeros(0, np.float32))
        return {
            "image": torch.from_numpy(data["image"]).permute(2, 0, 1).float() / 255.0,
            "mask": torch.from_numpy(data["mask"]).float()[None],
            "box": torch.from_numpy(data["box"]).float(),
            "hint": hint_t.permute(2, 0, 1).contiguous(),
            "face_crop": torch.from_numpy(data["face_crop"]),
            "embedding": torch.from_numpy(np.asarray(embedding, np.float32)),
            "caption": row.get("caption", ""),
            "index": index,
        }


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) pixel box mask -> (B, 1, h, w) latent-resolution mask (area average: soft edge cells)."""
    return F.adaptive_avg_pool2d(mask, latent_hw) if mask.shape[-2:] != latent_hw else mask
