"""Everything that knows Ray: the Tune trainable, the driver-side callback, and run / resume.

One Tune trial per trial key. The callback runs in the driver only and dispatches to Ray-free writers
(``records``, ``breaker``, ``progress``): the local record first and then MLflow, so workers never touch
the tracking store.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from trainables import TrialConfig, run_trial
from trainables.finetuned import DELTA_DIR
from trainables.loop import RESULT_FILE, EvalPoint, TrialEnd

from .breaker import GuardedTracker
from .masks import keep_mask
from .progress import Progress
from .records import SweepRecords
from .spec import ClusterError, SweepSpec
from .tracking import Tracker

DONE_MARKER = "SWEEP_EXPERIMENT_DONE"
QUIET_LOGGERS = ("ray.train", "ray.tune")  # per-checkpoint "Checkpoint successfully created" and such: INFO only


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the header of a remote traceback even when not on a terminal


class _PlainTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not record.exc_text:
            record.exc_text = ANSI.sub("", logging.Formatter().formatException(record.exc_info))
        return True


def _quiet_ray() -> None:
    """Keep Ray's warnings and errors (without colour codes), drop its informational lines (in the driver
    and in each worker)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    controller = logging.getLogger("ray.tune.execution.tune_controller")  # logs "Trial task failed" + traceback
    if not any(isinstance(f, _PlainTracebacks) for f in controller.filters):
        controller.addFilter(_PlainTracebacks())


_quiet_ray()  # at import too: a worker imports this module (to unpickle the trainable) before it restores


def trainable(config: dict[str, Any]) -> None:
    """A Tune function trainable around the Ray-free ``run_trial``; resumes from Tune's checkpoint."""
    _quiet_ray()
    cfg = TrialConfig.model_validate(_trial_config(config["trial"]))
    work = Path(tempfile.mkdtemp(prefix=f"trial-{cfg.key}-"))
    try:
        resume = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            resume = checkpoint.to_directory(str(work / "resume"))

        def report(event: EvalPoint | TrialEnd) -> None:
            # Tune's results are flat scalars: the whole result crosses as one JSON string, once, at the end
            if isinstance(event, TrialEnd):
                scalars = {k: v for k, v in event.result.items() if isinstance(v, (int, float, str)) or v is None}
                flat = {**scalars, "final": True, "result_json": json.dumps(event.result, default=str)}
                path = event.final_dir
            else:
                flat, path = {**event.metrics(), "final": False}, event.checkpoint
            if path:
                tune.report(flat, checkpoint=tune.Checkpoint.from_directory(path))
                shutil.rmtree(path, ignore_errors=True)  # Tune has its copy now
            else:
                tune.report(flat)

        run_trial(cfg, report, checkpoint_dir=str(work / "checkpoints"), resume_dir=resume)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.isfile(path):
        return ANSI.sub("", Path(path).read_text())
    return ANSI.sub("", str(getattr(trial, "error_msg", None) or "trial failed (no error text from Ray)"))


