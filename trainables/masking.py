"""Choosing ⌊m·p⌋ backbone entries, and training exactly those.

A masked tensor keeps ``requires_grad`` (its gradient is computed densely, as autograd must), but
:class:`MaskedAdamW` gathers the gradient at the selected flat indices, keeps Adam moments only for
them and writes back only them: every other entry stays bit-identical to θ0, gets no weight decay
and holds no optimizer state. torch's sparse optimizers want sparse gradients, which dense layers
do not produce; hence this small optimizer of our own.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from .optim import decay_groups

Scope = Literal["global", "per_tensor"]


def budget(m: int, sparsity: float) -> int:
    """⌊m·p⌋, the number of trainable entries at sparsity p."""
    return int(math.floor(m * sparsity))


def canonical_name(name: str) -> str | None:
    """The pretrained parameter's own name, seen through peft's and torch's wrappers; None for a
    parameter that a method added (LoRA factors, gate parameters)."""
    if "lora_" in name or (".parametrizations." in name and not name.endswith(".original")):
        return None
    name = name.replace(".base_layer.", ".")
    if ".parametrizations." in name:  # X.parametrizations.weight.original -> X.weight
        head, tail = name.split(".parametrizations.")
        name = f"{head}.{tail.removesuffix('.original')}"
    return name


def backbone_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The eligible parameters θ0: what ``model.backbone`` loaded from its checkpoint (not the head, nothing
    a method added, nothing the model initialised fresh, such as roberta-base's pooler)."""
    fresh = getattr(model, "fresh", frozenset())
    out = {}
    for n, p in model.backbone.named_parameters():
        name = canonical_name(n)
        if name is not None and name not in fresh:
            out[f"backbone.{name}"] = p
    return out


def head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trained in full by every method and not counted in m: the task head and the backbone's fresh tensors."""
    out = {f"head.{n}": p for n, p in model.head.named_parameters()}
    fresh = getattr(model, "fresh", frozenset())
    for n, p in model.backbone.named_parameters():
        if canonical_name(n) in fresh:
            out[f"backbone.{canonical_name(n)}"] = p
    return out


def select_top(scores: dict[str, torch.Tensor], k: int, scope: Scope) -> dict[str, torch.Tensor]:
    """Flat indices of the k highest scores. ``global`` ranks all entries together (the paper's
    Theorem 3); ``per_tensor`` gives each tensor ⌊n_i·k/m⌋ and the remainder to the largest fractional
    parts, so the total is still exactly k."""
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    m = sum(sizes)
    if not 0 <= k <= m:
        raise ValueError(f"cannot select {k} of {m} entries")
    if scope == "global":
        flat = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in names])
        top = torch.topk(flat, k, sorted=False).indices if k else torch.empty(0, dtype=torch.long)
        top, _ = torch.sort(top)
        out, start = {}, 0
        for n, size in zip(names, sizes):
            lo, hi = torch.searchsorted(top, torch.tensor([start, start + size]))
            out[n] = top[lo:hi] - start
            start += size
        return out
    if scope != "per_tensor":
        raise ValueError(f"unknown selection scope {scope!r}; valid: global, per_tensor")
    exact = [size * k / m for size in sizes]
    quota = [int(math.floor(e)) for e in exact]
    for i in sorted(range(len(names)), key=lambda i: (quota[i] - exact[i], i))[: k - sum(quota)]:
        quota[i] += 1
    out = {}
    for n, q in zip(names, quota):
        flat = scores[n].detach().reshape(-1).float().cpu()
        out[n] = torch.sort(torch.topk(flat, q, sorted=False).indices).values if q else torch.empty(0, dtype=torch.long)
    return out


