"""Pure helpers of the loop: learning rate by step, and the order of training batches."""
from __future__ import annotations

import numpy as np


def lr_at(step: int, base_lr: float, max_steps: int, warmup_ratio: float) -> float:
    """Linear warmup to ``base_lr``, then linear decay to 0 at ``max_steps`` (step counts from 0)."""
    warmup = int(max_steps * warmup_ratio)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * max(0.0, (max_steps - step) / max(1, max_steps - warmup))


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """A shuffled epoch cut into batches, as jiant's random sampler gave the paper. A pure function of (seed,
    epoch): a resumed trial finds its place from the step alone.

    No length bucketing: which examples share a batch is part of what a seed varies, and the study measures that
    variance. Batches cut from length-sorted runs of 800 examples put 87% of one seed's same-batch pairs together
    again under another seed (a shuffle: 7%), on a 225-example task like CB (tests/test_schedule.py)."""
    order = np.random.default_rng([seed, 17, epoch]).permutation(len(lengths))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
