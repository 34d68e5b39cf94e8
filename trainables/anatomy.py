"""Where a method's budget goes: trainable entries per encoder layer and module kind, and the mask file.

The audit found that global selection gives most of SAM's budget to the pooler on MiniLM; a user should see
such things in every trial, not find them by reading code. Names are the loop's parameter names
(``backbone.encoder.layer.3.attention.self.query.weight``, LoRA's ``...query.lora_A.default.weight``,
``adapters.encoder_layer_3_output_dense.down.weight``), for BERT-style encoders (BERT, RoBERTa, MiniLM);
anything else is kind ``other``.
"""
from __future__ import annotations

import collections
import re
from pathlib import Path

import torch

KINDS = ("embeddings", "attn.q", "attn.k", "attn.v", "attn.o", "ffn.in", "ffn.out", "layernorm", "pooler",
         "bias", "adapter", "other")
MASK_FILE = "mask.safetensors"

_LAYER = re.compile(r"layer[._](\d+)[._]")
_MODULE_KIND = [  # (pattern on the module path, kind); first match wins
    (re.compile(r"attention\.self\.query$"), "attn.q"),
    (re.compile(r"attention\.self\.key$"), "attn.k"),
    (re.compile(r"attention\.self\.value$"), "attn.v"),
    (re.compile(r"attention\.output\.dense$"), "attn.o"),
    (re.compile(r"intermediate\.dense$"), "ffn.in"),
    (re.compile(r"(^|\.)output\.dense$"), "ffn.out"),
    (re.compile(r"(?i)layer_?norm$"), "layernorm"),
    (re.compile(r"pooler\.dense$"), "pooler"),
    (re.compile(r"embeddings\.\w+_embeddings$"), "embeddings"),
]


def locate(name: str) -> tuple[str, str]:
    """(layer, kind) of a trainable tensor: layer is ``embeddings``, ``0``..``L-1``, ``pooler`` or ``other``."""
    if name.startswith("adapters."):
        m = _LAYER.search(name)
        return (m.group(1) if m else "other"), "adapter"
    if ".lora_" in name:  # a LoRA factor counts where its target layer is
        module, leaf = name.split(".lora_")[0], "lora"
    else:
        module, _, leaf = name.rpartition(".")
    module = module.removeprefix("backbone.")
    m = _LAYER.search(module + ".")
    layer = m.group(1) if m else "embeddings" if module.startswith("embeddings") else \
        "pooler" if module.startswith("pooler") else "other"
    kind = next((k for pattern, k in _MODULE_KIND if pattern.search(module)), "other")
    if leaf == "bias" and kind not in ("layernorm",):
        kind = "bias"
    return layer, kind


def anatomy(entries: dict[str, int]) -> list[dict[str, object]]:
    """Trainable entries per (layer, kind), summing to ``sum(entries.values())``; zero rows left out."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for name, n in entries.items():
        counts[locate(name)] += int(n)
    return [{"layer": layer, "kind": kind, "count": n} for (layer, kind), n in sorted(counts.items()) if n]


def save_mask(mask: dict[str, torch.Tensor], folder: str | Path, **meta: str) -> Path:
    """Flat indices per tensor as safetensors (int32 when they fit: half the bytes); empty tensors left out."""
    from safetensors.torch import save_file

    path = Path(folder) / MASK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {n: i.to(torch.int32 if (i.numel() == 0 or int(i.max()) < 2**31) else torch.int64).contiguous()
               for n, i in mask.items() if i.numel()}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in meta.items()})
    return path


def load_mask(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {n: t.long() for n, t in load_file(str(path)).items()}


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, int, int, int]:
    """(|A∩B| / |A∪B|, |A|, |B|, |A∩B|) of two masks over the same model."""
    import numpy as np

    inter = sum(int(np.intersect1d(a[n].numpy(), b[n].numpy(), assume_unique=True).size) for n in a.keys() & b.keys())
    na, nb = sum(int(t.numel()) for t in a.values()), sum(int(t.numel()) for t in b.values())
    union = na + nb - inter
    return (inter / union if union else 1.0), na, nb, inter
