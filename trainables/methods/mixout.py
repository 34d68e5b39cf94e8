"""Mixout (Lee et al. 2019): all weights train, but every training forward mixes each weight of the
backbone's linear layers back to θ0 with probability q and rescales so the expectation is the weight
itself. At evaluation the plain weights are used (no mixing)."""
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from .registry import register
from .base import Method, MethodParams
from ..masking import backbone_parameters


class MixoutParams(MethodParams):
    q: float = Field(0.1, ge=0, lt=1, description="probability of mixing an entry back to θ0")


class MixLinear(nn.Linear):
    """A Linear whose weight is mixed out towards ``target`` (θ0) in training mode."""

    def __init__(self, linear: nn.Linear, q: float):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight, self.bias, self.q = linear.weight, linear.bias, q
        self.register_buffer("target", linear.weight.detach().clone(), persistent=False)

    def forward(self, x):
        w = self.weight
        if self.training and self.q > 0:
            keep = torch.rand_like(w) >= self.q  # 1 - q: keep the trained entry
            # (B·u + (1-B)·w - q·u) / (1-q) with B = ~keep: expectation equals w
            w = (torch.where(keep, w, self.target) - self.q * self.target) / (1 - self.q)
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
                    setattr(module, child_name, MixLinear(child, self.params.q))

    def dense_parameters(self, model):
        return list(backbone_parameters(model).items())
