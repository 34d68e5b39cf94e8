"""Sweep specs: YAML → validated :class:`SweepSpec` → the trial grid.

Validation has no side effects: nothing is started or written until a spec has passed.
"""
from __future__ import annotations

import collections
import itertools
import math
import os
import re
import typing
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel, Field, StrictInt, ValidationError, ValidationInfo, field_validator, model_validator

from trainables.config import DataConfig, FaultConfig, Strict, TrainingConfig, TrialConfig
from trainables.methods import METHODS, get_method
from trainables.schema import closest, did_you_mean
from trainables.tasks import canonical_task

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_SPEC_BYTES = 1_000_000  # a sweep spec is a few kB; anything near this is not one
MAX_YAML_NODES = 100_000  # after expanding aliases: a few hundred bytes of nested aliases can make billions
DEFAULT_SPARSITY = 0.005  # the paper's p; the grid's default and train-one's
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


class SpecError(ValueError):
    """A sweep spec is invalid; the message names the field, the bad value and what is allowed."""


def check_tracking_uri(uri: str, field: str) -> str:
    """An MLflow URI of a scheme we support (ValueError naming ``field`` otherwise). A bare path is refused
    rather than read: MLflow would take it for its file store."""
    if uri.lower().startswith("sqlite:") and (not uri.startswith("sqlite:///") or uri == "sqlite:///"):
        raise ValueError(f"{field} {uri!r}: a SQLite URI is sqlite:///relative/path.db or "
                         "sqlite:////absolute/path.db (three slashes, then the path)")
    if "://" not in uri and uri != "databricks":
        raise ValueError(f"{field} {uri!r} is a path; a SQLite store is sqlite:///{uri} (an MLflow server: "
                         "http(s)://HOST:PORT)")
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else uri
    if scheme not in TRACKING_SCHEMES:
        raise ValueError(f"{field} {uri!r}: unsupported scheme; use sqlite:///PATH, http(s)://HOST:PORT "
                         "(mlflow server), postgresql://, mysql://, mssql:// or databricks, or leave it out "
                         "(sqlite in the sweep folder)")
    return uri


class ClusterError(RuntimeError):
    """The Ray cluster named by the spec (or $RAY_ADDRESS) cannot be reached."""


class Grid(Strict):
    methods: list[str] = Field(min_length=1, description="method names, or names of entries in `variants`")
    tasks: list[str] = Field(min_length=1, description="task names, any capitalisation (cb = CB)")
    seeds: list[StrictInt] = Field([0], min_length=1)
    sparsities: list[float] = Field([DEFAULT_SPARSITY], min_length=1, description="used by methods that take a sparsity")
    perturbations: list[StrictInt] | None = Field(None, description="perturbation splits k; None = the unperturbed "
                                                  "split")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v, info: ValidationInfo):
        for m in v:
            if not NAME.match(m):
                raise ValueError(f"method {m!r}: a method or variant name is letters, digits, '.', '_' or '-'")
        return _once(v, "methods", info)

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v, info: ValidationInfo):
        return _once([canonical_task(t) for t in v], "tasks", info)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v, info: ValidationInfo):
        for s in v:
            if s < 0:
                raise ValueError(f"seed {s} is negative; seeds are integers >= 0")
        return _once(v, "seeds", info)

    @field_validator("sparsities")
    @classmethod
    def _sparsities(cls, v, info: ValidationInfo):
        for p in v:
            if not 0 < p < 1:
                raise ValueError(f"sparsity {p} is outside (0, 1)")
        return _once(v, "sparsities", info)

    @field_validator("perturbations")
    @classmethod
    def _perturbations(cls, v, info: ValidationInfo):
        if v == []:
            raise ValueError("an empty list gives 0 trials; leave perturbations out for the unperturbed split, "
                             "or list splits such as [0, 1, 2]")
        for k in v or []:
            if k < 0:
                raise ValueError(f"perturbation split {k} is negative; splits are integers >= 0")
        return v if v is None else _once(v, "perturbations", info)


class Resources(Strict):
    gpu_per_trial: float = Field(0.0, ge=0, description="0 (CPU), 1 (a GPU per trial), or a fraction to pack trials")
    cpu_per_trial: float = Field(1.0, gt=0)
    max_concurrent: int | None = Field(None, gt=0, description="cap on trials running at once")
    reuse_workers: bool = Field(True, description="a worker process runs trial after trial (imports, CUDA start "
                                                  "and model code once per worker); false: a fresh process per trial")

    @field_validator("gpu_per_trial")
    @classmethod
    def _gpu(cls, v):
        if v > 1:  # Ray would hold more GPUs for a trial that trains on one (trainables.loop.pick_device)
            raise ValueError(f"gpu_per_trial {v:g}: a trial trains on one device, so at most 1; a fraction such as "
                             f"0.25 packs trials onto one GPU")
        return v


