"""SAM (Second-order Approximation Method, Fu et al. 2023): accumulate the gradient at θ0 over
``burnin`` batches with no update; score each entry by (Σg)²; train the fixed top ⌊m·p⌋."""
from pydantic import Field

from .registry import register
from .base import MaskMethod, MaskParams, accumulate_gradients


class SAMParams(MaskParams):
    burnin: int = Field(16, gt=0, description="batches whose gradients at θ0 are summed before selection")


@register
class SAM(MaskMethod):
    name = "sam"
    Params = SAMParams

    def scores(self, model, ctx):
        grads = accumulate_gradients(model, ctx, self.params.burnin, salt=1, square_each=False)
        return {n: g ** 2 for n, g in grads.items()}
