"""What every method provides to the one training loop, and the registry that names them."""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch
from pydantic import Field
from torch import nn

from ..schema import Strict
from ..masking import Scope, backbone_parameters, budget, select_top


class MethodParams(Strict):
    lr: float | None = Field(None, gt=0, le=1, description="learning rate for this method (≤ 1, as training.lr); "
                                                           "default: training.lr, else the method's default_lr")


class MaskParams(MethodParams):
    scope: Scope = Field("global", description="global: rank all eligible entries together; per_tensor: each tensor alike")


def _not_ready(*_args, **_kwargs):
    raise RuntimeError("this context hook exists only once the optimizers are built (during training)")


@dataclass
class MethodContext:
    """All a method sees of the loop (never the Trainer itself): θ0, batches for burn-in, the loss, and, once
    training runs, a probe loss and the two ways to reset optimizer state that projections need."""
    theta0: dict[str, torch.Tensor]  # backbone name -> pretrained values (CPU)
    batches: Callable[[int, int], Iterator[dict[str, torch.Tensor]]]  # (n, salt) -> n training batches
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    device: torch.device
    probe_loss: Callable[[], float] = _not_ready  # training loss on one fixed batch, eval mode
    # masked optimizer: from now on train exactly these flat entries of this parameter, moments from zero
    reselect: Callable[[nn.Parameter, torch.Tensor], None] = _not_ready
    # dense optimizer: zero the moments of this parameter where the bool tensor is True
    forget: Callable[[nn.Parameter, torch.Tensor], None] = _not_ready


@dataclass
class Projection:
    """One projection onto the sparse set (diffprune, childprune): the paper's Figure 4 points."""
    step: int
    flipped: int
    loss_before: float
    loss_after: float

    def as_dict(self) -> dict[str, float]:
        return {"step": self.step, "flipped": self.flipped, "loss_before": self.loss_before,
                "loss_after": self.loss_after}