class RayConfig(Strict):
    address: str | None = Field(None, description="cluster address; None = $RAY_ADDRESS, else a local Ray")
    num_cpus: int | None = Field(None, gt=0, description="local Ray only")
    num_gpus: float | None = Field(None, ge=0, description="local Ray only (logical GPUs work for tests)")
    storage_path: str | None = Field(None, description="Tune storage (shared path or URI on clusters); default SWEEP_DIR/tune")
    autoscaling: bool = Field(False, description="the cluster starts nodes on demand (KubeRay, `ray up`): a trial "
                                                 "larger than every node now waits for one instead of being refused")


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
    fault: FaultSpec | None = Field(None, json_schema_extra={"internal": True})  # the fault suite's; in no hint

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not NAME.match(v):
            raise ValueError(f"name {v!r} must be letters, digits, '.', '_' or '-' (no path separators), "
                             "starting with a letter or digit")
        return v

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, v):
        if "://" in v:  # Path() made s3://b/runs the relative folder "s3:/b/runs", in the job's temporary dir
            raise ValueError(f"output_dir {v!r} is a URI: the sweep folder is a filesystem path (NFS on a cluster); "
                             "checkpoints may go to a URI with ray.storage_path")
        return v

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, v):
        return v if v is None else check_tracking_uri(v, "tracking_uri")

    @model_validator(mode="before")
    @classmethod
    def _no_nan(cls, data, info: ValidationInfo):
        """A NaN (YAML's .nan) is no setting, and spec.yaml would keep it as null, which no later command could
        read. An infinity stays for the fields whose bounds allow it (max_grad_norm: .inf, no clipping)."""
        if not _saved(info):
            for where, value in _leaves(data, ""):
                if isinstance(value, float) and math.isnan(value):
                    raise ValueError(f"{where}: .nan is not a number; give a value")
        return data

    @field_validator("methods")
    @classmethod
    def _method_settings(cls, methods):
        """A field's check, not the model's: pydantic runs model checks only once every field is valid, so a bad
        methods.* setting was reported only after a bad grid or training value had been fixed."""
        problems = []
        for m, params in methods.items():
            if m not in METHODS:
                problems.append(f"methods.{m}: unknown method{did_you_mean(m, METHODS)}; valid methods: "
                                f"{', '.join(METHODS)}")
                continue
            try:
                get_method(m).Params.model_validate(params)
            except ValidationError as exc:
                problems.append(f"methods.{m}: {first_error(exc, get_method(m).Params)}")
        if problems:
            raise ValueError("; ".join(problems))
        return methods

    @model_validator(mode="after")
    def _variants(self, info: ValidationInfo):
        for name, setting in self.variants.items():
            where = f"variants.{name}"
            if not NAME.match(name) or name in METHODS:
                raise ValueError(f"{where}: a variant needs its own name (letters, digits, '.', '_', '-'), "
                                 f"not a method's ({', '.join(METHODS)})")
            if "method" not in setting:
                slips = [k for k, v in setting.items() if isinstance(k, str) and ":" in k and v is None]
                hint = f"{slips[0]!r} is one key: write {slips[0].replace(':', ': ', 1)!r}, with a space after " \
                       "the colon" if slips else f"a variant is {{method: M, <its settings>}}; valid methods: " \
                                                 f"{', '.join(METHODS)}"
                raise ValueError(f"{where}: no 'method' key (got keys {', '.join(map(repr, setting))}); {hint}")
            base = setting["method"]
            if base not in METHODS:
                raise ValueError(f"{where}.method: {base!r} is not a method{did_you_mean(base, METHODS)}; valid "
                                 f"methods: {', '.join(METHODS)}")
            try:
                get_method(base).Params.model_validate(self.method_settings(name))
            except ValidationError as exc:
                raise ValueError(f"{where}: {first_error(exc, get_method(base).Params)}") from None
        unknown = [m for m in self.grid.methods if m not in METHODS and m not in self.variants]
        if unknown:
            close = {m: closest(m, [*METHODS, *self.variants]) for m in unknown}
            named = ", ".join(f"{m!r}" + (f" (did you mean {close[m]!r}?)" if close[m] else "") for m in unknown)
            # `sam-global` in the paper configs is a variant: a name built on a method's reads as one not defined
            variant = next((m for m in unknown if m.split("-")[0] in METHODS and close[m] not in self.variants), None)
            hint = (f"; to name a setting of {variant.split('-')[0]} {variant!r}, define it under variants: "
                    f"{{{variant}: {{method: {variant.split('-')[0]}, <the settings that differ>}}}}" if variant else "")
            raise ValueError(f"grid.methods: unknown method{'s' if len(unknown) > 1 else ''} {named}; valid methods: "
                             f"{', '.join(METHODS)}"
                             f"{' and the variants ' + ', '.join(self.variants) if self.variants else ''}{hint}")
        for m in self.grid.methods:
            method = get_method(self.base_method(m))
            try:
                method.check_training(method.Params.model_validate(self.method_settings(m)), self.training)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        if not _saved(info):
            self._check_intent()
        return self

    def _check_intent(self) -> None:
        """Settings that would silently do nothing are refused (a sweep folder's saved spec is not re-judged:
        older versions accepted these)."""
        unused = [v for v in self.variants if v not in self.grid.methods]
        if unused:
            raise ValueError(f"variants {', '.join(unused)}: defined but not in grid.methods "
                             f"({', '.join(self.grid.methods)}); add them there, or remove them (on the command line "
                             "--set 'variants={}' drops every variant)")
        if not any(get_method(self.base_method(m)).uses_sparsity for m in self.grid.methods) and \
                self.grid.sparsities != [DEFAULT_SPARSITY]:
            takers = [m for m in METHODS if get_method(m).uses_sparsity]
            raise ValueError(f"grid.sparsities {self.grid.sparsities}: no method in grid.methods "
                             f"({', '.join(self.grid.methods)}) takes a sparsity; leave sparsities out, or add a "
                             f"method that takes one ({', '.join(takers)})")

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

    @property
    def ray_address(self) -> str | None:
        """The cluster to join: ray.address, else $RAY_ADDRESS; None: a local Ray of its own."""
        return self.ray.address or os.environ.get("RAY_ADDRESS") or None

    def size(self) -> int:
        """How many trials the grid expands to, counted without building them (a 100,000-trial grid is
        refused in a second, not after minutes of hashing)."""
        per_method = len(self.grid.tasks) * len(self.grid.seeds) * len(self.grid.perturbations or [None])
        return sum(per_method * (len(self.grid.sparsities) if get_method(self.base_method(m)).uses_sparsity else 1)
                   for m in self.grid.methods)

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


