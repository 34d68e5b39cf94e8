"""Diff pruning (Guo et al. 2021): θ = θ0 + z⊙w with a hard-concrete gate z and an expected-L0
penalty; the gates' log α train at their own learning rate (``alpha_lr``, 0.1 in Guo et al.'s code). After
``burnin`` steps the diff is projected onto the L0 ball (the top ⌊m·p⌋ gates). Without ``reproject_every``
training goes on with that mask fixed (the L0 penalty off, the gates deterministic), as Guo et al.'s second
stage does. With it, the kept gates go on sampled, as in burn-in, and every ``reproject_every`` steps the mask
is projected again over all gates, those outside it at the value they left with: the alternation of Fu et al.,
whose "projection discontinuity" figure comes from it. The L0 penalty is off after the first projection in both
cases (the projection holds the budget): on the kept gates alone it sank them below the frozen ones, whatever
they learned (Adam scales its tiny gradient up), and each re-projection swapped most of the mask.
Entries outside the mask equal θ0 exactly and hold no optimizer state after every projection; a state
counts as "best" only once it obeys the budget (``in_budget``), so the scored model is never dense."""
import math

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from .registry import register
from .base import MaskMethod, MaskParams, Projection
from ..masking import backbone_parameters, select_top

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1  # hard-concrete constants of Louizos et al. 2018


class DiffPruneParams(MaskParams):
    burnin: int = Field(100, gt=0, description="steps of gated training before the first projection")
    reproject_every: int | None = Field(None, gt=0, description="steps between re-projections after the first")
    l0_weight: float = Field(1.25e-7, ge=0, description="λ of the expected-L0 penalty (Guo et al.)")
    alpha_lr: float = Field(0.1, gt=0, le=1, description="peak learning rate of the gates' log α (Guo et al.'s "
                                                         "code: 0.1); the diff w trains at the method's lr")
    alpha_init: float = Field(5.0, description="initial gate log-alpha (5: gates almost surely open)")


