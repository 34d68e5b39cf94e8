"""A sweep's identity: its name plus a fingerprint of what changes results, and the code that ran it.

Rerunning a sweep name with a changed spec would mix trials of two experiments in one table, so it is
refused, naming what changed, unless the change only grows the grid (then only the new trials run) or the
user passes ``--force`` (or picks a new name). Where results do not depend on a field (paths, Ray and
resources, retries, the tracking store) it may change freely. The data folder is a path, but other files (or the
Hub) give other results: the folder read is recorded when a sweep is written and a switch is refused.

Code may change between runs of one sweep (a bug fix mid-study): that is allowed, announced on the console,
and every MLflow run carries the ``code_version`` it ran with, so a table can be split by it.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from .spec import SpecError, SweepSpec

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = ("orchestrator", "trainables", "dashboards")
# fields that do not change a trial's result: where things are, how they are scheduled and tracked
RESULT_FREE = {"name", "output_dir", "tracking_uri", "ray", "resources", "max_failures", "fault", "grid",
               "methods", "variants"}  # methods/variants: compared per grid row, with defaults filled in
RESULT_FREE_DATA = {"dir", "cache_dir"}  # not in the fingerprint: data.dir is compared resolved (recorded_data)
RESULT_FREE_TRAINING = {"checkpoint_every"}  # how often a trial saves, not what it learns (as in its trial key)
AXES = ("methods", "tasks", "seeds", "sparsities", "perturbations")
IDENTITY_FILE = "identity.json"
SWEEP_ID = "sweep_id"  # drawn once per sweep folder; its MLflow experiment carries it (tracking.SWEEP_ID_TAG)
HUB = "huggingface-hub"  # the data source when no folder is set (as MLflow's data.source param says)


def result_fields(spec: SweepSpec) -> dict[str, Any]:
    data = spec.model_dump(mode="json", exclude=RESULT_FREE)
    data["data"] = {k: v for k, v in data["data"].items() if k not in RESULT_FREE_DATA}
    data["training"] = {k: v for k, v in data["training"].items() if k not in RESULT_FREE_TRAINING}
    return data


def row_settings(spec: SweepSpec, row: str) -> dict[str, Any]:
    """A grid row's method and its settings with every default filled in (so writing a default out changes
    nothing, and adding a new row's settings does not touch the rows already run)."""
    from trainables.methods import get_method

    base = spec.base_method(row)
    params = get_method(base).Params.model_validate(spec.method_settings(row)).model_dump(mode="json")
    return {"method": base, **params}


def fingerprint(spec: SweepSpec) -> str:
    """A short hash of everything in the spec that changes results (the grid aside: it may grow)."""
    rows = {m: row_settings(spec, m) for m in spec.grid.methods}
    return hashlib.sha256(json.dumps([result_fields(spec), rows], sort_keys=True).encode()).hexdigest()[:12]


def data_folder(spec: SweepSpec) -> str | None:
    """The data folder the spec reads, as an absolute path: data.dir, else $PEFT_SWEEP_DATA_DIR; None: the Hub.
    (Whether it exists is preflight's check, with its own message.)"""
    value = with_data_folder(spec).data.dir
    return str(Path(value).expanduser().resolve()) if value else None


def with_data_folder(spec: SweepSpec) -> SweepSpec:
    """The spec with data.dir taken from $PEFT_SWEEP_DATA_DIR when it sets none, as the sweep folder keeps it: a
    resume, ``rerun-failed`` or a Ray worker without the variable reads the same files as the first run. A relative
    data.dir or data.cache_dir is made absolute here, from where `run` is called: Tune runs each trial in its own
    folder, where a relative path named nothing (every trial failed, or rebuilt its token cache)."""
    from trainables.tasks import DATA_DIR_ENV

    given = {"dir": spec.data.dir or os.environ.get(DATA_DIR_ENV) or None, "cache_dir": spec.data.cache_dir}
    absolute = {k: v and os.path.abspath(os.path.expanduser(v)) for k, v in given.items()}
    if absolute == {"dir": spec.data.dir, "cache_dir": spec.data.cache_dir}:
        return spec
    return spec.model_copy(update={"data": spec.data.model_copy(update=absolute)})


def recorded_data(spec: SweepSpec) -> str | None:
    """Where a sweep already run read its data: the folder its spec.yaml names, else the source identity.json
    recorded (the Hub); None when neither says (a sweep folder written before the source was recorded)."""
    if spec.data.dir:
        return data_folder(spec)
    return read(spec.sweep_dir).get("data")


def data_files(spec: SweepSpec) -> dict[str, str]:
    """Each grid task's original files as the sweep reads them: task -> sha256 ({} when it reads the Hub)."""
    folder = data_folder(spec)
    return {} if folder is None else {t: task_hash(t, folder) for t in spec.grid.tasks}


