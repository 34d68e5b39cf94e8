"""The one weight-decay rule, shared by the dense AdamW and :class:`~trainables.masking.MaskedAdamW`.

Decay ≥2-D weights (matrices, embeddings); never biases, normalisation layers, gates or selection scores.
Decaying a gate or a score would bias the selection that ranks by it (DiffPruning's ``log_alpha``), and
decaying LayerNorm pulls its scale towards 0, not towards θ0.
"""
from __future__ import annotations

import torch

NORM_MARKERS = ("layernorm", "layer_norm", "rmsnorm", ".norm.", ".ln_")
GATE_SUFFIXES = (".log_alpha",)  # DiffPruning's gate logits: what its projection ranks by


def decays(name: str, param: torch.Tensor) -> bool:
    if param.ndim < 2 or name.endswith(GATE_SUFFIXES):
        return False
    lowered = name.lower()
    return not any(marker in lowered for marker in NORM_MARKERS)


def decay_groups(named: list[tuple[str, torch.nn.Parameter]], weight_decay: float,
                 own_lr: dict[str, float] | None = None) -> list[dict]:
    """Two torch param groups, by :func:`decays`; the tensors named in ``own_lr`` go to further such groups (the
    non-empty ones) that carry their peak learning rate as ``peak_lr`` (the schedule applies to each its own)."""
    own_lr = own_lr or {}
    groups = []
    for lr in [None, *sorted(set(own_lr.values()))]:
        mine = [(n, p) for n, p in named if own_lr.get(n) == lr]
        peak = {} if lr is None else {"peak_lr": lr}
        pair = [{"params": [p for n, p in mine if decays(n, p)], "weight_decay": weight_decay, **peak},
                {"params": [p for n, p in mine if not decays(n, p)], "weight_decay": 0.0, **peak}]
        groups += pair if lr is None else [g for g in pair if g["params"]]
    return groups