def _leaves(data: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf of a raw spec."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _leaves(v, f"{where}.{k}" if where else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _leaves(v, f"{where}.{i}")
    else:
        yield where, data


def _once(values: list, axis: str, info: ValidationInfo) -> list:
    """A grid axis names each value once: a repeat was merged without a word (a saved spec is read as it is)."""
    twice = [x for x, n in collections.Counter(values).items() if n > 1]  # list.count: O(n²) on 50,000 seeds
    if twice and not _saved(info):
        raise ValueError(f"{axis} {values} name {', '.join(map(str, twice))} twice; list each once")
    return values


def _saved(info: ValidationInfo) -> bool:
    """Whether the spec being validated is a sweep folder's saved spec (``spec_from_dict(..., saved=True)``)."""
    return bool(info.context and info.context.get("saved"))


def _model_at(model: type[BaseModel] | None, path: tuple) -> type[BaseModel] | None:
    """The settings model that holds the field at ``path`` (walking nested models, Optional and dict values)."""
    for part in path:
        if model is None:
            return None
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):  # X | None
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _unknown_key(key: Any, model: type[BaseModel] | None) -> str:
    """'unknown key', with the valid keys and the closest one when the model is known."""
    msg = "unknown key"
    if isinstance(key, str) and ":" in key:
        msg += f" (write {key.replace(':', ': ', 1)!r}, with a space after the colon)"
    if model is None:
        return msg
    valid = [k for k, f in model.model_fields.items() if not (f.json_schema_extra or {}).get("internal")]
    where = "; a sparsity is a grid axis: grid.sparsities: [0.005]" if key == "sparsity" else ""
    return f"{msg}{did_you_mean(str(key).split(':')[0], valid, fold=str)}{where}; valid keys: {', '.join(valid)}"


