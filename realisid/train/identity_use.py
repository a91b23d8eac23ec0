"""Identity use of a saved RealisID file (`python -m realisid.mini identity-use`): the face-box denoising loss on
held-out people with each face's own identity vs another face's (see validation.py, which `fit --val-cache` runs
on the live weights), for models of the cached-embedding identity spaces. It separates two recipes where the
judge-based behaviour figures (a dozen images per cell) cannot.
"""

from __future__ import annotations

import tempfile

from tqdm import tqdm

from realisid import checkpoint_format
from realisid.train.config import TrainConfig
from realisid.train.loop import Trainer
from realisid.train.validation import IdentityUse, identity_use_of


def measure(model_file: str, base_file: str, caches: list[str], n: int, batch_size: int = 8,
            seed: int = 0) -> IdentityUse:
    """Identity use of `model_file` on the first n samples of `caches` in a seeded order (held-out people, prepared
    like the training set; at most every sample once, so n is capped at the caches' size)."""
    config = checkpoint_format.read_config(model_file)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(base=base_file, cache=caches, out=out, identity_space="embedding",
                          crop_size=int(config["crop_size"]), projector=dict(config["projector"]), init=model_file,
                          drop_image=0.0, drop_text=0.0, drop_both=0.0, cpu=True, workers=0, steps=1,
                          batch_size=batch_size, progress=False, seed=seed)
        trainer = Trainer(cfg)
        trainer.model.nets.eval()
        n = min(n, len(trainer.dataset))  # past one epoch the seeded order repeats samples
        batches = (trainer._batch(step) for step in range(-(-n // batch_size)))
        use = identity_use_of(trainer.compute_loss, tqdm(batches, desc="identity use", total=-(-n // batch_size)),
                              seed, n)
        trainer.accelerator.end_training()
    return use
