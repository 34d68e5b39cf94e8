"""ChildTuning-D style: the Fisher information Σg² at the current θ picks the top ⌊m·p⌋ entries;
they are re-selected every ``reselect_every`` steps. Entries that leave the selection are projected
back to θ0 (so at most ⌊m·p⌋ entries differ from θ0 at any time): the paper's projection step."""
import torch
from pydantic import Field

from .registry import register
from .base import MaskMethod, MaskParams, Projection, accumulate_gradients, set_mask_grad
from ..masking import backbone_parameters, select_top


class ChildPruneParams(MaskParams):
    fisher_batches: int = Field(8, gt=0, description="batches over which Σg² is accumulated")
    reselect_every: int = Field(100, gt=0, description="steps between re-selections")


@register
class ChildPrune(MaskMethod):
    name = "childprune"
    Params = ChildPruneParams

    def scores(self, model, ctx):
        return accumulate_gradients(model, ctx, self.params.fisher_batches, salt=2, square_each=True)

    def after_step(self, step, model, ctx):
        if step % self.params.reselect_every:
            return
        before = ctx.probe_loss()
        new = select_top(accumulate_gradients(model, ctx, self.params.fisher_batches, salt=2 + step, square_each=True),
                         self.k(model), self.params.scope)
        flipped = 0
        with torch.no_grad():
            for name, p in backbone_parameters(model).items():
                old_idx, new_idx = self.mask[name], new[name]
                if torch.equal(old_idx, new_idx):
                    continue
                leaving = old_idx[~torch.isin(old_idx, new_idx)]
                flipped += int(leaving.numel()) + int((~torch.isin(new_idx, old_idx)).sum())
                flat = p.view(-1)
                flat[leaving.to(p.device)] = ctx.theta0[name].view(-1)[leaving].to(p.device, p.dtype)
                ctx.reselect(p, new_idx)
        self.mask = new
        set_mask_grad(model, self.mask)
        self.projections.append(Projection(step, flipped, before, ctx.probe_loss()))
