"""Mixout (Lee et al. 2020): all weights train, but every training forward mixes weights of the backbone's
linear layers back to θ0 with probability q and rescales so the expectation is the weight itself. As Lee et al.
define it (and their code does), mixout(θ0) takes a neuron at a time: all outgoing weights of an input neuron (a
column of a Linear's weight) are mixed together; ``unit: weight`` mixes each entry alone (their "mixconnect").
Mixout replaces the backbone's dropout (Lee et al. use it instead of dropout; ``keep_dropout`` keeps both). At
evaluation the plain weights are used (no mixing)."""
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from .registry import register
from .base import Method, MethodParams
from ..masking import backbone_parameters


class MixoutParams(MethodParams):
    q: float = Field(0.9, ge=0, lt=1, description="probability of mixing a neuron (or entry) back to θ0 (Lee et "
                                                  "al.: 0.9, of 0.7-0.9 on GLUE)")
    unit: Literal["neuron", "weight"] = Field("neuron", description="neuron: an input neuron's outgoing weights "
                                              "together (Lee et al.'s mixout); weight: each entry alone (mixconnect)")
    keep_dropout: bool = Field(False, description="keep the backbone's dropout beside mixout (Lee et al. replace "
                                                  "it: its modules get p = 0)")


class MixLinear(nn.Linear):
    """A Linear whose weight is mixed out towards ``target`` (θ0) in training mode."""

    def __init__(self, linear: nn.Linear, q: float, unit: str):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight, self.bias, self.q, self.unit = linear.weight, linear.bias, q, unit
        self.register_buffer("target", linear.weight.detach().clone(), persistent=False)

    def mixed_weight(self) -> torch.Tensor:
        """(B·u + (1-B)·w - q·u) / (1-q), B ~ Bernoulli(q) per input column (neuron) or per entry: E = w."""
        w = self.weight
        draw = w[:1] if self.unit == "neuron" else w  # one draw per column, broadcast down the rows
        keep = torch.rand_like(draw) >= self.q  # 1 - q: keep the trained weight
        return (torch.where(keep, w, self.target) - self.q * self.target) / (1 - self.q)

    def forward(self, x):
        w = self.mixed_weight() if self.training and self.q > 0 else self.weight
        return F.linear(x, w, self.bias)


@register
class Mixout(Method):
    name = "mixout"
    default_lr = 5e-5
    Params = MixoutParams
    uses_sparsity = False

    def prepare(self, model):
        for name, module in list(model.backbone.named_modules()):
            for child_name, child in list(module.named_children()):
                weight = f"{name}.{child_name}.weight" if name else f"{child_name}.weight"
                if type(child) is nn.Linear and weight not in model.fresh:  # a fresh layer has no θ0 to mix to
                    setattr(module, child_name, MixLinear(child, self.params.q, self.params.unit))
        if not self.params.keep_dropout:
            for module in model.backbone.modules():
                if isinstance(module, nn.Dropout):  # attention reads its p too (dropout_p = self.dropout.p)
                    module.p = 0.0

    def dense_parameters(self, model):
        return list(backbone_parameters(model).items())