def first_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """Each error as ``field: message (got value)``; a model-level check's message names its own values,
    so the whole input is not repeated after it. ``model``: the model validated, to list the valid keys."""
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"])
        value = repr(e.get("input"))
        value = value if len(value) <= 80 else value[:77] + "..."
        msg = e["msg"].removeprefix("Value error, ")
        if loc and msg.startswith(f"{loc}."):  # a field's own check that names the path inside it, with its value
            loc = ""
        shown = "" if e["type"] == "missing" or not loc else f" (got {value})"
        if e["type"] == "extra_forbidden":
            msg = _unknown_key(e["loc"][-1], _model_at(model, e["loc"][:-1]))
        elif e["type"] == "list_type" and e["loc"][-1] == "seeds":
            n = e.get("input")  # `seeds: 3` most likely means three seeds, not seed 3
            msg += (f"; write a list of seeds: [{n}] runs seed {n} alone, {list(range(n))} runs {n} seeds"
                    if type(n) is int and 1 < n <= 100 else "; write a list of seeds (integers >= 0), e.g. [0, 1, 2]")
        elif e["type"] == "list_type":  # --set grid.seeds=3: YAML's flow list is what it takes
            msg += f"; write a list, e.g. [{e.get('input')}]"
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")
    return "; ".join(parts)


class _SpecLoader(yaml.SafeLoader):
    """The safe loader (plain values only: no python tags), refusing duplicate keys, which would silently
    replace each other."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base constructor names it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"duplicate key {key!r} (the second would silently replace the first)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, memo: dict[int, int], open_: set[int]) -> int:
    """Nodes after expanding aliases (shared nodes counted at every use)."""
    if id(node) in memo:
        return memo[id(node)]
    if id(node) in open_:
        raise SpecError("a recursive alias (an anchor used inside itself)")
    open_.add(id(node))
    total = 1
    if isinstance(node.value, list):
        for item in node.value:
            for child in (item if isinstance(item, tuple) else (item,)):
                total += _expanded_size(child, memo, open_)
                if total > MAX_YAML_NODES:
                    raise SpecError(f"expands to more than {MAX_YAML_NODES} values through aliases "
                                    "(an alias bomb?); write the values out")
    open_.discard(id(node))
    memo[id(node)] = total
    return total


def parse_yaml(text: str, where: str) -> Any:
    """YAML text → plain data, or a one-line :class:`SpecError` naming ``where`` (file:line:column)."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(f"{where}: {len(text)} bytes; a sweep spec is at most {MAX_SPEC_BYTES}")
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        problem = getattr(exc, "problem", None) or str(exc)
        # PyYAML marks where it noticed the problem, often the line after the mistake (an unclosed "[" shows on
        # the next key); its context mark is where the construct it was reading began
        context, begun = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and begun and mark and begun.line != mark.line:
            problem += f"; {context} begun at line {begun.line + 1}, column {begun.column + 1}"
        raise SpecError(f"{at}: malformed YAML ({problem})") from None
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    except RecursionError:
        raise SpecError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


def parse_value(text: str, where: str = "--set") -> Any:
    """A --set value, typed as YAML types it ("3" → 3, "1e-3" → 0.001, "[a, b]" → list)."""
    value = parse_yaml(text, where)
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
        if not all(parts):
            raise SpecError(f"--set {item!r}: {key.strip()!r} is not a dotted key such as training.max_steps")
        node = data
        for p in parts[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise SpecError(f"--set {key}: {p!r} is not a section")
            node = node[p]
        node[parts[-1]] = parse_value(raw, f"--set {key.strip()}={raw}")
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None, saved: bool = False) -> SweepSpec:
    """A spec file (with ``--set`` overrides); ``saved``: a sweep folder's spec.yaml (see spec_from_dict)."""
    path = Path(path)
    if path.is_dir():
        hint = f"; to resume that sweep give {path / 'spec.yaml'}" if (path / "spec.yaml").is_file() else ""
        raise SpecError(f"{path}: is a folder, not a sweep spec YAML file such as configs/quickstart.yaml{hint}")
    if not path.is_file():
        raise SpecError(f"{path}: no such sweep spec")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {path.stat().st_size} bytes; a sweep spec is at most {MAX_SPEC_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text; a sweep spec is a YAML file") from None
    data = parse_yaml(text, str(path))
    if data is None:
        raise SpecError(f"{path}: empty file; a sweep spec needs at least name and grid (see configs/quickstart.yaml)")
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a sweep spec is a YAML mapping, got {type(data).__name__}")
    source = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)  # where a bad value came from
    return spec_from_dict(apply_overrides(data, overrides or []), source, saved=saved)


def spec_from_dict(data: dict[str, Any], source: str = "spec", saved: bool = False) -> SweepSpec:
    """``saved``: a sweep folder's spec.yaml, written by a run; settings that do nothing (duplicate seeds, unused
    variants or sparsities) are refused only in a spec being written, so an older sweep folder still opens."""
    try:
        return SweepSpec.model_validate(data, context={"saved": saved})
    except ValidationError as exc:
        raise SpecError(f"{source}: invalid sweep spec: {first_error(exc, SweepSpec)}") from None
