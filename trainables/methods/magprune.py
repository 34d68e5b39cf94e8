"""Magnitude pruning as selection: the ⌊m·p⌋ entries largest in |θ0|."""
from .registry import register
from .base import MaskMethod
from ..masking import backbone_parameters


@register
class MagPrune(MaskMethod):
    name = "magprune"

    def scores(self, model, ctx):
        return {n: p.detach().abs() for n, p in backbone_parameters(model).items()}
