"""Full fine-tuning: every backbone entry trains."""
from .registry import register
from .base import Method
from ..masking import backbone_parameters


@register
class Full(Method):
    name = "full"
    default_lr = 5e-5
    uses_sparsity = False

    def dense_parameters(self, model):
        return list(backbone_parameters(model).items())