class SweepCallback(tune.Callback):
    """Dispatches Tune's driver-side hooks to the three Ray-free writers: the local record first, then
    MLflow behind its outage breaker, then the console line. Cheap per event: the trial key travels in
    the config, nothing is re-validated."""

    def __init__(self, spec: SweepSpec):
        self.sweep_dir = spec.sweep_dir
        self.records = SweepRecords(self.sweep_dir)
        self.mlflow = GuardedTracker(Tracker(spec.resolved_tracking_uri, spec.name, self.sweep_dir), self.records)
        self.progress = Progress()

    def _show(self, trials, what: str, completing=None) -> None:
        """Counts come from Tune's own trial states (so they are right after a restore too); a trial
        being completed is still RUNNING when ``on_trial_complete`` is called."""
        self.progress.show(["TERMINATED" if t is completing else t.status for t in trials], what)

    def on_trial_start(self, iteration, trials, trial, **info):
        cfg = trial.config["trial"]
        key = _key(trial)
        self.records.started(key, cfg)
        self.mlflow.start_trial(key, cfg)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = _key(trial)
        if result.get("final"):
            return
        cfg = trial.config["trial"]
        self.mlflow.log_eval(key, {**result, "timestamp": time.time()}, cfg)
        self._show(trials, f"{key} {cfg.get('variant') or cfg['method']}/{cfg['task']} "
                   f"step {result.get('step')} dev {result.get('dev_score', float('nan')):.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = _key(trial)
        last = trial.last_result or {}
        if "result_json" not in last:  # ended without a final report: treat as an error
            return self._failed(trials, trial, "trial ended without a final result")
        result = json.loads(last["result_json"])
        self.records.finished(key, result)
        node = {"ray_node": last["node_ip"]} if last.get("node_ip") else {}
        self.mlflow.finish(key, result, trial.config["trial"], node)
        self._keep_final(trial, key)
        self.progress.trial_ended()
        self._show(trials, f"{key} {result.get('variant') or result['method']}/{result['task']} seed "
                   f"{result['seed']} FINISHED test {result['test_score']:.4f}", completing=trial)

    def _keep_final(self, trial, key: str) -> None:
        """The trial's last checkpoint is its final folder (result, mask, model delta): keep the mask beside
        the records and log the delta to MLflow. Through Tune's checkpoint, so cloud storage works too."""
        checkpoint = trial.checkpoint
        if checkpoint is None:
            return
        with tempfile.TemporaryDirectory(prefix=f"final-{key}-") as tmp:
            final = Path(checkpoint.to_directory(tmp))
            if not (final / RESULT_FILE).is_file():
                return  # not a final folder (a trial restored from an older checkpoint format)
            keep_mask(self.sweep_dir, key, final)
            if (final / DELTA_DIR).is_dir():
                self.mlflow.log_model(key, final / DELTA_DIR, trial.config["trial"])

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._show(trials, f"{_key(trial)} failed, retrying from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._failed(trials, trial, _error_text(trial))

    def _failed(self, trials, trial, error: str) -> None:
        key = _key(trial)
        self.records.failed(key, error)
        self.mlflow.fail(key, error, trial.config["trial"])
        self.progress.trial_ended()
        self._show(trials, f"{key} FAILED: {error.strip().splitlines()[-1] if error.strip() else error}")


def init_ray(spec: SweepSpec) -> None:
    # checkpoints at every evaluation are the point; Tune's warning about frequent snapshots is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's newer console output prints a config table and a TensorBoard hint even at verbose=0; the
    # older one is silent at 0 and leaves the console to our progress lines
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # "(trainable pid=...)" prefixes without colour codes
    _quiet_ray()
    if ray.is_initialized():  # a Ray this process started itself (benchmarks, tests): check what it has
        return _check_cluster_resources(spec, "the Ray this process started")
    address = spec.ray.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=spec.ray.num_cpus, num_gpus=spec.ray.num_gpus, include_dashboard=False,
                     logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
    if address:
        _check_cluster_resources(spec, f"the Ray cluster at {address!r}")


def _check_cluster_resources(spec: SweepSpec, where: str) -> None:
    """A trial that asks for more than the whole cluster has would stay PENDING forever: refuse it now."""
    have = ray.cluster_resources()
    for kind, field in (("GPU", "gpu_per_trial"), ("CPU", "cpu_per_trial")):
        want = getattr(spec.resources, field)
        if want > have.get(kind, 0):
            raise ClusterError(f"resources.{field} {want:g}: {where} has "
                               f"{have.get(kind, 0):g} {kind}(s) in all, so no trial could start")


def _experiments(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("exp-*") if p.is_dir()) if root.is_dir() else []


def run_trials(spec: SweepSpec, trials: list[TrialConfig], restore: bool) -> dict[str, int]:
    """Run ``trials`` as one Tune experiment, or finish the last unfinished experiment first when
    ``restore`` (a driver that died). Returns counts of what Tune ended with."""
    init_ray(spec)
    storage = spec.ray.storage_path or str(spec.sweep_dir / "tune")
    local_root = Path(storage) if "://" not in storage else None
    wrapped = tune.with_resources(trainable, {"cpu": spec.resources.cpu_per_trial,
                                              "gpu": spec.resources.gpu_per_trial})
    last = _experiments(local_root)[-1] if local_root and _experiments(local_root) else None
    results = {"FINISHED": 0, "ERROR": 0}
    if restore and last is not None and not (last / DONE_MARKER).exists() and tune.Tuner.can_restore(str(last)):
        restored_keys = set(json.loads((last / "trial_keys.json").read_text()))
        print(f"resuming the interrupted experiment {last.name} ({len(restored_keys)} trials)", flush=True)
        grid = tune.Tuner.restore(str(last), wrapped, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False).fit()
        (last / DONE_MARKER).touch()
        _count(grid, results)
        trials = [t for t in trials if t.key not in restored_keys]
        if not trials:
            return results
    n = len(_experiments(local_root)) + 1 if local_root else int(time.time())
    name = f"exp-{n:03d}"
    if local_root:
        (local_root / name).mkdir(parents=True, exist_ok=True)
        (local_root / name / "trial_keys.json").write_text(json.dumps(sorted(t.key for t in trials)))
    callback = SweepCallback(spec)
    tuner = tune.Tuner(
        wrapped,
        param_space={"trial": tune.grid_search([{**t.model_dump(mode="json"), "trial_key": t.key} for t in trials])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=spec.resources.max_concurrent,
            trial_name_creator=lambda t: _trial_name(t.config["trial"]),
            trial_dirname_creator=lambda t: _trial_name(t.config["trial"]),
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, callbacks=[callback], verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    grid = tuner.fit()
    if local_root:
        (local_root / name / DONE_MARKER).touch()
    _count(grid, results)
    return results


def _trial_config(trial: dict[str, Any]) -> dict[str, Any]:
    """The TrialConfig fields of a Tune config (the key rides along so callbacks need not rehash)."""
    return {k: v for k, v in trial.items() if k != "trial_key"}


def _key_of(trial: dict[str, Any]) -> str:
    return trial.get("trial_key") or TrialConfig.model_validate(_trial_config(trial)).key  # older experiments


def _key(trial) -> str:
    return _key_of(trial.config["trial"])


def _trial_name(trial: dict[str, Any]) -> str:
    return f"{trial['method']}-{trial['task']}-s{trial['seed']}-{_key_of(trial)}"


def _count(grid, results: dict[str, int]) -> None:
    for r in grid:
        results["ERROR" if r.error else "FINISHED"] += 1
