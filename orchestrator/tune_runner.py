"""Everything that knows Ray: the Tune trainable, the driver-side callback, and run / resume.

One Tune trial per trial key. The callback runs in the driver only: it writes the local record first
and then MLflow, so workers never touch the tracking store.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from trainables import TrialConfig, run_trial

from . import records
from .spec import ClusterError, SweepSpec
from .tracking import Tracker

DONE_MARKER = "SWEEP_EXPERIMENT_DONE"


def trainable(config: dict[str, Any]) -> None:
    """A Tune function trainable around the Ray-free ``run_trial``; resumes from Tune's checkpoint."""
    cfg = TrialConfig.model_validate(config["trial"])
    work = Path(tempfile.mkdtemp(prefix=f"trial-{cfg.key}-"))
    try:
        resume = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            resume = checkpoint.to_directory(str(work / "resume"))

        def report(metrics: dict[str, Any], path: str | None) -> None:
            final = bool(metrics.pop("done"))
            flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
            flat["final"] = final
            if final:
                flat["result_json"] = json.dumps(metrics, default=str)
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
        return Path(path).read_text()
    return str(getattr(trial, "error_msg", None) or "trial failed (no error text from Ray)")


class SweepCallback(tune.Callback):
    """Driver-side writer of records and MLflow, and the console progress line."""

    def __init__(self, spec: SweepSpec):
        self.sweep_dir = spec.sweep_dir
        self.tracker = Tracker(spec.resolved_tracking_uri, spec.name, self.sweep_dir)
        self.warned = False
        self.down_until = 0.0

    def _mlflow(self, key: str, fn, *args) -> None:
        """Call MLflow; if the store is down, mark the record unsynced and leave the store alone for a
        while (every failed call would otherwise stall Tune's event loop through the client's retries)."""
        if time.time() < self.down_until:
            records.update(self.sweep_dir, key, synced=False)
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - the store being down must not stop the sweep
            self.down_until = time.time() + 30
            records.update(self.sweep_dir, key, synced=False)
            if not self.warned:
                print(f"WARNING: tracking store unreachable ({type(exc).__name__}: {exc}); trials go on and are "
                      f"kept in {self.sweep_dir / 'records'}; run `peft-sweep sync {self.sweep_dir}` later",
                      file=sys.stderr, flush=True)
                self.warned = True

    @staticmethod
    def _progress(trials, what: str, completing=None) -> None:
        """Counts come from Tune's own trial states (so they are right after a restore too); a trial
        being completed is still RUNNING when ``on_trial_complete`` is called."""
        status = collections.Counter("TERMINATED" if t is completing else t.status for t in trials)
        left = status["PENDING"] + status["PAUSED"]
        print(f"[{time.strftime('%H:%M:%S')}] done {status['TERMINATED']}/{len(trials)} | running {status['RUNNING']} | "
              f"failed {status['ERROR']} | left {left} | {what}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        cfg = trial.config["trial"]
        key = _key(trial)
        records.update(self.sweep_dir, key, status="RUNNING", trial=cfg, synced=True)
        self._mlflow(key, self.tracker.start_trial, key, cfg)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = _key(trial)
        if result.get("final"):
            return
        self._mlflow(key, self.tracker.log_eval, key, {**result, "timestamp": time.time()})
        self._progress(trials, f"{key} {trial.config['trial']['method']}/{trial.config['trial']['task']} "
                       f"step {result.get('step')} dev {result.get('dev_score', float('nan')):.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = _key(trial)
        last = trial.last_result or {}
        if "result_json" not in last:  # ended without a final report: treat as an error
            return self._failed(trials, key, "trial ended without a final result")
        result = json.loads(last["result_json"])
        records.update(self.sweep_dir, key, status="FINISHED", result=result, error=None)
        self._mlflow(key, self.tracker.finish, key, result)
        self._progress(trials, f"{key} {result['method']}/{result['task']} seed {result['seed']} FINISHED "
                       f"test {result['test_score']:.4f}", completing=trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        key = _key(trial)
        self._progress(trials, f"{key} failed, retrying from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._failed(trials, _key(trial), _error_text(trial))

    def _failed(self, trials, key: str, error: str) -> None:
        records.update(self.sweep_dir, key, status="FAILED", error=error)
        self._mlflow(key, self.tracker.fail, key, error)
        self._progress(trials, f"{key} FAILED: {error.strip().splitlines()[-1] if error.strip() else error}")


def init_ray(spec: SweepSpec) -> None:
    # checkpoints at every evaluation are the point; Tune's warning about frequent snapshots is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():  # a Ray this process started itself (benchmarks, tests): check what it has
        return _check_cluster_resources(spec, "the Ray this process started")
    address = spec.ray.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=spec.ray.num_cpus, num_gpus=spec.ray.num_gpus, include_dashboard=False)
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
        param_space={"trial": tune.grid_search([t.model_dump(mode="json") for t in trials])},
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


def _key(trial) -> str:
    return TrialConfig.model_validate(trial.config["trial"]).key


def _trial_name(trial: dict[str, Any]) -> str:
    return f"{trial['method']}-{trial['task']}-s{trial['seed']}-{TrialConfig.model_validate(trial).key}"


def _count(grid, results: dict[str, int]) -> None:
    for r in grid:
        results["ERROR" if r.error else "FINISHED"] += 1
