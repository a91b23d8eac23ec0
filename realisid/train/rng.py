"""The training randomness (noise, sigmas, condition dropout): one stream per (seed, rank, micro-step).

A stream is a pure function of its key, so nothing has to be saved for a resume (accelerate saves custom objects
from the main process only, which used to hand every rank rank 0's generator after a resume), a resumed run
draws exactly what the uninterrupted run drew, and ranks never share noise.
"""

from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, rank: int, micro_step: int) -> int:
    """A 63-bit seed mixing the three keys (a hash, so nearby keys give unrelated Mersenne-Twister states)."""
    digest = hashlib.blake2b(f"realisid-train:{seed}:{rank}:{micro_step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def step_generator(seed: int, rank: int, micro_step: int) -> torch.Generator:
    """The CPU generator of one rank's micro-step (CPU: the same draws on any accelerator)."""
    return torch.Generator().manual_seed(stream_seed(seed, rank, micro_step))
