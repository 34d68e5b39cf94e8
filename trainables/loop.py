"""The one training loop every method shares: setup → train → result, runnable with or without Ray.

``Trainer(cfg, report, checkpoint_dir, resume_dir).run()`` trains one trial. ``report(event)`` gets an
:class:`EvalPoint` at every evaluation (with the checkpoint folder when one was written) and one
:class:`TrialEnd` with the result (and the final folder: result, mask, model delta). Errors: ``DataError`` / ``ModelError`` / ``ValueError`` for bad input, before
any training step.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from .anatomy import anatomy, save_mask
from .finetuned import DELTA_DIR, save_delta
from .config import TrialConfig
from .data import Encoded, Splits, build_splits, collate
from .masking import MaskedAdamW, backbone_parameters, head_parameters
from .methods import get_method
from .methods.base import MethodContext
from .metrics import compute_metrics, majority_score
from .optim import decay_groups
from .models import TaskModel, load_pretrained, load_tokenizer, resolve_model
from .schedule import epoch_batches, lr_at
from .tasks import get_task



@dataclass(frozen=True)
class EvalPoint:
    """One evaluation: what a curve plots, and the checkpoint written there (whoever keeps it may delete it)."""
    step: int
    dev_score: float
    train_loss: float
    lr: float
    best_dev_score: float
    checkpoint: str | None = None

    def metrics(self) -> dict[str, float]:
        return {"step": self.step, "dev_score": self.dev_score, "train_loss": self.train_loss, "lr": self.lr,
                "best_dev_score": self.best_dev_score}


@dataclass(frozen=True)
class TrialEnd:
    """The trial's result (every field, lists included) and its final folder, if checkpoints are kept."""
    result: dict[str, Any]
    final_dir: str | None = None


Report = Callable[[EvalPoint | TrialEnd], None]
log = logging.getLogger(__name__)
FINAL_DIR, RESULT_FILE = "final", "result.json"  # the finished trial: its result, mask and model delta
PAD_MULTIPLE = 8  # batch widths rounded up to a multiple of 8: few shapes for torch.compile, tensor-core friendly
_STARTED_IN_PROCESS = itertools.count()  # a reused Ray worker runs trial after trial: its first pays the imports


class InjectedFault(RuntimeError):
    """Raised by the test-only fault switch (``fault.fail_at_step``)."""


class TrainingDiverged(RuntimeError):
    """The training loss went nan or infinite before any evaluation could be kept: there is no model to score."""


def pick_device() -> torch.device:
    # Ray (or the user) narrows CUDA_VISIBLE_DEVICES to this trial's GPU; "cuda" is then that GPU.
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def deterministic_kernels(on: bool) -> None:
    """``training.deterministic``. CPU kernels are deterministic already. On CUDA some are not (atomic adds in
    index_add_ and the embedding's backward; cuBLAS with its default workspace), so two runs of one seed can differ
    in the last bits and, through a top-k selection, in their masks. torch's switch takes the deterministic kernel
    where it has one and warns where it has none (warn_only: a trial is not failed for it). cuBLAS reads its
    workspace setting once per process, at its first matmul: set here, before the model reaches the GPU.
    Attention: with warn_only, the fused SDPA kernels (flash, memory-efficient, cuDNN) keep their atomic backward
    and only warn, so on CUDA they are switched off for the trial and the math kernel (matmuls and a softmax) runs
    instead: slower and more memory, deterministic. (The same switches change CPU's kernel too, whose results
    differ in the last bits, and CPU is deterministic already: they are left alone there.) A sweep's trials share
    their training settings, so a reused worker process never mixes the two; set off, every switch is reset
    (they are global to the process)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # torch's docs: Reproducibility
    torch.use_deterministic_algorithms(on, warn_only=True)
    if torch.cuda.is_available():
        for fused in (torch.backends.cuda.enable_flash_sdp, torch.backends.cuda.enable_mem_efficient_sdp,
                      torch.backends.cuda.enable_cudnn_sdp):
            fused(not on)


def device_name(device: torch.device) -> str:
    """The GPU's name (what a cost comparison needs), or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


