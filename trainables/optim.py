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


def decay_groups(named: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two torch param groups, by :func:`decays`."""
    on = [p for n, p in named if decays(n, p)]
    off = [p for n, p in named if not decays(n, p)]
    return [{"params": on, "weight_decay": weight_decay}, {"params": off, "weight_decay": 0.0}]
