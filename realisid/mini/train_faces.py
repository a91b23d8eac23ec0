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


def _optimise(optimizer, loss, params) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 5.0)
    optimizer.step()


def train_detector(work: str, steps: int, seed: int = 0, batch: int = 16, lr: float = 2e-3) -> facenets.Detector:
    torch.manual_seed(seed)
    net = facenets.Detector()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    run = training.ResumableRun(work, "detector", net, optimizer, seed)
    pool = Pool(seed, 1)

    def step_fn(step: int) -> dict:
        rng = training.step_rng(seed, step)
        scenes = pool.at(step)
        picked = [scenes[int(i)] for i in rng.integers(len(scenes), size=batch)]
        x = facenets.images_to_tensor(np.stack([crops.degrade(s.image, rng, colour_drift=True) for s in picked]))
        loss = facenets.detector_loss(net(x), facenets.detector_targets(picked))
        _optimise(optimizer, loss, net.parameters())
        return {"loss": float(loss.detach())}

    net.train()
    run.run(steps, step_fn, save_every=100, lr_at=training.warmup_cosine(lr, 50, steps))
    return net.eval()


def train_facenet(work: str, steps: int, seed: int = 0, batch: int = 64, lr: float = 2e-3) -> facenets.FaceNet:
    torch.manual_seed(seed + 1)
    net = facenets.FaceNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    run = training.ResumableRun(work, "facenet", net, optimizer, seed)
    pool = Pool(seed, 2)

    def step_fn(step: int) -> dict:
        data = facenets.crop_batch(pool.at(step), training.step_rng(seed + 1, step), batch, shift=0.15, scale=0.2)
        loss, metrics = facenets.facenet_loss(net(data["image"]), data, net)
        _optimise(optimizer, loss, net.parameters())
        return metrics

    net.train()
    run.run(steps, step_fn, save_every=100, lr_at=training.warmup_cosine(lr, 50, steps))
    return net.eval()


def train_judge(work: str, steps: int, seed: int = 100, batch: int = 64, lr: float = 2e-3) -> facenets.Judge:
    """Another seed and another scene stream than the face net: an independent reader of the faces."""
    torch.manual_seed(seed)
    net = facenets.Judge()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    run = training.ResumableRun(work, "judge", net, optimizer, seed)
    pool = Pool(seed, 3)

    def step_fn(step: int) -> dict:
        data = facenets.crop_batch(pool.at(step), training.step_rng(seed, step), batch, shift=0.08, scale=0.12)
        loss, metrics = facenets.judge_loss(net(data["image"]), data)
        _optimise(optimizer, loss, net.parameters())
        return metrics

    net.train()
    run.run(steps, step_fn, save_every=100, lr_at=training.warmup_cosine(lr, 50, steps))
    return net.eval()