class Trainer:
    def __init__(self, cfg: TrialConfig, report: Report | None = None, checkpoint_dir: str | None = None,
                 resume_dir: str | None = None):
        self.cfg, self.report = cfg, report or (lambda event: None)
        self.checkpoint_dir, self.resume_dir = checkpoint_dir, resume_dir
        self.t_start = time.perf_counter()
        self.timers = {"setup_s": 0.0, "train_s": 0.0, "eval_s": 0.0, "checkpoint_s": 0.0}
        self.process_trial = next(_STARTED_IN_PROCESS)  # 0: its setup_s / wall_s include the process's start-up

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Each phase returns one thing, in the order a resume needs them (torchtune's recipe layout)."""
        cfg = self.cfg
        self.task = get_task(cfg.task)
        self.device, self.autocast = self._setup_device()
        model_path = resolve_model(cfg.model)
        tokenizer = load_tokenizer(model_path, words=self.task.kind == "span_pair")
        self.pad_id = tokenizer.pad_token_id or 0
        self.splits = self._setup_data(tokenizer)
        self.model = self._setup_model(model_path)
        self.theta0 = {n: p.detach().to("cpu", copy=True) for n, p in backbone_parameters(self.model).items()}
        self.base_hash = ckpt.base_hash(self.theta0)
        self.method = self._setup_method()
        self.ctx = MethodContext(self.theta0, self._extra_batches, self._loss, self.device)
        state = self._load_state()
        if state is None:
            self.method.select(self.model, self.ctx)
        else:
            self.method.load_state_dict({"mask": state.mask, "projections": state.projections}, self.model)
        self.dense_opt, self.sparse_opt = self._setup_optimizers()
        self.ctx.probe_loss, self.ctx.forget = self.probe_loss, self._forget_dense_state
        if self.sparse_opt is not None:
            self.ctx.reselect = self.sparse_opt.reselect
        self.step, self.best_score, self.best_step, self.bad_evals = 0, -math.inf, 0, 0
        self.best_state: dict[str, torch.Tensor] | None = None  # ckpt.gather() of the best model: what trains
        self.best_mask: dict[str, torch.Tensor] | None = None  # the mask of the best state, not the last one
        self.curve: list[dict[str, float]] = []
        self.loss_sum, self.loss_n = torch.zeros((), device=self.device), 0
        self.resumed_from: int | None = None
        self.diverged_at: int | None = None  # the evaluation step where the loss was found nan/inf
        if state is not None:
            self._restore(state)
            self.resumed_from = self.step
        compiled = cfg.training.compile and self.device.type == "cuda"
        self.forward = torch.compile(self.model) if compiled else self.model
        self._log_what_trains()
        self.timers["setup_s"] = self._clock() - self.t_start

    def _setup_device(self) -> tuple[torch.device, Callable[[], Any]]:
        precision = self.cfg.training.precision
        deterministic_kernels(self.cfg.training.deterministic)
        device = pick_device()
        if precision == "bf16" and device.type != "cuda":
            raise ValueError("training.precision 'bf16' needs a CUDA device; use 'auto' or 'fp32' on CPU")
        if device.type == "cuda":  # a reused worker process: this trial's peak, not the worker's
            torch.cuda.reset_peak_memory_stats(device)
        if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
            return device, lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        return device, contextlib.nullcontext

    def _setup_data(self, tokenizer) -> Splits:
        tc = self.cfg.training
        splits = build_splits(self.cfg.task, tokenizer, tc.max_seq_length, self.cfg.data, self.cfg.perturbation)
        # each split goes to the device once: batches are then indexed and padded there (no copy per step)
        splits = Splits(splits.train.to(self.device), splits.dev.to(self.device), splits.test.to(self.device))
        self.train_lengths = splits.train.lengths()
        self.batches_per_epoch = math.ceil(len(splits.train) / tc.batch_size)
        self._epoch, self._order, self._order_dev = -1, [], []
        return splits

    def _setup_model(self, model_path: str) -> TaskModel:
        torch.manual_seed(self.cfg.seed)  # the head's (and fresh tensors') initialisation
        backbone, fresh = load_pretrained(model_path)
        return TaskModel(backbone, self.task.kind, self.task.num_labels, fresh)

    def _setup_method(self):
        method = get_method(self.cfg.method)(self.cfg.params(), self.cfg.sparsity, self.cfg.seed)
        method.prepare(self.model)  # structure only; redone identically on resume
        self.model.to(self.device)
        return method

    def _setup_optimizers(self) -> tuple[torch.optim.Optimizer, MaskedAdamW | None]:
        lr = self.cfg.effective_lr()
        wd = self.cfg.training.weight_decay
        head = head_parameters(self.model)
        dense = list(head.items()) + self.method.dense_parameters(self.model)
        fused = {"fused": True} if self.device.type == "cuda" else {}
        own_lr = self.method.dense_learning_rates(self.model)
        dense_opt = torch.optim.AdamW(decay_groups(dense, wd, own_lr), lr=lr, **fused)
        self.dense_params = [p for _, p in dense]
        sparse_opt = None
        if self.method.masked_optimizer:
            mask = self.method.mask
            sparse_opt = MaskedAdamW([(n, p, mask.get(n, torch.empty(0, dtype=torch.long)))
                                      for n, p in backbone_parameters(self.model).items()], lr=lr, weight_decay=wd)
        self.base_lr = lr
        # the head (and the backbone's fresh tensors) always train, whatever the method froze
        for p in head.values():
            p.requires_grad_(True)
        return dense_opt, sparse_opt

    def _log_what_trains(self) -> None:
        """Once per trial, at INFO (``train-one -v`` shows it): what trains, and how weight decay applies."""
        decayed = sum(p.numel() for g in self.dense_opt.param_groups if g["weight_decay"] > 0 for p in g["params"])
        dense = sum(p.numel() for g in self.dense_opt.param_groups for p in g["params"])
        masked = self.sparse_opt.selected() if self.sparse_opt is not None else 0
        log.info("trial %s (%s on %s): %d dense entries (%d decayed, %d not), %d masked entries, eligible m = %d, "
                 "lr %g", self.cfg.key, self.cfg.label, self.cfg.task, dense, decayed, dense - decayed, masked,
                 sum(t.numel() for t in self.theta0.values()), self.base_lr)

    @torch.no_grad()
    def _forget_dense_state(self, param: torch.Tensor, where: torch.Tensor) -> None:
        state = self.dense_opt.state.get(param)
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if state and key in state:
                state[key][where.to(state[key].device)] = 0

    # ------------------------------------------------------------------ data helpers
    def _extra_batches(self, n: int, salt: int):
        """n batches for burn-in / Fisher / probes, from their own seeded stream (the training order
        does not move)."""
        rng = np.random.default_rng([self.cfg.seed, 31, salt])
        bs = self.cfg.training.batch_size
        for _ in range(n):
            idx = rng.choice(len(self.splits.train), size=min(bs, len(self.splits.train)), replace=False)
            yield collate(self.splits.train, np.sort(idx), self.pad_id, self.device, PAD_MULTIPLE)

    def _loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.autocast():
            return model.loss(model(batch), batch["labels"])

    def train_batch(self, step: int) -> dict[str, torch.Tensor]:
        epoch, pos = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_batches(self.train_lengths, self.cfg.training.batch_size,
                                                             self.cfg.seed, epoch)
            # the epoch's batch indices go to the device in one copy, not one per step
            flat = torch.as_tensor(np.concatenate(self._order).astype(np.int64)).to(self.splits.train.device)
            self._order_dev = list(flat.split([len(b) for b in self._order]))
        return collate(self.splits.train, self._order[pos], self.pad_id, self.device, PAD_MULTIPLE,
                       index=self._order_dev[pos])

    def probe_loss(self) -> float:
        """Training loss on one fixed batch, in eval mode: the before/after of a projection."""
        batch = next(self._extra_batches(1, 99))
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            value = float(self._loss(self.model, batch))
        self.model.train(was)
        return value

    @torch.inference_mode()
    def evaluate(self, data: Encoded) -> dict[str, float]:
        t0 = time.perf_counter()
        was = self.model.training
        self.model.eval()
        order = np.argsort(data.lengths(), kind="stable")  # similar lengths together: little padding
        order_dev = torch.as_tensor(order).to(data.device)
        preds = torch.empty(len(data), dtype=torch.float32, device=self.device)  # one copy back, at the end
        bs = self.cfg.training.eval_batch_size
        for i in range(0, len(order), bs):
            with self.autocast():
                logits = self.forward(collate(data, order[i:i + bs], self.pad_id, self.device, PAD_MULTIPLE,
                                              index=order_dev[i:i + bs]))
            preds[order_dev[i:i + bs].to(self.device)] = TaskModel.predictions(self.task.kind, logits).float()
        self.model.train(was)
        preds, labels = preds.cpu().numpy(), data.labels.cpu().numpy()
        self.timers["eval_s"] += time.perf_counter() - t0
        out = compute_metrics(self.task.metric, preds, labels, self.task.num_labels)
        if self.task.kind != "regression" and len(preds):
            # 1.0: every example got one class (or choice), a collapse that a seed's score alone does not show
            out["top_class_share"] = float(np.bincount(preds.astype(np.int64)).max() / len(preds))
        return out

    # ------------------------------------------------------------------ checkpoint
    def _dense_named(self) -> dict[str, torch.Tensor]:
        """What trains whole: the head (with the backbone's fresh tensors) and the method's dense tensors."""
        return {**head_parameters(self.model), **dict(self.method.dense_parameters(self.model))}

    def _sparse_mask(self, mask: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        # masked tensors train in place (MaskedAdamW); DiffPruning's mask selects gate entries (entry_trained)
        return mask if self.sparse_opt is not None else None

    def _layout(self, mask: dict[str, torch.Tensor] | None, resumable: bool) -> tuple[dict, dict, dict, dict]:
        """(dense, masked, index, base) for ckpt.gather/scatter: what trains whole, and what trains only at flat
        entries (the mask's backbone entries under MaskedAdamW; a method's entry-trained tensors, such as
        DiffPruning's gates after its first projection) with what those hold elsewhere (θ0; zero). A resumable
        state keeps the method's ``whole_values`` whole; the best state needs only what is scored."""
        dense = self._dense_named()
        index = dict(self._sparse_mask(mask) or {})
        masked = dict(backbone_parameters(self.model)) if index else {}
        base = dict(self.theta0)
        whole = self.method.whole_values(self.model) if resumable else set()
        for name, idx in self.method.entry_trained(self.model, mask).items():
            if name not in whole:
                masked[name], index[name], base[name] = dense.pop(name), idx, torch.zeros(())
        return dense, masked, index, base

    def _trained(self, resumable: bool) -> dict[str, torch.Tensor]:
        dense, masked, index, _ = self._layout(self.method.mask, resumable)
        return ckpt.gather(dense, masked, index or None)

    def _dense_opt_names(self) -> list[str]:
        """The dense optimizer's parameters by name, in its state_dict order."""
        names = {id(p): n for n, p in self._dense_named().items()}
        return [names[id(p)] for g in self.dense_opt.param_groups for p in g["params"]]

    def _load_state(self) -> ckpt.TrialState | None:
        if not self.resume_dir:
            return None
        state = ckpt.TrialState.load(self.resume_dir)
        if state.trial_key != self.cfg.key:
            raise ckpt.CheckpointError(f"checkpoint {self.resume_dir} belongs to trial {state.trial_key}, "
                                       f"not {self.cfg.key}")
        ckpt.check_base(state.base_hash, self.base_hash, f"checkpoint {self.resume_dir}")
        return state

    def _restore(self, s: ckpt.TrialState) -> None:
        dense, masked, index, base = self._layout(s.mask, resumable=True)
        ckpt.scatter(s.trained, dense, masked, index or None, base)
        moments = ckpt.scatter_moments(s.dense_opt, self._dense_opt_names(),
                                       self.method.entry_trained(self.model, s.mask), self._dense_named())
        # AdamW's kind is this device's: a GPU's checkpoint says `fused`, which torch would keep on a CPU and back
        moments["param_groups"] = [{**saved, "fused": own["fused"]}
                                   for saved, own in zip(moments["param_groups"], self.dense_opt.param_groups)]
        self.dense_opt.load_state_dict(moments)
        if self.sparse_opt is not None:
            self.sparse_opt.load_state_dict(s.sparse_opt)
        self.step, self.best_score, self.best_step, self.bad_evals = s.step, s.best_score, s.best_step, s.bad_evals
        self.best_state, self.best_mask, self.curve = s.best, s.best_mask, s.curve
        torch.set_rng_state(s.rng)
        if self.device.type == "cuda" and s.cuda_rng is not None:
            torch.cuda.set_rng_state(s.cuda_rng)

    def _save_state(self) -> str | None:
        if not self.checkpoint_dir:
            return None
        t0 = time.perf_counter()
        state = ckpt.TrialState(
            trial_key=self.cfg.key, base_hash=self.base_hash, step=self.step, best_score=self.best_score,
            best_step=self.best_step, bad_evals=self.bad_evals, curve=self.curve,
            projections=[p.as_dict() for p in self.method.projections], trained=self._trained(resumable=True),
            mask=self.method.mask, best=self.best_state, best_mask=self.best_mask,
            dense_opt=ckpt.gather_moments(self.dense_opt.state_dict(), self._dense_opt_names(),
                                          self.method.entry_trained(self.model, self.method.mask)),
            sparse_opt=None if self.sparse_opt is None else self.sparse_opt.state_dict(), rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state() if self.device.type == "cuda" else None)
        folder = state.save(Path(self.checkpoint_dir) / f"step-{self.step:07d}")
        self.timers["checkpoint_s"] += time.perf_counter() - t0
        return str(folder)

    # ------------------------------------------------------------------ train
    def clip_gradients(self) -> None:
        """Clip by the norm of what is actually trained: dense gradients whole, masked tensors at their selected
        entries only, gathered once (the masked step reuses them). Multi-tensor ops, no host sync: a small
        model's step on a GPU is bound by the host's launches."""
        dense = [p.grad for p in self.dense_params if p.grad is not None]
        masked = self.sparse_opt.gather_grads() if self.sparse_opt is not None else []
        norms = [torch.nn.utils.get_total_norm(part) for part in (dense, masked) if part]
        if not norms:
            return
        total = torch.linalg.vector_norm(torch.stack(norms)) if len(norms) > 1 else norms[0]
        scale = (self.cfg.training.max_grad_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(dense + masked, scale)

    def _maybe_fail(self) -> None:
        f = self.cfg.fault
        if f.step_delay_s:
            time.sleep(f.step_delay_s)
        if f.fail_at_step is None or self.step != f.fail_at_step:
            return
        marker_dir = Path(f.marker_dir or ".")
        marker_dir.mkdir(parents=True, exist_ok=True)
        done = len(list(marker_dir.glob(f"{self.cfg.key}.fail-*")))
        if done < f.fail_times:
            (marker_dir / f"{self.cfg.key}.fail-{done}").touch()
            raise InjectedFault(f"injected fault at step {self.step} (attempt {done + 1} of {f.fail_times} that fail)")

    def train(self, until: int | None = None) -> None:
        """Train to ``max_steps`` or early stopping; ``until``: stop after that step (a benchmark's timed steps),
        the learning-rate schedule still running to ``max_steps``."""
        tc = self.cfg.training
        end = tc.max_steps if until is None else min(until, tc.max_steps)
        self.model.train()
        t0 = time.perf_counter()
        if self._out_of_patience():  # resumed from the checkpoint of the evaluation that stopped it
            return
        while self.step < end:
            # learning rate: linear warmup, then linear decay, set on every optimizer (a group with a peak of
            # its own, DiffPruning's gates, follows the same schedule)
            lr = lr_at(self.step, self.base_lr, tc.max_steps, tc.warmup_ratio)
            for opt in (self.dense_opt, self.sparse_opt):
                if opt is not None:
                    for g in opt.param_groups:
                        g["lr"] = lr if "peak_lr" not in g else lr_at(self.step, g["peak_lr"], tc.max_steps,
                                                                       tc.warmup_ratio)
            # forward and backward (the method may add a penalty: DiffPruning's expected L0)
            batch = self.train_batch(self.step)
            with self.autocast():
                loss = self.model.loss(self.forward(batch), batch["labels"])
                extra = self.method.extra_loss(self.model)
            if self.cfg.fault.nan_loss_at_step == self.step + 1:
                loss = loss * float("nan")
            (loss if extra is None else loss + extra).backward()
            # clip by the norm of what trains, step both optimizers, drop the gradients
            self.clip_gradients()
            self.dense_opt.step()
            if self.sparse_opt is not None:
                self.sparse_opt.step()
            self.model.zero_grad(set_to_none=True)
            self.step += 1
            self.loss_sum += loss.detach().float()  # summed on the device: no host sync per step
            self.loss_n += 1
            # the method's turn: projections and re-selections happen between steps
            self.method.after_step(self.step, self.model, self.ctx)
            self._maybe_fail()
            # evaluate, early-stop, checkpoint
            if self.step % tc.eval_every == 0 or self.step == tc.max_steps:
                self.timers["train_s"] += self._clock() - t0
                stop = self._evaluation_point(lr)
                t0 = time.perf_counter()
                if stop:
                    return
        self.timers["train_s"] += self._clock() - t0

    def _clock(self) -> float:
        """The clock at the end of a phase: on a GPU once the phase's queued kernels ran, so that training time
        is not charged to the evaluation after it (once per evaluation: no cost worth counting)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _evaluation_point(self, lr: float) -> bool:
        tc = self.cfg.training
        train_loss = float(self.loss_sum) / max(1, self.loss_n)
        self.loss_sum.zero_()
        self.loss_n = 0
        if not math.isfinite(train_loss):
            # nan/inf weights stay so: every later evaluation would score the majority class and never be the
            # best, so the protocol's result is the best state so far, as a run to its patience would end
            self.diverged_at = self.step
            log.warning("trial %s: training loss %s by step %d (learning rate %g, at %g on its schedule); %s",
                        self.cfg.key, train_loss, self.step, self.base_lr, lr,
                        "ending with the best state so far" if self.best_state is not None else
                        "no evaluation was kept before it, so the trial fails")
            return True
        dev = self.evaluate(self.splits.dev)["score"]
        if not self.method.in_budget:
            pass  # a model that breaks the budget (DiffPruning before its projection) is never the best
        elif dev > self.best_score:
            self.best_score, self.best_step, self.bad_evals = dev, self.step, 0
            self.best_state = self._trained(resumable=False)
            self.best_mask = None if self.method.mask is None else {n: i.clone() for n, i in self.method.mask.items()}
        else:
            self.bad_evals += 1
        point = {"step": self.step, "dev_score": dev, "train_loss": train_loss, "lr": lr}
        self.curve.append(point)
        n_eval = len(self.curve)
        path = self._save_state() if tc.checkpoint_every and n_eval % tc.checkpoint_every == 0 else None
        self.report(EvalPoint(**point, best_dev_score=self.best_score, checkpoint=path))
        return self._out_of_patience()

    def _out_of_patience(self) -> bool:
        tc = self.cfg.training
        return self.bad_evals >= tc.patience and self.step >= tc.min_steps

    # ------------------------------------------------------------------ result
    def result(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.diverged_at is not None and self.best_state is None:
            raise TrainingDiverged(
                f"training diverged: the training loss was nan or infinite by the evaluation at step "
                f"{self.diverged_at}, before any evaluation could be kept (learning rate {self.base_lr:g}"
                + (f"; {cfg.label} settings {json.dumps(cfg.method_params, sort_keys=True)}" if cfg.method_params
                   else "")
                + f": a learning rate too high for {cfg.label} is the usual cause"
                + (", else one of those settings" if cfg.method_params else "") + ")")
        self.method.use_mask(self.model, self.best_mask)  # what we report is the mask of the model we score
        dense, masked, index, base = self._layout(self.best_mask, resumable=False)
        ckpt.scatter(self.best_state, dense, masked, index or None, base)
        self.method.finalize(self.model)
        scores = {split: self.evaluate(getattr(self.splits, split)) for split in ("dev", "test", "train")}
        eligible = sum(t.numel() for t in self.theta0.values())
        current = backbone_parameters(self.model)
        changed, outside = 0, 0
        for n, t in self.theta0.items():
            moved = (current[n].detach().cpu() != t).reshape(-1)
            changed += int(moved.sum())
            if self.method.mask is not None:
                moved[self.method.mask[n]] = False
                outside += int(moved.sum())
        added = sum(p.numel() for _, p in self.method.added_parameters(self.model))
        out = {"trial_key": cfg.key, "method": cfg.method, "variant": cfg.label, "task": cfg.task, "seed": cfg.seed,
               "sparsity": cfg.sparsity, "perturbation": cfg.perturbation, "model": cfg.model,
               "lr": self.base_lr, "status": "FINISHED", "metric": self.task.metric,
               "test_score": scores["test"]["score"], "dev_score": scores["dev"]["score"],
               "train_score": scores["train"]["score"]}
        for split, comps in scores.items():
            out.update({f"{split}_{k}": v for k, v in comps.items() if k != "score"})
        out.update({f"majority_{split}_score": majority_score(self.task.metric,
                                                              getattr(self.splits, split).labels.cpu().numpy(),
                                                              self.task.num_labels)
                    for split in ("dev", "test")})
        out.update({"steps": self.step, "best_step": self.best_step, "resumed_from_step": self.resumed_from,
                    "diverged_at_step": self.diverged_at,
                    "eligible_params": eligible,
                    "trainable_params": self.method.trainable_count(self.model),
                    "mask_anatomy": anatomy(self.method.trainable_entries(self.model)),
                    "changed_params": changed + added, "added_params": added,
                    "head_params": sum(p.numel() for p in head_parameters(self.model).values()),
                    "changed_outside_mask": outside if self.method.mask is not None else None,
                    "device": str(self.device), "device_name": device_name(self.device),
                    "deterministic": torch.are_deterministic_algorithms_enabled(),
                    "peak_gpu_mem_mb": (torch.cuda.max_memory_allocated(self.device) / 2**20
                                        if self.device.type == "cuda" else None),
                    # what the caching allocator held at its peak (CUDA context aside): what packing must fit
                    "peak_gpu_reserved_mb": (torch.cuda.max_memory_reserved(self.device) / 2**20
                                             if self.device.type == "cuda" else None),
                    "n_train": len(self.splits.train),
                    "n_dev": len(self.splits.dev), "n_test": len(self.splits.test),
                    "projections": [p.as_dict() for p in self.method.projections], "curve": self.curve})
        out["process_trial"] = self.process_trial
        out["wall_s"] = time.perf_counter() - self.t_start
        out["trial_ended_at"] = time.time()  # on the worker: a packed sweep's driver records ends one at a time
        out.update({k: round(v, 3) for k, v in self.timers.items()})
        return out

    def _save_final(self, result: dict[str, Any]) -> str | None:
        """The result and the scored mask, as the trial's last checkpoint: a trial restarted after it has
        finished reports this again instead of training again, and the driver logs the mask."""
        if not self.checkpoint_dir:
            return None
        folder = Path(self.checkpoint_dir) / FINAL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        if self.method.mask is not None:
            save_mask(self.method.mask, folder, model=self.cfg.model, method=self.cfg.method, trial_key=self.cfg.key)
        save_delta(folder / DELTA_DIR, self._dense_named(), backbone_parameters(self.model), self.method.mask,
                   self._delta_meta(result))
        tmp = folder / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(result, default=str))
        os.replace(tmp, folder / RESULT_FILE)
        return str(folder)

    def _delta_meta(self, result: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {"model": cfg.model, "base_hash": self.base_hash, "method": cfg.method, "variant": cfg.label,
                "method_params": {**cfg.params().model_dump(mode="json"), "lr": cfg.effective_lr()},  # the rate used
                "sparsity": cfg.sparsity, "seed": cfg.seed,
                "task": cfg.task, "kind": self.task.kind, "num_labels": self.task.num_labels,
                "max_seq_length": cfg.training.max_seq_length, "trial_key": cfg.key,
                "trainable_params": result["trainable_params"], "test_score": result["test_score"]}

    def run(self) -> dict[str, Any]:
        if self.resume_dir and (Path(self.resume_dir) / RESULT_FILE).is_file():  # finished before a restart
            result = json.loads((Path(self.resume_dir) / RESULT_FILE).read_text())
            if result.get("trial_key") != self.cfg.key:
                raise ckpt.CheckpointError(f"final result in {self.resume_dir} belongs to trial "
                                           f"{result.get('trial_key')}, not {self.cfg.key}")
            self.report(TrialEnd(result, self.resume_dir))
            return result
        self.setup()
        self.train()
        result = self.result()
        self.report(TrialEnd(result, self._save_final(result)))
        return result


def run_trial(cfg: TrialConfig | dict, report: Report | None = None, checkpoint_dir: str | None = None,
              resume_dir: str | None = None) -> dict[str, Any]:
    """Run one trial to the end and return its result (the Ray-free entry point)."""
    if isinstance(cfg, dict):
        cfg = TrialConfig.model_validate(cfg)
    try:
        return Trainer(cfg, report, checkpoint_dir, resume_dir).run()
    finally:
        release_memory()


def release_memory() -> None:
    """Free what the trial held before the process runs the next one (a reused Ray worker, a loop of
    trials): the trainer's closures form reference cycles, and CUDA's cache would keep its blocks from the
    other trials packed on the same GPU."""
    if "torch._dynamo" in sys.modules:  # a compiled trial's graphs and guards (else a reused worker piles them
        torch._dynamo.reset()           # up to Dynamo's recompile limit, then runs uncompiled)
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
