"""LoRA through peft on the query, key, value, attention-output, intermediate and output projections.
peft initialises B = 0, so the model before training equals the pretrained one."""
import re

from pydantic import Field
from torch import nn

from .registry import register
from .base import MethodParams, SizedMethod

TARGETS = r".*layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"


class LoraParams(MethodParams):
    rank: int | None = Field(None, gt=0, description="LoRA rank, at most the largest within ⌊m·p⌋ (the default)")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank)")
    dropout: float = Field(0.0, ge=0, lt=1)


def target_layers(backbone: nn.Module) -> list[nn.Linear]:
    found = [m for n, m in backbone.named_modules() if re.fullmatch(TARGETS, n) and isinstance(m, nn.Linear)]
    if not found:
        raise ValueError("lora: no attention/FFN projections (`layer.N.attention.self.query`, ...) in this "
                         "encoder; the LoRA targets support BERT-style encoders")
    return found


def per_rank(backbone: nn.Module) -> int:
    """Entries one rank adds: Σ (in + out) over the target layers."""
    return sum(m.in_features + m.out_features for m in target_layers(backbone))


def lora_entries(backbone: nn.Module, r: int) -> int:
    return r * per_rank(backbone)


def rank_for_budget(backbone: nn.Module, k: int) -> int:
    """Largest r with r·per_rank ≤ k."""
    one = per_rank(backbone)
    if k // one < 1:
        raise ValueError(f"lora: a budget of {k} entries is below one rank ({one}); raise the sparsity")
    return k // one


@register
class Lora(SizedMethod):
    name = "lora"
    default_lr = 1e-3
    Params = LoraParams
    size_param = "rank"
    entries = staticmethod(lora_entries)
    largest = staticmethod(rank_for_budget)

    def prepare(self, model):
        from peft import LoraConfig, inject_adapter_in_model

        r = self.fit(model)
        config = LoraConfig(r=r, lora_alpha=self.params.alpha, lora_dropout=self.params.dropout,
                            target_modules=TARGETS, init_lora_weights=True)
        model.backbone = inject_adapter_in_model(config, model.backbone)
        self.rank = r

    def dense_parameters(self, model):
        return [(f"backbone.{n}", p) for n, p in model.backbone.named_parameters() if "lora_" in n]

    def added_parameters(self, model):
        return self.dense_parameters(model)
