"""Held-out identity use: the face-box denoising loss of held-out faces with their own identity and with another
face's (the same noise, timestep and everything else), through the trainer's own loss.

A branch that ignores the identity scores the same with either (gap 0); one that draws the person denoises its own
face better. The figure is continuous and cheap (forward passes only). `fit --val-cache` measures it on the live
weights every --val-every steps (`HeldOut`); `python -m realisid.mini identity-use` on a saved file
(identity_use.py). Both run `identity_use_of`, so the two agree on the same weights.

Sampled faces: `fit --val-sample-every` also samples the first held-out faces with the live weights as inference
does and reads them back with a face backend through `realisid.evaluate`'s matching and cosine
(`sampled_faces_of`): found in the box, IoU, identity cosine to the reference. The behavioural figures, at the
cost of a sampling run per face.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from realisid.train.data import CachedFaceDataset, collate
from realisid.train.rng import step_generator

LossFn = Callable[[dict, torch.Generator], tuple[torch.Tensor, dict]]  # (batch, generator) -> (loss, parts)


@dataclass(frozen=True)
class IdentityUse:
    n: int  # samples
    face_mse_own: float
    face_mse_other: float
    win_rate: float  # fraction of samples whose own identity gives the lower face-box loss

    @property
    def gap(self) -> float:
        """Relative reduction of the face-box loss by the face's own identity."""
        return (self.face_mse_other - self.face_mse_own) / self.face_mse_other

    def as_dict(self) -> dict:
        return {"n": self.n, "face_mse_own": self.face_mse_own, "face_mse_other": self.face_mse_other,
                "gap": self.gap, "win_rate": self.win_rate}


def other_identity_order(batch_size: int) -> list[int]:
    """Sample i takes the identity of sample i + 1 (a held-out scene set has a new person in every scene)."""
    if batch_size < 2:
        raise ValueError("identity use compares faces within a batch: batch_size must be >= 2")
    return [(i + 1) % batch_size for i in range(batch_size)]


def per_sample_face_mse(loss_fn: LossFn, batch: dict, seed: int, first: int) -> torch.Tensor:
    """Face-box MSE of each sample (a batch of one each, so the noise is the sample's own: sample j of the batch
    draws from the stream of index first + j, whichever batch it comes in)."""
    out = []
    for j in range(batch["image"].shape[0]):
        one = {k: v[j:j + 1] for k, v in batch.items()}  # tensors and the caption / index lists alike
        _, parts = loss_fn(one, step_generator(seed, 0, first + j))
        out.append(float(parts["face_mse"]))
    return torch.tensor(out)


def identity_use_of(loss_fn: LossFn, batches: Iterable[dict], seed: int, n: int) -> IdentityUse:
    """Own vs swapped identity over the first n samples of `batches` (each of >= 2 samples)."""
    own, other, seen = [], [], 0
    with torch.no_grad():
        for batch in batches:
            size = batch["image"].shape[0]
            own.append(per_sample_face_mse(loss_fn, batch, seed, seen))
            order = other_identity_order(size)  # whichever the identity source reads: embedding or face crop
            swapped = {**batch, **{k: batch[k][order] for k in ("embedding", "face_crop") if k in batch}}
            other.append(per_sample_face_mse(loss_fn, swapped, seed, seen))
            seen += size
            if seen >= n:
                break
    own_t, other_t = torch.cat(own)[:n], torch.cat(other)[:n]
    return IdentityUse(n=int(own_t.numel()), face_mse_own=float(own_t.mean()), face_mse_other=float(other_t.mean()),
                       win_rate=float((own_t < other_t).float().mean()))


class HeldOut:
    """The validation set of a run: its first n samples in order, in batches of >= 2, their VAE latents encoded
    once (held-out caches are not the training caches, so the training latents' store does not cover them)."""

    def __init__(self, caches: Sequence[str], hint_size: int, kps5_hints: bool, n: int, batch_size: int):
        self.dataset = CachedFaceDataset(list(caches), hint_size, kps5_hints=kps5_hints)
        self.n = min(int(n), len(self.dataset))
        if self.n < 2:
            raise ValueError(f"--val-cache {list(caches)}: validation needs at least 2 samples, found {self.n}")
        self.batch_size = max(2, int(batch_size))
        self._latents: dict[int, torch.Tensor] = {}

    def batches(self) -> Iterable[dict]:
        starts = list(range(0, self.n, self.batch_size))
        if len(starts) > 1 and self.n - starts[-1] < 2:  # a last batch of one has no other identity to swap in
            starts.pop()
        for start, stop in zip(starts, [*starts[1:], self.n], strict=True):
            yield collate([self.dataset[i] for i in range(start, stop)])

    def latents(self, batch: dict, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        missing = [j for j, i in enumerate(batch["index"]) if i not in self._latents]
        if missing:
            fresh = encode(batch["image"][missing])
            self._latents.update({batch["index"][j]: lat for j, lat in zip(missing, fresh, strict=True)})
        return torch.stack([self._latents[i] for i in batch["index"]])


@dataclass(frozen=True)
class SampledFaces:
    n: int  # held-out faces sampled
    found: float  # fraction the backend finds in their box (realisid.evaluate.metrics.match_faces)
    iou: float  # mean IoU of the matched face with the box (0 when missing)
    identity: float  # mean cosine of the found faces to their reference embedding (nan when none is found)

    def as_dict(self) -> dict:
        return {"sample_n": self.n, "sample_found": self.found, "sample_iou": self.iou,
                "sample_identity": self.identity}


def sampled_faces_of(images: np.ndarray, boxes_frac: np.ndarray, references: np.ndarray, space: str,
                     analyzer) -> SampledFaces:
    """images (N, H, W, 3) uint8 RGB, each with one requested face: boxes_frac (N, 4) image fractions, references
    (N, D) the reference embeddings (the cache's, of `space`); the backend must embed in that space."""
    from realisid.evaluate import metrics
    from realisid.faces.analyzer import check_space, cosine

    found, ious, cosines = [], [], []
    for image, box, reference in zip(images, boxes_frac, references, strict=True):
        h, w = image.shape[:2]
        (match,) = metrics.match_faces(analyzer.analyze(image), [np.asarray(box) * [w, h, w, h]])
        found.append(match.found)
        ious.append(match.iou)
        if match.found and match.face.embedding is not None:
            check_space(match.face.space, space)
            cosines.append(cosine(reference, match.face.embedding))
    return SampledFaces(n=len(found), found=float(np.mean(found)), iou=float(np.mean(ious)),
                        identity=float(np.mean(cosines)) if cosines else float("nan"))
