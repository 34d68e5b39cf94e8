"""Random: ⌊m·p⌋ entries chosen uniformly at random, seeded by the trial seed."""
import torch

from .registry import register
from .base import MaskMethod
from ..masking import backbone_parameters


@register
class Random(MaskMethod):
    name = "random"

    def scores(self, model, ctx):
        gen = torch.Generator().manual_seed(10_007 + self.seed)
        return {n: torch.rand(p.shape, generator=gen) for n, p in backbone_parameters(model).items()}