def task_hash(task: str, folder: str) -> str:
    """The sha256 of a task's files in ``folder``, read once per process while they stay the same size and age."""
    from trainables.tasks import get_task, task_files

    paths = task_files(get_task(task), Path(folder))
    return _hash(task, folder, tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in paths))


@lru_cache(maxsize=64)
def _hash(task: str, folder: str, stamp: tuple) -> str:
    from trainables.data import source_fingerprint
    from trainables.tasks import get_task

    return source_fingerprint(get_task(task), Path(folder))


def recorded_files(sweep_dir: Path) -> dict[str, str] | None:
    """The hashes of the task files a sweep ran on, from its identity.json (None: a folder that did not record
    them)."""
    return read(sweep_dir).get("data_files")


def read(sweep_dir: Path) -> dict[str, Any]:
    """SWEEP_DIR/identity.json, the one reader of it ({} for a folder without one). An unreadable one is an error:
    it holds the data hashes that guard the sweep's results, which nothing else records."""
    path = sweep_dir / IDENTITY_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path} cannot be read ({type(exc).__name__}); restore it from a copy of the sweep folder, "
                        "or delete it to record it anew (losing the check that the data is the finished trials' "
                        "data)") from None


def sweep_id(sweep_dir: Path) -> str | None:
    """The sweep folder's own id (None for a folder that has none yet): a copy or a move of the folder keeps it,
    another folder of the same sweep name has another one."""
    return read(sweep_dir).get(SWEEP_ID)


def has_history(sweep_dir: Path) -> bool:
    """Whether the folder has run before (a recorded identity, or trial records): not a folder made just now."""
    try:
        recorded = "fingerprint" in read(sweep_dir)
    except SpecError:  # unreadable identity.json: it was written, so the folder ran
        recorded = True
    return recorded or any((Path(sweep_dir) / "records").glob("*.json"))


def ensure_sweep_id(sweep_dir: Path) -> str:
    """The folder's id, drawn and written now if it has none (before its MLflow experiment is made or adopted)."""
    import uuid

    known = read(sweep_dir)
    if not known.get(SWEEP_ID):
        known[SWEEP_ID] = uuid.uuid4().hex
        _write(sweep_dir, known)
    return known[SWEEP_ID]


