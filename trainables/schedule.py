"""Pure helpers of the loop: learning rate by step, and the order of training batches."""
from __future__ import annotations

import numpy as np


def lr_at(step: int, base_lr: float, max_steps: int, warmup_ratio: float) -> float:
    """Linear warmup to ``base_lr``, then linear decay to 0 at ``max_steps`` (step counts from 0)."""
    warmup = int(max_steps * warmup_ratio)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * max(0.0, (max_steps - step) / max(1, max_steps - warmup))


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, bucket: int = 50) -> list[np.ndarray]:
    """A shuffled epoch, length-bucketed: shuffle, sort within chunks of ``bucket`` batches (so a batch
    pads little), then shuffle the batches. A pure function of (seed, epoch): a resumed trial finds its
    place from the step alone."""
    rng = np.random.default_rng([seed, 17, epoch])
    order = rng.permutation(len(lengths))
    batches = []
    chunk = batch_size * bucket
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]
