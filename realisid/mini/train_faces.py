"""Training of the Mini face networks (detector, face net, judge) on scenes of training identities only.

The judge sees other scenes (another seed stream) than the detector and the face net, and all three are measured on
held-out identities, which no Mini network ever trains on.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from realisid.mini import crops, facenets, training, world

log = logging.getLogger(__name__)

POOL_SIZE = 600
POOL_STEPS = 150


class Pool:
    """Scenes of training identities, a fresh pool every POOL_STEPS steps, seeded by (seed, stream, index)."""

    def __init__(self, seed: int, stream: int):
        self.seed, self.stream, self.index, self.scenes = seed, stream, None, []

    def at(self, step: int) -> list[world.Scene]:
        index = step // POOL_STEPS
        if index != self.index:
            rng = np.random.default_rng([self.seed, self.stream, index])
            self.scenes = [world.random_scene(int(s), split="train") for s in rng.integers(0, 2**31, POOL_SIZE)]
            self.index = index
        return self.scenes


def _fit(work: str, name: str, net: torch.nn.Module, seed: int, steps: int, lr: float, batch_loss):
    """AdamW with warm-up and cosine decay, resumable; batch_loss(step) -> (loss, metrics)."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    run = training.ResumableRun(work, name, net, optimizer, seed)

    def step_fn(step: int) -> dict:
        loss, metrics = batch_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()
        return metrics

    net.train()
    run.run(steps, step_fn, save_every=100, lr_at=training.warmup_cosine(lr, 50, steps))
    return net.eval()


def train_detector(work: str, steps: int, seed: int = 0, batch: int = 16, lr: float = 2e-3) -> facenets.Detector:
    torch.manual_seed(seed)
    net = facenets.Detector()
    pool = Pool(seed, 1)

    def batch_loss(step: int):
        rng = training.step_rng(seed, step)
        scenes = pool.at(step)
        picked = [scenes[int(i)] for i in rng.integers(len(scenes), size=batch)]
        x = facenets.images_to_tensor(np.stack([crops.degrade(s.image, rng, colour_drift=True) for s in picked]))
        loss = facenets.detector_loss(net(x), facenets.detector_targets(picked))
        return loss, {"loss": float(loss.detach())}

    return _fit(work, "detector", net, seed, steps, lr, batch_loss)


def train_facenet(work: str, steps: int, seed: int = 0, batch: int = 64, lr: float = 2e-3) -> facenets.FaceNet:
    torch.manual_seed(seed + 1)
    net = facenets.FaceNet()
    pool = Pool(seed, 2)

    def batch_loss(step: int):
        data = facenets.crop_batch(pool.at(step), training.step_rng(seed + 1, step), batch, shift=0.15, scale=0.2)
        return facenets.facenet_loss(net(data["image"]), data, net)

    return _fit(work, "facenet", net, seed, steps, lr, batch_loss)


def train_judge(work: str, steps: int, seed: int = 100, batch: int = 64, lr: float = 2e-3) -> facenets.Judge:
    """Another seed and another scene stream than the face net: an independent reader of the faces."""
    torch.manual_seed(seed)
    net = facenets.Judge()
    pool = Pool(seed, 3)

    def batch_loss(step: int):
        data = facenets.crop_batch(pool.at(step), training.step_rng(seed, step), batch, shift=0.08, scale=0.12)
        return facenets.judge_loss(net(data["image"]), data)

    return _fit(work, "judge", net, seed, steps, lr, batch_loss)
