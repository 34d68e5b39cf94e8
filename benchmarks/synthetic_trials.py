"""Trial results shaped like ``trainables.loop`` makes them, without training anything: for tracking
benchmarks and tests (benchmarks must not import tests; tests import this)."""
from __future__ import annotations

import random
from typing import Any


def trial_dict(cfg) -> dict[str, Any]:
    """What Tune's config carries for a trial (and the record keeps)."""
    return {**cfg.model_dump(mode="json"), "trial_key": cfg.key}


def fake_result(cfg, score: float | None = None, steps=(3, 6, 9), **extra) -> dict[str, Any]:
    """A FINISHED trial's result with a short curve; the score is seeded by the trial key."""
    rng = random.Random(cfg.key)
    score = rng.uniform(0.4, 0.9) if score is None else score
    curve = [{"step": s, "dev_score": score - 0.01 * (len(steps) - i), "train_loss": 1.0 / (i + 1), "lr": 1e-3}
             for i, s in enumerate(steps)]
    out = {"trial_key": cfg.key, "method": cfg.method, "task": cfg.task, "seed": cfg.seed, "sparsity": cfg.sparsity,
           "perturbation": cfg.perturbation, "model": cfg.model, "status": "FINISHED", "metric": "accuracy",
           "test_score": score, "dev_score": score + 0.01, "train_score": score + 0.05, "test_accuracy": score,
           "dev_accuracy": score + 0.01, "train_accuracy": score + 0.05, "majority_dev_score": 0.5,
           "majority_test_score": 0.45, "steps": steps[-1], "best_step": steps[-1], "resumed_from_step": None,
           "eligible_params": 1000, "trainable_params": 10, "changed_params": 10, "added_params": 0,
           "device": "cpu", "n_train": 200, "n_dev": 22, "n_test": 56, "projections": [], "curve": curve,
           "wall_s": 1.5, "setup_s": 0.1, "train_s": 1.0, "eval_s": 0.3, "checkpoint_s": 0.1}
    out.update(extra)
    return out