class Method:
    """Base: trains nothing of the backbone. Subclasses override what they need.

    ``prepare`` changes the model's structure (same result every time: it is redone on resume);
    ``select`` chooses what to train (skipped on resume, where ``load_state_dict`` restores it).
    """
    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    uses_sparsity: ClassVar[bool] = True
    masked_optimizer: ClassVar[bool] = False
    changes_structure: ClassVar[bool] = False  # adds modules (LoRA, adapters): a delta needs prepare() to load
    # A rate that trains on the embedded model in 150 steps (benchmarks/method_defaults.py, README table).
    # Few entries need large steps: the mask methods' 2e-3 against full tuning's 5e-5.
    default_lr: ClassVar[float] = 2e-3

    def __init__(self, params: MethodParams, sparsity: float | None, seed: int):
        self.params, self.sparsity, self.seed = params, sparsity, seed
        self.mask: dict[str, torch.Tensor] | None = None  # name -> flat indices (mask methods only)
        self.projections: list[Projection] = []

    # --- structure and selection ---------------------------------------------------------------
    def fit(self, model: nn.Module) -> None:
        """Raise ValueError when this trial's budget cannot hold what the method adds to ``model`` (a LoRA rank,
        an adapter bottleneck). ``prepare`` calls it, and so does the sweep's check before anything runs."""

    def prepare(self, model: nn.Module) -> None:
        pass

    def select(self, model: nn.Module, ctx: MethodContext) -> None:
        pass

    def dense_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """Trained in full by the dense AdamW (the head is added by the loop)."""
        return []

    def dense_learning_rates(self, model: nn.Module) -> dict[str, float]:
        """Tensors of ``dense_parameters`` that train at a peak learning rate of their own (name -> rate); the
        others, and the head, at the trial's."""
        return {}

    def entry_trained(self, model: nn.Module, mask: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Tensors of ``dense_parameters`` that, under ``mask``, train only at some flat entries (name -> flat
        indices): elsewhere their optimizer moments are zero and their values zero or of no further use
        (:meth:`whole_values` names those that are). A checkpoint stores values and moments at the entries only."""
        return {}

    def whole_values(self, model: nn.Module) -> set[str]:
        """Of :meth:`entry_trained`'s tensors, those whose values outside the entries still matter to go on
        (frozen, not trained: their moments stay at the entries); a resumable checkpoint keeps them whole."""
        return set()

    def added_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """Parameters the method added to the model (LoRA factors, adapters): trained, not part of θ0."""
        return []

    @property
    def in_budget(self) -> bool:
        """Whether the current model obeys the sparsity budget; only such a state may become the best."""
        return True

    @classmethod
    def check_training(cls, params: MethodParams, training: Any) -> None:
        """Refuse settings of this method that cannot work with these training settings (ValueError)."""

    def trainable_entries(self, model: nn.Module) -> dict[str, int]:
        """Trainable entries per tensor name: the mask's, else the densely trained tensors' (not the head)."""
        if self.mask is not None:
            return {n: int(i.numel()) for n, i in self.mask.items()}
        return {n: p.numel() for n, p in self.dense_parameters(model)}

    def trainable_count(self, model: nn.Module) -> int:
        return sum(self.trainable_entries(model).values())

    # --- training hooks --------------------------------------------------------------------------
    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def after_step(self, step: int, model: nn.Module, ctx: MethodContext) -> None:
        pass

    def finalize(self, model: nn.Module) -> None:
        """Leave the backbone as plain tensors holding the trained values (e.g. bake gates)."""

    # --- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"mask": self.mask, "projections": [p.as_dict() for p in self.projections]}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.use_mask(model, state["mask"])
        self.projections = [Projection(**p) for p in state["projections"]]

    def use_mask(self, model: nn.Module, mask: dict[str, torch.Tensor] | None) -> None:
        """Make ``mask`` the selection (on resume, and when the best state is reloaded)."""
        self.mask = mask
        if mask is not None:
            set_mask_grad(model, mask)


class DenseSubsetMethod(Method):
    """Trains a dense subset (BitFit's biases, LoRA's factors, adapters): the backbone is frozen, then
    what ``dense_parameters`` names gets gradients again."""

    def select(self, model: nn.Module, ctx: MethodContext | None) -> None:
        freeze_backbone(model)
        for _, p in self.dense_parameters(model):
            p.requires_grad_(True)

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        super().load_state_dict(state, model)
        self.select(model, None)


class SizedMethod(DenseSubsetMethod):
    """Adds modules whose size (``size_param``: a LoRA rank, an adapter bottleneck) is the one set, else the
    largest whose entries fit the budget ⌊m·p⌋; subclasses say how many entries a size trains."""
    size_param: ClassVar[str]
    changes_structure = True

    @staticmethod
    def entries(backbone: nn.Module, size: int) -> int:
        raise NotImplementedError

    @staticmethod
    def largest(backbone: nn.Module, k: int) -> int:
        """The largest size within ``k`` entries; raises ValueError when not even size 1 fits."""
        raise NotImplementedError

    def fit(self, model: nn.Module) -> int:
        """The size this trial trains."""
        k = budget(sum(p.numel() for p in backbone_parameters(model).values()), self.sparsity)
        size = getattr(self.params, self.size_param) or self.largest(model.backbone, k)
        if self.entries(model.backbone, size) > k:
            raise ValueError(f"{self.name}: {self.size_param} {size} trains {self.entries(model.backbone, size)} "
                             f"entries, above this trial's budget ⌊m·p⌋ = {k} (p = {self.sparsity}); set "
                             f"{self.size_param} ≤ {self.largest(model.backbone, k)}, raise the sparsity, or leave "
                             f"{self.size_param} unset for the largest that fits")
        return size


class MaskMethod(Method):
    """Chooses ⌊m·p⌋ backbone entries by a score; subclasses only say how to score."""
    Params = MaskParams
    masked_optimizer: ClassVar[bool] = True  # train the selection with MaskedAdamW

    def scores(self, model: nn.Module, ctx: MethodContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def fit(self, model: nn.Module) -> None:
        self.k(model)

    def k(self, model: nn.Module) -> int:
        """⌊m·p⌋; a ValueError where it is 0 (a typo such as 1e-9 for 1e-3 trained the head alone, as this method)."""
        m = sum(p.numel() for p in backbone_parameters(model).values())
        k = budget(m, self.sparsity)
        if k == 0:
            raise ValueError(f"{self.name}: sparsity {self.sparsity} leaves a budget of ⌊m·p⌋ = 0 of m = {m} "
                             "backbone entries, so only the head would train; the smallest sparsity that trains one "
                             f"entry is {smallest_sparsity(m):g}")
        return k

    def select(self, model: nn.Module, ctx: MethodContext) -> None:
        self.mask = select_top(self.scores(model, ctx), self.k(model), self.params.scope)
        set_mask_grad(model, self.mask)


def smallest_sparsity(m: int) -> float:
    """The smallest p of three significant digits with ⌊m·p⌋ ≥ 1 (1/m itself, rounded to nearest, can floor to 0)."""
    e = math.floor(math.log10(1 / m)) - 2
    p = math.ceil(1 / m / 10**e) * 10**e
    while budget(m, p) < 1:
        p += 10**e
    return float(f"{p:.3g}")


def set_mask_grad(model: nn.Module, mask: dict[str, torch.Tensor]) -> None:
    """Gradients only where some entry is selected; the rest of the backbone is frozen outright."""
    for name, p in backbone_parameters(model).items():
        p.requires_grad_(bool(mask.get(name) is not None and mask[name].numel()))


def freeze_backbone(model: nn.Module) -> None:
    for p in model.backbone.parameters():
        p.requires_grad_(False)


def accumulate_gradients(model: nn.Module, ctx: MethodContext, n_batches: int, salt: int,
                         square_each: bool) -> dict[str, torch.Tensor]:
    """Σ_b g_b (or Σ_b g_b² when ``square_each``) over n batches at the current θ, in eval mode (no
    dropout), with no update. SAM scores (Σg)²; Fisher information is Σg²."""
    params = backbone_parameters(model)
    was_training = model.training
    saved = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    model.eval()
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for batch in ctx.batches(n_batches, salt):
        model.zero_grad(set_to_none=True)
        ctx.loss(model, batch).backward()
        for n, p in params.items():
            if p.grad is not None:
                acc[n] += p.grad.float() ** 2 if square_each else p.grad.float()
    model.zero_grad(set_to_none=True)
    for n, p in params.items():
        p.requires_grad_(saved[n])
    model.train(was_training)
    return acc