def _write(sweep_dir: Path, known: dict[str, Any]) -> None:
    """identity.json whole or not at all (a crash mid-write must not lose the data hashes)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=sweep_dir, prefix=".identity-", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(known, fh, indent=1)
    os.replace(tmp, sweep_dir / IDENTITY_FILE)


def record_run(spec: SweepSpec) -> None:
    """SWEEP_DIR/identity.json: the spec's fingerprint, its data (folder and file hashes) and the code version of
    every run of the sweep. Code that changed since the last run is said once here; each MLflow run carries its
    own code_version tag."""
    import time

    known = read(spec.sweep_dir)  # perhaps only its sweep_id so far
    known.setdefault("runs", [])
    version = code_version()
    last = known["runs"][-1]["code_version"] if known["runs"] else None
    if last is not None and last != version:
        print(f"note: the code changed since this sweep last ran ({last} -> {version}); trials that finished "
              "keep their results, new ones run with this code (MLflow tag code_version tells them apart)",
              flush=True)
    known["fingerprint"] = fingerprint(spec)
    known["data"] = data_folder(spec) or HUB  # spec.yaml's data.dir is null for the Hub
    files = data_files(spec)  # compared when the folder moves (another machine): same files, same data
    known["data_files"] = {**(known.get("data_files") or {}), **files} if files else {}
    known["runs"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "code_version": version,
                          "git_commit": git_commit(), "cluster": spec.ray_address})
    _write(spec.sweep_dir, known)


def other_files(old: SweepSpec, new: SweepSpec) -> list[str] | None:
    """The tasks whose files under ``new``'s data folder are not those the sweep ran on ([] = all the same);
    None when that cannot be told (the Hub on either side, or no hashes recorded)."""
    recorded, folder = recorded_files(old.sweep_dir), data_folder(new)
    if not recorded or folder is None:
        return None
    return sorted(t for t, h in recorded.items() if _hash_or_none(t, folder) != h)


def _hash_or_none(task: str, folder: str) -> str | None:
    from trainables.tasks import DataError

    try:
        return task_hash(task, folder)
    except (DataError, OSError):  # the task's files are missing there (preflight names them)
        return None


def data_change(old: SweepSpec, new: SweepSpec) -> str | None:
    """How the data a rerun would read differs from what the sweep ran on; None for the same files, also in a
    folder that moved (another machine), and where it cannot be told (see unrecorded_data_note)."""
    recorded = recorded_data(old)
    if recorded is None:
        return None
    now = data_folder(new) or HUB
    other = other_files(old, new)
    if other == []:
        return None
    if other:  # the tasks first: the one-line error may cut the paths short
        where = f"{recorded!r} -> {now!r}" if now != recorded else f"edited in place in {now!r}"
        return f"data.dir: other files for {', '.join(other)} than the sweep ran on ({where})"
    if now == recorded:
        return None
    unsure = "" if HUB in (now, recorded) else " (this sweep folder recorded no hashes of its task files to compare)"
    return f"data.dir: {recorded!r} -> {now!r}{unsure}"


def moved_data_note(old: SweepSpec | None, new: SweepSpec) -> str | None:
    """The line a run prints when the data folder moved but holds the same task files (another machine)."""
    if old is None:
        return None
    before, now = recorded_data(old), data_folder(new)
    if before in (None, HUB) or now is None or before == now or other_files(old, new) != []:
        return None
    return (f"note: the data folder moved ({before} -> {now}); its task files are the ones the sweep ran on "
            f"(sha256 of {', '.join(sorted(recorded_files(old.sweep_dir) or {}))}), so the sweep goes on with them")


def unrecorded_data_note(old: SweepSpec | None, new: SweepSpec) -> str | None:
    """The note for a sweep folder that does not say which data it read: this run cannot check it."""
    if old is None or recorded_data(old) is not None:
        return None
    return (f"note: {old.sweep_dir / 'spec.yaml'} does not say which data the sweep read (data.dir: null, written "
            f"before the folder was recorded: it was $PEFT_SWEEP_DATA_DIR of that shell, or the Hub); this run reads "
            f"{data_folder(new) or 'the Hugging Face Hub'} and records it. If the earlier trials read other files, "
            "stop and set data.dir to their folder")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, sub in node.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


TRIAL_COORD = {"methods": "label", "tasks": "task", "seeds": "seed", "sparsities": "sparsity",
               "perturbations": "perturbation"}  # each grid axis's value in a trial


def changes(old: SweepSpec, new: SweepSpec, finished: set[str] | None = None) -> list[str]:
    """What ``new`` changes of ``old`` that would mix experiments: result fields, and grid values dropped.
    ``finished``: the keys with a result; a grid row or value none of whose trials has one may change or go
    (a broken setting fixed, a failed row retired): there is nothing to mix."""
    done = None if finished is None else [t for t in old.trials() if t.key in finished]
    before, after = _flat(result_fields(old)), _flat(result_fields(new))
    for row in set(old.grid.methods) & set(new.grid.methods):  # rows only one spec has: growth or a drop below
        if done is not None and not any(t.label == row for t in done):
            continue
        before.update(_flat(row_settings(old, row), f"methods.{row}."))
        after.update(_flat(row_settings(new, row), f"methods.{row}."))
    out = [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in sorted(set(before) | set(after))
           if before.get(k) != after.get(k)]
    data = data_change(old, new)
    if data:
        out.append(data)
    for axis in AXES:
        dropped = [v for v in (getattr(old.grid, axis) or [None]) if v not in (getattr(new.grid, axis) or [None])
                   and (done is None or any(getattr(t, TRIAL_COORD[axis]) == v for t in done))]
        if dropped:
            out.append(f"grid.{axis} drops {', '.join(map(str, dropped))}")
    return out


def check_rerun(old: SweepSpec | None, new: SweepSpec, force: bool, finished: set[str] | None = None) -> None:
    """Refuse a rerun of a sweep name whose spec changed other than by growing the grid, or by fixing or dropping
    what never finished (``finished``: the keys with a result, from the sweep's records)."""
    if old is None or force:
        return
    found = changes(old, new, finished)
    if found:
        shown = "; ".join(found[:4]) + (f"; and {len(found) - 4} more" if len(found) > 4 else "")
        raise SpecError(f"sweep {new.name!r} in {str(new.sweep_dir)!r} was run with another spec ({shown}); give "
                        "it a new name, or pass --force to run this spec there (all its trials rerun)")


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus a hash of the source files: the same for the same code however it is started (a
    checkout, a ``ray job submit`` working dir, which has no .git), and unchanged by commits that touch no source
    (tests, docs). The checkout's commit is recorded beside it (:func:`git_commit`)."""
    return f"{release()}+src.{source_digest()}"


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit (``-dirty`` with uncommitted source changes); None where there is no .git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=ROOT)
        if head.returncode == 0 and head.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--", *SOURCE_PACKAGES], capture_output=True,
                                   text=True, timeout=10, cwd=ROOT).stdout.strip()
            return f"{head.stdout.strip()[:12]}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def release() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peft-sweep")
    except PackageNotFoundError:
        return "0"


def source_digest() -> str:
    """A hash of this project's source files: equal on every node that runs the same code."""
    digest = hashlib.sha256()
    for pkg in SOURCE_PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