class GatedDiff(nn.Module):
    """Parametrization X -> where(mask, X + z⊙w, X); X (θ0) itself never trains."""

    def __init__(self, like: torch.Tensor, alpha_init: float):
        super().__init__()
        self.w = nn.Parameter(torch.zeros_like(like, dtype=torch.float32))
        self.log_alpha = nn.Parameter(torch.full_like(like, alpha_init, dtype=torch.float32))
        self.register_buffer("mask", torch.ones_like(like, dtype=torch.bool))
        self.register_buffer("projected", torch.zeros((), dtype=torch.bool))
        self.resample = False  # after a projection: sample the kept gates (re-projection), or fix them
        # read in every forward: a host bool, as a read of the device buffer would wait for the GPU each time
        self.is_projected = False
        self.register_load_state_dict_post_hook(lambda module, _: module.set_projected(bool(module.projected)))

    def set_projected(self, flag: bool) -> None:
        self.projected.fill_(flag)
        self.is_projected = flag

    def gate(self) -> torch.Tensor:
        if self.training and (self.resample or not self.is_projected):
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((u.log() - (-u).log1p() + self.log_alpha) / BETA)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, original + (self.gate() * self.w).to(original.dtype), original)

    def expected_l0(self) -> torch.Tensor:
        """The expected number of open gates (a burn-in penalty: every gate is in the model until the first
        projection)."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA)).sum()


def gated_diffs(model) -> dict[str, GatedDiff]:
    out = {}
    for name, module in model.backbone.named_modules():
        if parametrize.is_parametrized(module):
            for pname, plist in module.parametrizations.items():
                out[f"backbone.{name}.{pname}" if name else f"backbone.{pname}"] = plist[0]
    return out


@register
class DiffPrune(MaskMethod):
    name = "diffprune"
    masked_optimizer = False  # trains gates and diffs densely until projection
    Params = DiffPruneParams

    def prepare(self, model):
        for prefix, module in list(model.backbone.named_modules()):
            for pname, p in list(module.named_parameters(recurse=False)):
                if (f"{prefix}.{pname}" if prefix else pname) in model.fresh:
                    continue  # not θ0: trained in full with the head
                gate = GatedDiff(p, self.params.alpha_init)
                gate.resample = self.params.reproject_every is not None
                parametrize.register_parametrization(module, pname, gate, unsafe=True)
        self._gate_grads(model)
        self.k_budget = self.k(model)

    @staticmethod
    def _gate_grads(model):
        for name, p in model.backbone.named_parameters():
            if ".parametrizations." in name:
                p.requires_grad_(name.endswith((".w", ".log_alpha")))

    @classmethod
    def check_training(cls, params, training):
        if params.burnin > training.max_steps:
            raise ValueError(f"methods.diffprune.burnin ({params.burnin}) is beyond training.max_steps "
                             f"({training.max_steps}): the model would never be projected onto the budget; "
                             "lower burnin or raise max_steps")

    @property
    def in_budget(self):
        return self.mask is not None

    def select(self, model, ctx):
        self.mask = None  # the mask exists only after the first projection

    def use_mask(self, model, mask):
        """Gates follow the mask: open where selected after a projection, everywhere before the first."""
        self.mask = mask
        with torch.no_grad():
            for n, g in gated_diffs(model).items():
                keep = torch.ones(g.mask.numel(), dtype=torch.bool, device=g.mask.device)
                if mask is not None:
                    keep.fill_(False)
                    keep[mask[n].to(keep.device)] = True
                g.mask.copy_(keep.view_as(g.mask))
                g.set_projected(mask is not None)
        self._gate_grads(model)

    def dense_parameters(self, model):
        return [(f"{n}.{pn}", p) for n, g in gated_diffs(model).items() for pn, p in g.named_parameters()]

    def dense_learning_rates(self, model):
        return {f"{n}.log_alpha": self.params.alpha_lr for n in gated_diffs(model)}

    def entry_trained(self, model, mask):
        # Burn-in (no mask yet): every gate trains, so its checkpoint is dense and cannot be otherwise: w and
        # log_alpha whole with their moments, about twice the bytes of full tuning's. After a projection, w and
        # log_alpha train at the mask's entries only: w is zero elsewhere, and every moment is zero elsewhere.
        if mask is None:
            return {}
        return {f"{n}.{pn}": mask[n] for n in gated_diffs(model) for pn in ("w", "log_alpha")}

    def whole_values(self, model):
        # A re-projection ranks every entry by log_alpha, those outside the mask at the value they froze at when
        # they left it: to go on exactly, a checkpoint keeps them (values only, no moments). Without
        # re-projection they are never read again.
        return {f"{n}.log_alpha" for n in gated_diffs(model)} if self.params.reproject_every else set()

    def trainable_entries(self, model):
        if self.mask is None:  # before the first projection every entry trains
            return {n: p.numel() for n, p in backbone_parameters(model).items()}
        return super().trainable_entries(model)

    def extra_loss(self, model):
        # Burn-in only. After a projection the budget holds by projection, and a penalty over the kept gates alone
        # (those outside are frozen) sank them below the frozen ones: Adam scales its tiny gradient up to a step
        # near alpha_lr's size, and each re-projection swapped most of the mask for that drift, not for learning
        if self.mask is not None or self.params.l0_weight == 0:
            return None
        return self.params.l0_weight * sum(g.expected_l0() for g in gated_diffs(model).values())

    def project(self, model, step: int, ctx) -> None:
        gates = gated_diffs(model)
        before = ctx.probe_loss()
        new = select_top({n: g.log_alpha for n, g in gates.items()}, self.k_budget, self.params.scope)
        flipped = 0
        with torch.no_grad():
            for n, g in gates.items():
                keep = torch.zeros(g.mask.numel(), dtype=torch.bool, device=g.mask.device)
                keep[new[n].to(keep.device)] = True
                keep = keep.view_as(g.mask)
                flipped += int((keep != g.mask).sum())
                g.w.masked_fill_(~keep, 0.0)  # dropped entries are θ0 again...
                ctx.forget(g.w, ~keep)  # ...and hold no optimizer state, so a re-entry starts from θ0
                # the kept gates' moments go too where a re-projection follows: burn-in's penalty lives on in
                # them and sank the kept gates below the frozen ones (17,358 flips of a 10,113-entry mask at the
                # first re-projection, then 78; 96 without it), so the next ranking moves only by what they learn
                ctx.forget(g.log_alpha, torch.ones_like(keep) if self.params.reproject_every else ~keep)
                g.mask.copy_(keep)
                g.set_projected(True)
        self.mask = new
        self.projections.append(Projection(step, flipped, before, ctx.probe_loss()))

    def after_step(self, step, model, ctx):
        first = self.mask is None and step >= self.params.burnin
        again = (self.mask is not None and self.params.reproject_every
                 and (step - self.params.burnin) % self.params.reproject_every == 0)
        if first or again:
            self.project(model, step, ctx)

    def finalize(self, model):
        if not all(g.is_projected for g in gated_diffs(model).values()):
            raise RuntimeError("diffprune: the scored state was never projected onto the budget")
        was_training = model.training
        model.eval()
        for module in list(model.backbone.modules()):
            if parametrize.is_parametrized(module):
                for pname in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
        model.train(was_training)
