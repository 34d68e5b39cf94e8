"""BitFit: only the backbone's bias terms train."""
from .registry import register
from .base import DenseSubsetMethod
from ..masking import backbone_parameters


@register
class BitFit(DenseSubsetMethod):
    name = "bitfit"
    default_lr = 2e-3
    uses_sparsity = False

    def dense_parameters(self, model):
        return [(n, p) for n, p in backbone_parameters(model).items() if n.endswith(".bias")]
