"""BitFit: only the backbone's bias terms train."""
from . import register
from .base import Method, freeze_backbone
from ..masking import backbone_parameters


@register
class BitFit(Method):
    name = "bitfit"
    uses_sparsity = False

    def dense_parameters(self, model):
        return [(n, p) for n, p in backbone_parameters(model).items() if n.endswith(".bias")]

    def select(self, model, ctx):
        freeze_backbone(model)
        for _, p in self.dense_parameters(model):
            p.requires_grad_(True)

    def load_state_dict(self, state, model):
        super().load_state_dict(state, model)
        self.select(model, None)
