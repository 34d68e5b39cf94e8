"""Validated settings of one trial. The orchestrator's sweep spec reuses these models, so a key means
the same thing in ``train-one --set`` and in a sweep YAML."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .schema import Strict, did_you_mean
from .tasks import TASKS


class DataConfig(Strict):
    dir: str | None = Field(None, description="folder of the original task files; else $PEFT_SWEEP_DATA_DIR, else the Hub")
    cache_dir: str | None = Field(None, description="tokenisation cache; else $PEFT_SWEEP_CACHE_DIR, else ~/.cache/peft-sweep")
    split_seed: int = Field(42, ge=0, description="seed of the 90/10 train/dev split; independent of the training seed")
    dev_fraction: float = Field(0.1, gt=0, lt=1, description="share of the original train set held out as dev")
    perturb_fraction: float = Field(0.1, gt=0, lt=1, description="share of the train part dropped by a perturbation split")


class TrainingConfig(Strict):
    batch_size: int = Field(16, gt=0)
    eval_batch_size: int = Field(64, gt=0)
    # ≤ 1: AdamW's step is about lr per entry, so more is a typo (1e38 overflowed float32 inside torch's Adam with
    # an error that named no setting); the methods' defaults are 3e-5 to 2e-3
    lr: float | None = Field(None, gt=0, le=1, description="learning rate for every method; None: each method's own "
                                                   "default (README); methods.<m>.lr overrides both")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    max_steps: int = Field(2000, gt=0)
    min_steps: int = Field(0, ge=0, description="no early stop before this many steps")
    eval_every: int = Field(100, gt=0, description="steps between dev evaluations (and checkpoints)")
    patience: int = Field(40, gt=0, description="evaluations without dev improvement before stopping (paper: 40)")
    max_seq_length: int = Field(128, ge=8, le=4096)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    checkpoint_every: int = Field(1, ge=0, description="evaluations between checkpoints; 0 = never")
    compile: bool = Field(False, description="torch.compile the model (CUDA only; pays off on long trials)")
    deterministic: bool = Field(False, description="CUDA: deterministic kernels, so that a rerun of a seed gives "
                                                   "the same masks and scores (slower); CPU runs are deterministic "
                                                   "either way")

    def first_early_stop(self) -> int:
        """The first step at which early stopping can end a trial: the first evaluation always improves, then
        ``patience`` evaluations without improvement, and never before ``min_steps``."""
        return max(self.eval_every * (self.patience + 1), -(-self.min_steps // self.eval_every) * self.eval_every)

    def early_stopping_note(self) -> str | None:
        """A line for the user when these settings leave early stopping nothing to do (a fixed budget)."""
        first = self.first_early_stop()
        if first < self.max_steps:
            return None
        return (f"note: early stopping cannot end a trial: its first chance is step {first} (eval_every "
                f"{self.eval_every} x (patience {self.patience} + 1)), and max_steps is {self.max_steps}; each trial "
                f"trains {self.max_steps} steps and keeps its best evaluation (lower patience to stop earlier)")

    @model_validator(mode="after")
    def _steps(self) -> "TrainingConfig":
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) is larger than max_steps ({self.max_steps})")
        return self


class FaultConfig(Strict):
    """Test-only fault switch: raise at a step, a limited number of times (counted in marker files); delay
    every step; diverge at a step."""
    fail_at_step: int | None = Field(None, ge=1)
    fail_times: int = Field(1, ge=1, description="how many attempts fail before one is let through")
    marker_dir: str | None = None
    step_delay_s: float = Field(0.0, ge=0, description="sleep after every step: a window on a running trial")
    nan_loss_at_step: int | None = Field(None, ge=1, description="the loss of this step is nan: a divergence")


class TrialConfig(Strict):
    task: str
    method: str
    variant: str | None = Field(None, description="the row label of a named setting of a method (sam-global); "
                                                  "None: the method's name")
    seed: int = Field(0, ge=0)
    sparsity: float | None = Field(None, gt=0, lt=1)
    perturbation: int | None = Field(None, ge=0)
    model: str = "minilm-l6"
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    method_params: dict[str, Any] = Field(default_factory=dict)
    fault: FaultConfig = FaultConfig()

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        if v not in TASKS:
            raise ValueError(f"unknown task {v!r}{did_you_mean(v, TASKS)}; valid tasks: {', '.join(TASKS)}")
        return v

    @model_validator(mode="after")
    def _method(self) -> "TrialConfig":
        from .methods import get_method  # methods import config: resolve lazily

        method = get_method(self.method)
        if method.uses_sparsity and self.sparsity is None:
            raise ValueError(f"method {self.method!r} needs a sparsity in (0, 1)")
        if not method.uses_sparsity and self.sparsity is not None:
            raise ValueError(f"method {self.method!r} takes no sparsity (got {self.sparsity}); leave it out")
        method.check_training(method.Params.model_validate(self.method_params), self.training)
        return self

    def params(self):
        from .methods import get_method

        return get_method(self.method).Params.model_validate(self.method_params)

    def effective_lr(self) -> float:
        """methods.<m>.lr, else training.lr, else the method's default: the one rate this trial uses."""
        from .methods import get_method

        return self.params().lr or self.training.lr or get_method(self.method).default_lr

    @property
    def key(self) -> str:
        return trial_key(self)

    @property
    def label(self) -> str:
        """The name this trial's method goes by in tables: the variant if any, else the method."""
        return self.variant or self.method


def trial_key(cfg: TrialConfig) -> str:
    """Short stable hash of everything that changes a trial's result (not where files live, not faults)."""
    d = cfg.model_dump(mode="json", exclude={"fault": True, "data": {"dir", "cache_dir"},
                                             "training": {"checkpoint_every"}})
    d["method_params"] = cfg.params().model_dump(mode="json")  # defaults filled, so {} == explicit defaults
    if d["variant"] is None:  # keys of plain methods stay what they were before variants existed
        del d["variant"]
    if not d["training"]["deterministic"]:  # nor do keys of trials run before the setting existed
        del d["training"]["deterministic"]
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