class MaskedAdamW(torch.optim.Optimizer):
    """AdamW over the selected flat entries of each parameter only (``index`` per parameter); weight decay by
    :func:`trainables.optim.decays` on the parameter's name."""

    def __init__(self, params_with_index: list[tuple[str, nn.Parameter, torch.Tensor]], lr: float,
                 betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        groups = [g for g in decay_groups([(n, p) for n, p, _ in params_with_index], weight_decay) if g["params"]]
        super().__init__(groups, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        # the order gradients are gathered, so summed for clipping's norm: the construction's, on a resume too
        # (torch's load_state_dict rebuilds ``state`` in param-group order, and a norm summed in another order
        # differs in the last bit, which clipping carries into every weight: a resume was not bit-exact)
        self._order = [p for _, p, _ in params_with_index]
        for _, p, idx in params_with_index:
            self.set_index(p, idx)

    def set_index(self, p: nn.Parameter, idx: torch.Tensor) -> None:
        """(Re)select the entries of ``p``; the moments start from zero for the new selection."""
        idx = idx.to(p.device, torch.long)
        # the step count is a Python int here (a tensor only in state_dict): no dispatch per tensor per step
        self.state[p] = {"index": idx, "step": 0,
                         "exp_avg": torch.zeros(idx.numel(), dtype=torch.float32, device=p.device),
                         "exp_avg_sq": torch.zeros(idx.numel(), dtype=torch.float32, device=p.device)}
        self._gathered = None

    def reselect(self, p: nn.Parameter, idx: torch.Tensor) -> None:
        """Move the selection of ``p`` to ``idx`` during training (ChildPruning). An entry selected before and after
        keeps its moments, and the tensor its step count, as in ChildTuning's dense AdamW over masked gradients; a
        new entry starts from zero moments. (Starting every moment and the step from zero made each re-selection
        an Adam first step, about lr in size, on every selected entry.)"""
        st = self.state.get(p)
        if st is None:
            return self.set_index(p, idx)
        old, idx = st["index"], idx.to(p.device, torch.long)
        order = torch.argsort(old)
        at = torch.searchsorted(old[order], idx).clamp(max=max(old.numel() - 1, 0))
        kept = old[order][at] == idx if old.numel() else torch.zeros_like(idx, dtype=torch.bool)
        src = order[at[kept]]
        moments = {}
        for key in ("exp_avg", "exp_avg_sq"):
            moments[key] = torch.zeros(idx.numel(), dtype=torch.float32, device=p.device)
            moments[key][kept] = st[key][src]
        self.state[p] = {"index": idx, "step": st["step"], **moments}
        self._gathered = None

    @torch.no_grad()
    def gather_grads(self) -> list[torch.Tensor]:
        """Each masked tensor's gradient at its selected entries (float32): what clipping scales in place and the
        next :meth:`step` uses, so each gradient is gathered once per step."""
        self._gathered = {p: p.grad.reshape(-1).index_select(0, st["index"]).float() for p in self._order
                          if (st := self.state.get(p)) is not None and p.grad is not None and st["index"].numel()}
        return list(self._gathered.values())

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW step over the selected entries, in ~3 launches per tensor (gather gradient, gather
        value, scatter value) plus a few multi-tensor ``torch._foreach_*`` launches per group, instead of
        ~10 per tensor. Same arithmetic, in the same order, as the per-tensor loop it replaces."""
        if self._gathered is None:  # not clipped first
            self.gather_grads()
        gathered, self._gathered = self._gathered, None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            params, grads, avgs, avg_sqs, bc1, bc2 = [], [], [], [], [], []
            for p in group["params"]:
                if p not in gathered:
                    continue
                st = self.state[p]
                st["step"] += 1
                t = st["step"]
                params.append(p)
                grads.append(gathered[p])
                avgs.append(st["exp_avg"])
                avg_sqs.append(st["exp_avg_sq"])
                bc1.append(-group["lr"] / (1 - beta1 ** t))
                bc2.append(1 - beta2 ** t)
            if not params:
                continue
            torch._foreach_mul_(avgs, beta1)
            torch._foreach_add_(avgs, grads, alpha=1 - beta1)
            torch._foreach_mul_(avg_sqs, beta2)
            torch._foreach_addcmul_(avg_sqs, grads, grads, value=1 - beta2)
            denom = torch._foreach_div(avg_sqs, bc2)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, group["eps"])
            vals = [p.view(-1).index_select(0, self.state[p]["index"]).float() for p in params]
            if group["weight_decay"]:
                torch._foreach_mul_(vals, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_addcdiv_(vals, avgs, denom, bc1)
            for p, v in zip(params, vals):
                p.view(-1).index_copy_(0, self.state[p]["index"], v.to(p.dtype))
        return None

    def state_dict(self):
        sd = super().state_dict()  # its per-parameter dicts are this optimizer's own: copied before the change
        sd["state"] = {i: {**st, "step": torch.tensor(float(st["step"]))} for i, st in sd["state"].items()}
        return sd

    def load_state_dict(self, state_dict) -> None:
        # torch casts every state tensor to its parameter's dtype: a float32 index loses entries past 2**24
        # (roberta-base's word embeddings have 38.6M), so the indices are set aside and put back exactly
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        indices = {i: state_dict["state"][i]["index"].long().clone() for i in saved_ids if i in state_dict["state"]}
        super().load_state_dict(state_dict)
        for i, p in zip(saved_ids, params):
            st = self.state[p]
            st["index"] = indices[i].to(p.device)
            st["exp_avg"], st["exp_avg_sq"] = st["exp_avg"].float(), st["exp_avg_sq"].float()
            st["step"] = int(st["step"])
        self._gathered = None

    def selected(self) -> int:
        return sum(int(s["index"].numel()) for s in self.state.values())
