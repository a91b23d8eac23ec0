"""How much a trained RealisID model's branches use the identity, measured where training measures anything: the
face-box denoising loss on held-out people with each face's own identity vs another face's (the same noise,
timestep and everything else), through the trainer's own loss (models of the cached-embedding identity spaces).

A branch that ignores the identity scores the same with either (gap 0); one that draws the person denoises its own
face better. The figure is continuous and cheap (forward passes only), so it separates two recipes where the
judge-based behaviour figures (a dozen images per cell) cannot.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch
from tqdm import tqdm

from realisid import checkpoint_format
from realisid.train.config import TrainConfig
from realisid.train.loop import Trainer
from realisid.train.rng import step_generator


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


def _per_sample_face_mse(trainer: Trainer, batch: dict, seed: int, step: int) -> torch.Tensor:
    """Face-box MSE of each sample (batch of one each, so the noise is the sample's own and the figure is per face)."""
    out = []
    for j in range(batch["image"].shape[0]):
        one = {k: v[j:j + 1] for k, v in batch.items()}  # tensors and the caption / index lists alike
        _, parts = trainer.compute_loss(one, step_generator(seed, 0, step * batch["image"].shape[0] + j))
        out.append(float(parts["face_mse"]))
    return torch.tensor(out)


def measure(model_file: str, base_file: str, caches: list[str], n: int, batch_size: int = 8,
            seed: int = 0) -> IdentityUse:
    """Identity use of `model_file` on the first n samples of `caches` in a seeded order (held-out people, prepared
    like the training set; at most every sample once, so n is capped at the caches' size)."""
    config = checkpoint_format.read_config(model_file)
    order = other_identity_order(batch_size)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(base=base_file, cache=caches, out=out, identity_space="embedding",
                          crop_size=int(config["crop_size"]), projector=dict(config["projector"]), init=model_file,
                          drop_image=0.0, drop_text=0.0, drop_both=0.0, cpu=True, workers=0, steps=1,
                          batch_size=batch_size, progress=False, seed=seed)
        trainer = Trainer(cfg)
        trainer.model.nets.eval()
        n = min(n, len(trainer.dataset))  # past one epoch the seeded order repeats samples
        own, other = [], []
        with torch.no_grad():
            for step in tqdm(range(-(-n // batch_size)), desc="identity use"):
                batch = trainer._batch(step)
                own.append(_per_sample_face_mse(trainer, batch, seed, step))
                swapped = {**batch, "embedding": batch["embedding"][order]}
                other.append(_per_sample_face_mse(trainer, swapped, seed, step))
        trainer.accelerator.end_training()
    own_t, other_t = torch.cat(own)[:n], torch.cat(other)[:n]
    return IdentityUse(n=int(own_t.numel()), face_mse_own=float(own_t.mean()), face_mse_other=float(other_t.mean()),
                       win_rate=float((own_t < other_t).float().mean()))
