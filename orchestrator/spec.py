"""Sweep specs: YAML → validated :class:`SweepSpec` → the trial grid.

Validation has no side effects: nothing is started or written until a spec has passed.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from trainables.config import DataConfig, FaultConfig, Strict, TrainingConfig, TrialConfig
from trainables.methods import METHODS, get_method
from trainables.tasks import TASKS

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class SpecError(ValueError):
    """A sweep spec is invalid; the message names the field, the bad value and what is allowed."""


class ClusterError(RuntimeError):
    """The Ray cluster named by the spec (or $RAY_ADDRESS) cannot be reached."""


class Grid(Strict):
    methods: list[str] = Field(min_length=1, description="method names, or names of entries in `variants`")
    tasks: list[str] = Field(min_length=1)
    seeds: list[int] = Field([0], min_length=1)
    sparsities: list[float] = Field([0.005], min_length=1, description="used by methods that take a sparsity")
    perturbations: list[int] | None = Field(None, description="perturbation splits k; None = the unperturbed split")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        for m in v:
            if not NAME.match(m):
                raise ValueError(f"method {m!r}: a method or variant name is letters, digits, '.', '_' or '-'")
        if len(set(v)) != len(v):
            raise ValueError(f"methods {v} name a method twice")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v):
        for t in v:
            if t not in TASKS:
                raise ValueError(f"unknown task {t!r}; valid tasks: {', '.join(TASKS)}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        for s in v:
            if s < 0:
                raise ValueError(f"seed {s} is negative; seeds are integers >= 0")
        return v

    @field_validator("sparsities")
    @classmethod
    def _sparsities(cls, v):
        for p in v:
            if not 0 < p < 1:
                raise ValueError(f"sparsity {p} is outside (0, 1)")
        return v

    @field_validator("perturbations")
    @classmethod
    def _perturbations(cls, v):
        for k in v or []:
            if k < 0:
                raise ValueError(f"perturbation split {k} is negative; splits are integers >= 0")
        return v


class Resources(Strict):
    gpu_per_trial: float = Field(0.0, ge=0, description="0 (CPU), a fraction in (0, 1] to pack trials, or whole GPUs")
    cpu_per_trial: float = Field(1.0, gt=0)
    max_concurrent: int | None = Field(None, gt=0, description="cap on trials running at once")

    @field_validator("gpu_per_trial")
    @classmethod
    def _gpu(cls, v):
        if v > 1 and v != int(v):
            raise ValueError(f"gpu_per_trial {v}: a fraction of a GPU must be at most 1 (or use whole GPUs)")
        return v


class RayConfig(Strict):
    address: str | None = Field(None, description="cluster address; None = $RAY_ADDRESS, else a local Ray")
    num_cpus: int | None = Field(None, gt=0, description="local Ray only")
    num_gpus: float | None = Field(None, ge=0, description="local Ray only (logical GPUs work for tests)")
    storage_path: str | None = Field(None, description="Tune storage (shared path or URI on clusters); default SWEEP_DIR/tune")


class FaultSpec(FaultConfig):
    """Test-only: the fault applies to trials whose coordinates match all of ``match``."""
    match: dict[str, Any] = Field(default_factory=dict)


class SweepSpec(Strict):
    name: str
    model: str = "minilm-l6"
    data: DataConfig = DataConfig()
    grid: Grid
    training: TrainingConfig = TrainingConfig()
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-method settings")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named settings of a method, each its own row: "
                                          "{sam-global: {method: sam, scope: global}}; on top of methods.<method>")
    resources: Resources = Resources()
    max_failures: int = Field(2, ge=0, description="retries of a failed trial (from its last checkpoint)")
    tracking_uri: str | None = Field(None, description="MLflow URI; default sqlite:///SWEEP_DIR/mlflow.db")
    output_dir: str = "./runs"
    ray: RayConfig = RayConfig()
    fault: FaultSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not NAME.match(v):
            raise ValueError(f"name {v!r} must be letters, digits, '.', '_' or '-' (no path separators), "
                             "starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _method_settings(self):
        for m, params in self.methods.items():
            if m not in METHODS:
                raise ValueError(f"methods.{m}: unknown method; valid methods: {', '.join(METHODS)}")
            try:
                get_method(m).Params.model_validate(params)
            except ValidationError as exc:
                raise ValueError(f"methods.{m}: {_first_error(exc)}") from None
        return self

    @model_validator(mode="after")
    def _variants(self):
        for name, setting in self.variants.items():
            where = f"variants.{name}"
            if not NAME.match(name) or name in METHODS:
                raise ValueError(f"{where}: a variant needs its own name (letters, digits, '.', '_', '-'), "
                                 f"not a method's ({', '.join(METHODS)})")
            base = setting.get("method")
            if base not in METHODS:
                raise ValueError(f"{where}.method: {base!r} is not a method; valid methods: {', '.join(METHODS)}")
            try:
                get_method(base).Params.model_validate(self.method_settings(name))
            except ValidationError as exc:
                raise ValueError(f"{where}: {_first_error(exc)}") from None
        for m in self.grid.methods:
            if m not in METHODS and m not in self.variants:
                raise ValueError(f"grid.methods: unknown method {m!r}; valid methods: {', '.join(METHODS)}"
                                 f"{' and the variants ' + ', '.join(self.variants) if self.variants else ''}")
            method = get_method(self.base_method(m))
            try:
                method.check_training(method.Params.model_validate(self.method_settings(m)), self.training)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return self

    def base_method(self, name: str) -> str:
        """The registered method behind a grid entry (itself, or a variant's ``method``)."""
        return self.variants[name]["method"] if name in self.variants else name

    def method_settings(self, name: str) -> dict[str, Any]:
        """methods.<method>, with a variant's own settings on top."""
        base = self.base_method(name)
        own = {k: v for k, v in self.variants.get(name, {}).items() if k != "method"}
        return {**self.methods.get(base, {}), **own}

    @property
    def sweep_dir(self) -> Path:
        return (Path(self.output_dir).expanduser() / self.name).resolve()

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.sweep_dir / 'mlflow.db'}"

    def trials(self) -> list[TrialConfig]:
        """The grid, expanded by the rules of each method: methods without a sparsity get one trial per
        (task, seed, perturbation) rather than one per sparsity."""
        out: dict[str, TrialConfig] = {}
        perturbations = self.grid.perturbations if self.grid.perturbations is not None else [None]
        for task, name, seed, k in itertools.product(self.grid.tasks, self.grid.methods, self.grid.seeds,
                                                    perturbations):
            method = self.base_method(name)
            sparsities = self.grid.sparsities if get_method(method).uses_sparsity else [None]
            for p in sparsities:
                coords = {"task": task, "method": method, "seed": seed, "sparsity": p, "perturbation": k,
                          "variant": name if name != method else None}
                fault = FaultConfig()
                if self.fault and all(coords.get(f) == v for f, v in self.fault.match.items()):
                    fault = FaultConfig(**self.fault.model_dump(exclude={"match"}))
                cfg = TrialConfig(**coords, model=self.model, data=self.data, training=self.training,
                                  method_params=self.method_settings(name), fault=fault)
                out.setdefault(cfg.key, cfg)
        return list(out.values())


def _first_error(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"])
        value = e.get("input")
        shown = "" if e["type"] == "missing" else f" (got {value!r})"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")
    return "; ".join(parts)


def parse_value(text: str) -> Any:
    """A --set value, typed as YAML types it ("3" → 3, "1e-3" → 0.001, "[a, b]" → list)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value) if re.fullmatch(r"[-+]?\d*\.?\d+[eE][-+]?\d+", value) else value
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a nested dict (copying what it changes)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise SpecError(f"--set {key}: {p!r} is not a section")
            node = node[p]
        node[parts[-1]] = parse_value(raw)
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such sweep spec")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(f"{where}: malformed YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a sweep spec is a YAML mapping, got {type(data).__name__}")
    return spec_from_dict(apply_overrides(data, overrides or []), str(path))


def spec_from_dict(data: dict[str, Any], source: str = "spec") -> SweepSpec:
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: invalid sweep spec: {_first_error(exc)}") from None
