"""Bottleneck adapters (Houlsby/Pfeiffer): x + up(act(down(x))) on the output of each FFN block.
No maintained adapter library supports transformers 5, so this is ours. The up-projection starts at
zero, so before training the model computes exactly what the pretrained one does."""
import re

import torch
from pydantic import Field
from torch import nn

from .registry import register
from .base import MethodParams, SizedMethod

FFN_OUTPUT = re.compile(r"(^|\.)layer\.\d+\.output\.dense$")


class AdapterParams(MethodParams):
    bottleneck: int | None = Field(None, gt=0, description="adapter width, at most the largest within ⌊m·p⌋ (the default)")


class Adapter(nn.Module):
    def __init__(self, hidden: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return x + self.up(torch.nn.functional.gelu(self.down(x)))


def ffn_outputs(backbone: nn.Module) -> list[tuple[str, nn.Linear]]:
    found = [(n, m) for n, m in backbone.named_modules() if FFN_OUTPUT.search(n) and isinstance(m, nn.Linear)]
    if not found:
        raise ValueError("adapter: no FFN output layer (`layer.N.output.dense`) in this encoder; "
                         "adapters support BERT-style encoders (BERT, RoBERTa, MiniLM, ...)")
    return found


def adapter_entries(backbone: nn.Module, r: int) -> int:
    """L·(2·d·r + r + d): down and up projections with their biases, one adapter per layer."""
    layers = ffn_outputs(backbone)
    d = layers[0][1].out_features
    return len(layers) * (2 * d * r + r + d)


def bottleneck_for_budget(backbone: nn.Module, k: int) -> int:
    """Largest r with adapter_entries(r) ≤ k."""
    layers = ffn_outputs(backbone)
    d = layers[0][1].out_features
    r = (k // len(layers) - d) // (2 * d + 1)
    if r < 1:
        raise ValueError(f"adapter: a budget of {k} entries is too small for one bottleneck unit per layer "
                         f"({len(layers)} layers of width {d} need {len(layers) * (3 * d + 1)}); raise the sparsity")
    return int(r)


@register
class AdapterMethod(SizedMethod):
    name = "adapter"
    default_lr = 1e-3
    Params = AdapterParams
    size_param = "bottleneck"
    entries = staticmethod(adapter_entries)
    largest = staticmethod(bottleneck_for_budget)

    def prepare(self, model):
        r = self.fit(model)
        layers = ffn_outputs(model.backbone)
        model.adapters = nn.ModuleDict({n.replace(".", "_"): Adapter(m.out_features, r) for n, m in layers})
        for n, m in layers:
            adapter = model.adapters[n.replace(".", "_")]
            m.register_forward_hook(lambda _m, _i, out, a=adapter: a(out))
        self.bottleneck = r

    def dense_parameters(self, model):
        return [(f"adapters.{n}", p) for n, p in model.adapters.named_parameters()]

    def added_parameters(self, model):
        return self.dense_parameters(model)
