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
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.fs as pafs
import ray
from ray import tune
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.tune.experiment import Trial
from ray.tune.progress_reporter import TrialProgressCallback
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from trainables import TrialConfig, run_trial
from trainables.checkpoint import META, TENSORS, CheckpointError
from trainables.finetuned import DELTA_DIR
from trainables.loop import RESULT_FILE, EvalPoint, TrainingDiverged, TrialEnd

from . import driver, records
from .breaker import GuardedTracker
from .masks import keep_mask
from .preflight import node_data, node_report, node_versions, nodes_problems
from .progress import Progress, n_trials
from .records import SweepRecords
from .spec import ClusterError, SweepSpec
from .storage import CHECKPOINT_FOLDER, ExperimentStore, checkpoint_folders, read_check, tune_root
from .tracking import Tracker

QUIET_LOGGERS = ("ray.train", "ray.tune")  # per-checkpoint "Checkpoint successfully created" and such: INFO only


FAILED_REPORT = "failed"  # a trial's final report that carries its error: it ended failed, not to be retried
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the header of a remote traceback even when not on a terminal


class _PlainTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not record.exc_text:
            record.exc_text = ANSI.sub("", logging.Formatter().formatException(record.exc_info))
        return True


class _NotOurAdvice(logging.Filter):
    """Tune's own advice that is wrong for this tool: `Tuner.restore(...)` (the tool prints its own resume command,
    which goes through `peft-sweep run`), and missing metrics of trials a restored experiment never started (they
    run in a new one)."""
    WRONG = ("Resume experiment with: Tuner.restore", "Failed to fetch metrics for")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(w in record.getMessage() for w in self.WRONG)


def _quiet_ray() -> None:
    """Keep Ray's warnings and errors (without colour codes), drop its informational lines (in the driver
    and in each worker)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune's TensorBoard logger writes each trial's config as hparams at its end: `max_grad_norm: .inf` (no
    # clipping, a setting) made tensorboardX warn "NaN or Inf found in input tensor" once per trial
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
    controller = logging.getLogger("ray.tune.execution.tune_controller")  # logs "Trial task failed" + traceback
    if not any(isinstance(f, _PlainTracebacks) for f in controller.filters):
        controller.addFilter(_PlainTracebacks())
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        advice = logging.getLogger(name)
        if not any(isinstance(f, _NotOurAdvice) for f in advice.filters):
            advice.addFilter(_NotOurAdvice())


_quiet_ray()  # at import too: a worker imports this module (to unpickle the trainable) before it restores


def trainable(config: dict[str, Any], data: dict[str, Any] | None = None) -> None:
    """A Tune function trainable around the Ray-free ``run_trial``; resumes from Tune's checkpoint. ``data``: where
    this driver's spec reads the task files (see ``_here``)."""
    _quiet_ray()
    hide_unassigned_gpus(ray.get_gpu_ids())
    cfg = TrialConfig.model_validate(_here(config["trial"], data))
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

        try:
            run_trial(cfg, report, checkpoint_dir=str(work / "checkpoints"), resume_dir=resume)
        except (TrainingDiverged, CheckpointError):
            # deterministic: each of Tune's retries (max_failures) would train from the same state into the same
            # nan, or read the same damaged or foreign checkpoint, so the trial ends here, its error in a final
            # report that the callback records as a failure
            tune.report({"final": True, FAILED_REPORT: traceback.format_exc()})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def hide_unassigned_gpus(gpu_ids: list) -> None:
    """A trial given no GPU sees none. Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for zero-GPU work
    (ray/_private/accelerators/accelerator.py): a CPU trial on a GPU node would take GPU 0 unscheduled, in bf16,
    beside the trials Ray placed there. Called before anything asks CUDA (torch reads the variable once)."""
    if not gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.isfile(path):
        return ANSI.sub("", Path(path).read_text())
    try:  # Ray 2.60's Trial has no error_msg: its error is the file above or the pickled exception
        error = trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - an unreadable pickle is no error text either
        error = None
    return ANSI.sub("", f"{type(error).__name__}: {error}" if error is not None
                    else "trial failed (no error text from Ray)")


def _data_paths(spec: SweepSpec) -> dict[str, Any]:
    return {"dir": spec.data.dir, "cache_dir": spec.data.cache_dir}


def _here(trial: dict[str, Any], data: dict[str, Any] | None) -> dict[str, Any]:
    """A trial's config with this driver's data paths. A restored experiment gives its trials the configs they were
    started with, whose paths may name another machine's folders (a sweep folder moved: `run` has checked that the
    task files are the same)."""
    config = _trial_config(trial)
    return config if data is None else {**config, "data": {**config.get("data", {}), **data}}


class GridSearch(BasicVariantGenerator):
    """Tune's grid generator, made safe to restore. With a concurrency limit it creates trials as others finish
    and remembers the live ones; the experiment waits for it to be done. A restore can bring back its state from
    before the experiment state it is restored with (the two are separate files, synced to cloud storage one after
    the other): it then waits for a trial that already ended, and the experiment never ends (seen with an S3 root:
    every trial FINISHED, the driver stepping forever). So a restored grid creates nothing more: the restored
    experiment finishes the trials it holds, and `run_trials` runs the grid's other keys in a new experiment."""

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._live_trials = set()
        self.set_finished()


_RESTORING: list[SweepSpec] = []  # the spec of the driver restoring an experiment, while it does (see __setstate__)
_PROGRESS: list[Progress] = []  # the line of the driver running experiments, while it does: one over all of them


class Drain(FIFOScheduler):
    """Tune's default scheduler, plus `peft-sweep stop --drain`: running trials finish, no new one starts. Once the
    drain is asked (a file in the sweep folder, read at most once a second), it does what Tune lets a scheduler do:
    the searcher is finished (the grid creates no more trials) and the trials Tune created but has not started
    are stopped before they start. The experiment then ends when its running trials have, like one that ran out of
    trials. The keys it stopped so are written beside the experiment (``ExperimentStore.drop``): they are not its
    trials to count or resume, and the next `run` runs them, in a new experiment, from their start (a trial that
    was waiting to resume from a checkpoint, too)."""

    def __init__(self, spec: SweepSpec):
        super().__init__()
        self.spec = spec
        self.draining = False
        self.checked = 0.0

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restored with its experiment: the drain asked of the restoring driver counts, in the folder its spec
        names (the sweep folder may have moved, as for ``SweepCallback``)."""
        self.__dict__.update(state)
        self.spec = _RESTORING[-1] if _RESTORING else state["spec"]
        self.draining, self.checked = False, 0.0

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        """Also called for each trial a restore brings back, before it starts: the one place to point it at a
        checkpoint that still exists (see ``resume_from_the_next_checkpoint``)."""
        super().on_trial_add(tune_controller, trial)
        resume_from_the_next_checkpoint(trial)

    def choose_trial_to_run(self, tune_controller):
        if self._drained(tune_controller):
            return None
        return super().choose_trial_to_run(tune_controller)

    def _drained(self, tune_controller) -> bool:
        now = time.time()
        if not self.draining and now - self.checked >= 1.0:
            self.checked = now
            self.draining = driver.drain_requested(self.spec.sweep_dir)
            if self.draining:
                running = sum(t.status == Trial.RUNNING for t in tune_controller.get_trials())
                print(f"[{time.strftime('%H:%M:%S')}] drain requested: {running} running trial(s) finish, no new "
                      "trial starts; the others run on the next `peft-sweep run`", flush=True)
        if not self.draining:
            return False
        tune_controller.search_alg.set_finished()
        waiting = [t for t in tune_controller.get_trials() if t.status == Trial.PENDING]
        if waiting:  # written first: a driver killed now must not leave them counted as this experiment's
            store = ExperimentStore(tune_root(self.spec.ray.storage_path, self.spec.name, self.spec.sweep_dir))
            store.drop(waiting[0].experiment_dir_name, [_key(t) for t in waiting])
            for trial in waiting:
                tune_controller.stop_trial(trial)
        return True


class NoTuneTrialLines(TrialProgressCallback):
    """Tune's own trial lines, off: at verbose=0 it still printed "Trial X completed. Last result:" for each trial
    a drain ended before it started (ray/tune/progress_reporter.py, Ray 2.60: that line skips the verbosity check),
    beside our line saying it never started. Given as a callback, it stands in for the one Tune adds by default."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        pass


class SweepCallback(tune.Callback):
    """Dispatches Tune's driver-side hooks to the three Ray-free writers: the local record first, then
    MLflow behind its outage breaker, then the console line. Cheap per event: the trial key travels in
    the config, nothing is re-validated."""

    def __init__(self, spec: SweepSpec, restored: bool = False):
        self.spec = spec
        self.restored = restored
        self.replays: set[str] = set()  # keys a restored experiment runs again though they FINISHED (see below)
        self.dropped: set[str] = set()  # keys a drain stopped before they started (see Drain)
        self.sweep_dir = spec.sweep_dir
        self.records = SweepRecords(self.sweep_dir)
        self.mlflow = GuardedTracker(Tracker(spec.resolved_tracking_uri, spec.name, self.sweep_dir), self.records)
        self.progress = _PROGRESS[-1] if _PROGRESS else Progress()

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Tune restores an experiment with the callback it pickled, holding the spec of the driver that started
        it. The driver restoring it writes where its own spec says: the sweep folder may have moved since (another
        machine) and the tracking URI may have changed (both are free to)."""
        self.__init__(_RESTORING[-1] if _RESTORING else state["spec"], restored=True)

    def _trial(self, trial) -> dict[str, Any]:
        """The trial's config as it runs now: with this driver's data paths, as the trainable gets them."""
        return {**_here(trial.config["trial"], _data_paths(self.spec)), "trial_key": _key(trial)}

    def _show(self, trials, what: str, completing=None) -> None:
        """Counts come from Tune's own trial states (so they are right after a restore too); a trial
        being completed is still RUNNING when ``on_trial_complete`` is called."""
        self.progress.show([self.line_status(t, completing) for t in trials], what, inside={_key(t) for t in trials})

    def line_status(self, trial, completing) -> str:
        """The state the progress line counts a trial in: Tune's, but a trial that ended failed is an ERROR, and one
        never started (a drain) is queued."""
        if _key(trial) in self.dropped:
            return "PENDING"
        if trial is completing or trial.status == Trial.TERMINATED:  # ended failed: with its error, or with no
            last = trial.last_result or {}  # final result at all (a replay's reports are dropped: it FINISHED)
            if not last and trial is not completing:  # never reported: a drain stopped it before it started (in
                return "PENDING"  # an experiment restored since, whose callback no longer holds ``dropped``)
            failed = last.get(FAILED_REPORT) or ("result_json" not in last and _key(trial) not in self.replays)
            return "ERROR" if failed else "TERMINATED"
        return trial.status

    def on_trial_start(self, iteration, trials, trial, **info):
        cfg = self._trial(trial)
        key = _key(trial)
        if self.restored and (records.read(self.sweep_dir, key) or {}).get("status") == "FINISHED":
            # the driver died after recording the trial's end but before Tune's last snapshot said so: Tune runs
            # it again; the recorded result and its MLflow run stand, and what the replay reports is dropped
            self.replays.add(key)
            return
        over = trial.checkpoint is None  # from step 0 (new, retried before its first checkpoint, lost its own)
        self.records.started(key, cfg)
        self.mlflow.start_trial(key, cfg, over)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = _key(trial)
        if result.get("final") or key in self.replays:
            return
        cfg = self._trial(trial)
        self.mlflow.log_eval(key, {**result, "timestamp": time.time()}, cfg)
        if self.progress.evaluation_line_due():
            self._show(trials, f"{key} {cfg.get('variant') or cfg['method']}/{cfg['task']} "
                       f"step {result.get('step')} dev {result.get('dev_score', float('nan')):.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.status == Trial.PENDING:  # stopped before it started (a drain): nothing to record
            self.dropped.add(_key(trial))
            return
        key = _key(trial)
        if key in self.replays:
            return self._replayed(trials, trial, key)
        last = trial.last_result or {}
        if last.get(FAILED_REPORT):
            return self._failed(trials, trial, last[FAILED_REPORT], completing=trial)
        if "result_json" not in last:  # ended without a final report: treat as an error
            return self._failed(trials, trial, "trial ended without a final result", completing=trial)
        result = json.loads(last["result_json"])
        self.records.finished(key, result)
        node = {"ray_node": last["node_ip"]} if last.get("node_ip") else {}
        self.mlflow.finish(key, result, self._trial(trial), node)
        self._keep_final(trial, key)
        self.progress.trial_finished()
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
                self.mlflow.log_model(key, final / DELTA_DIR, self._trial(trial))

    def on_trial_recover(self, iteration, trials, trial, **info):
        error = _error_text(trial)
        if trial.checkpoint is None:  # the retry starts over, in a new attempt: this one ended here, failed, and why
            self.mlflow.fail(_key(trial), error, self._trial(trial))
        where = "from its last checkpoint" if trial.checkpoint is not None else "from step 0 (it had no checkpoint)"
        lines = error.strip().splitlines() or [""]
        self._show(trials, f"{_trial_name(trial.config['trial'])} failed, retrying {where}: {lines[-1][:200]}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._failed(trials, trial, _error_text(trial))

    def on_step_begin(self, iteration, trials, **info):
        """`peft-sweep stop` asked (a file in the sweep folder, polled once a second): stop as Ctrl-C does,
        through Tune's own handler (SIGUSR1), which saves the experiment and leaves running trials resumable."""
        now = time.time()
        if now - getattr(self, "stop_checked", 0.0) < 1.0 or getattr(self, "stop_sent", False):
            return
        self.stop_checked = now
        if now - getattr(self, "beat_at", 0.0) > driver.HEARTBEAT_S:
            self.beat_at = now
            driver.beat(self.sweep_dir)
        if driver.stop_requested(self.sweep_dir):
            self.stop_sent = True
            print(f"[{time.strftime('%H:%M:%S')}] stop requested: stopping the running trials at their last "
                  "checkpoint", flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)

    def _replayed(self, trials, trial, key: str) -> None:
        self._show(trials, f"{key} had FINISHED under an earlier driver: its recorded result stands", completing=trial)

    def _failed(self, trials, trial, error: str, completing=None) -> None:
        key = _key(trial)
        if key in self.replays:
            return self._replayed(trials, trial, key)
        self.records.failed(key, error)
        self.mlflow.fail(key, error, self._trial(trial))
        self._show(trials, f"{key} FAILED: {error.strip().splitlines()[-1] if error.strip() else error}",
                   completing=completing)


LOCAL_HINT = "; it counts them itself (GPUs through NVML): set ray.num_cpus / ray.num_gpus to what the machine has"


def init_failure(address: str | None, exc: BaseException) -> str:
    """Why ray.init failed, for the user. Its address answered preflight's TCP and gRPC knock, so a cluster is
    there: without RAY_AUTH_MODE=token in this shell, a cluster started with token auth (Ray 2.60) logs
    "InvalidAuthToken" for ~20 s and then says only "Failed to connect" (the command `stop` prints to resume a
    job's sweep, run from a plain shell, met this)."""
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    line = f"cannot reach the Ray cluster at {address!r}: {said}"
    if address and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        line += ("; if the cluster was started with token auth, export RAY_AUTH_MODE=token in this shell (with "
                 "RAY_AUTH_TOKEN, or the token file on this machine) and run again")
    return line


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
    address = spec.ray_address
    try:
        if address:
            ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=spec.ray.num_cpus, num_gpus=spec.ray.num_gpus, include_dashboard=False,
                     logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(init_failure(address, exc)) from None
    if address:
        _check_cluster_resources(spec, f"the Ray cluster at {address!r}")
        _check_nodes(spec, f"the Ray cluster at {address!r}")
    else:  # preflight counted with torch and os; Ray counts for itself (GPUs through NVML) and may see fewer
        _check_cluster_resources(spec, "the local Ray", LOCAL_HINT)


def _check_cluster_resources(spec: SweepSpec, where: str, hint: str = "") -> None:
    """A trial runs on one node: one that asks for more than the largest node has would stay PENDING
    forever, even when the cluster has enough in all. Refuse it now."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for kind, field in (("GPU", "gpu_per_trial"), ("CPU", "cpu_per_trial")):
        want = getattr(spec.resources, field)
        most = max((n.get(kind, 0) for n in nodes), default=0)
        if want > most:
            total = sum(n.get(kind, 0) for n in nodes)
            problem = (f"resources.{field} {want:g}: the largest node of {where} has {most:g} {kind}(s) "
                       f"({total:g} on {len(nodes)} node(s) in all)")
            if spec.ray.autoscaling and spec.ray_address:  # GPU workers that scale from zero: Tune's request starts one
                print(f"WARNING: {problem}; trials wait for the autoscaler to add a node that fits (ray.autoscaling), "
                      f"and nodes added later are not preflighted", file=sys.stderr, flush=True)
                continue
            raise ClusterError(f"{problem}, so no trial could start{hint}"
                               + ("; if the cluster adds nodes on demand, set ray.autoscaling: true"
                                  if spec.ray_address else ""))


NODE_CHECK_TIMEOUT_S = 180.0


class _Unstarted(NamedTuple):
    why: str  # the task could not even start on the node (no package, no env)


def _on_every_node(fn, args: tuple, where: str) -> tuple[list[dict], dict[str, Any]]:
    """``fn(*args)`` as a one-shot task on every alive node: (the nodes, each node's answer or _Unstarted)."""
    from ray.exceptions import GetTimeoutError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {f"node {n['NodeManagerAddress']} ({n['NodeID'][:8]})": probe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(*args) for n in nodes}
    answers: dict[str, Any] = {}
    for node, ref in refs.items():
        try:
            answers[node] = ray.get(ref, timeout=NODE_CHECK_TIMEOUT_S)
        except GetTimeoutError:
            raise ClusterError(f"the preflight task did not return from {node} of {where} within "
                               f"{NODE_CHECK_TIMEOUT_S:g} s; are all nodes healthy (`ray status`)?") from None
        except ray.exceptions.RayError as exc:
            answers[node] = _Unstarted(str(exc).strip().splitlines()[-1][:200])
    return nodes, answers


def check_shared_storage(spec: SweepSpec) -> None:
    """Every node of the cluster reads the file the driver writes under Tune's root: else each trial a node runs
    fails at its first checkpoint (Ray checks every worker reaches the storage) and is retried to FAILED, hours
    in. A local path must be a folder all nodes mount; s3:// needs credentials (and AWS_ENDPOINT_URL for a
    non-AWS endpoint) on every node, which the job's environment does not carry to workers."""
    store = ExperimentStore(tune_root(spec.ray.storage_path, spec.name, spec.sweep_dir))
    try:
        name, token = store.write_check()
    except OSError as exc:  # pyarrow's errors for a refused write, missing credentials or bucket
        raise ClusterError(f"the driver cannot write Tune's storage {store.root}: "
                           f"{str(exc).strip().splitlines()[0][:160]}") from None
    try:
        _, answers = _on_every_node(read_check, (store.root, name, token), "the cluster")
    finally:
        store.remove(name)
    bad = {node: a.why if isinstance(a, _Unstarted) else a for node, a in answers.items() if a is not None}
    if bad:
        for node, why in sorted(bad.items()):
            print(f"  {node}: cannot read Tune's storage {store.root}: {why}", file=sys.stderr)
        raise ClusterError(f"{len(bad)} node(s) cannot read Tune's storage {store.root} (listed above); give "
                           "ray.storage_path a folder every node mounts, or a URI every node can reach (for s3://: "
                           "credentials in the runtime_env's env_vars); nothing was started")


def _check_nodes(spec: SweepSpec, where: str) -> None:
    """A one-shot task on every alive node: it has the data, the token cache and the model, and runs the
    driver's versions of ray, torch, transformers, peft and this project. Else nothing starts, and a table
    says what each node lacks (a trial would otherwise fail there, hours in)."""
    nodes, answers = _on_every_node(node_report, (spec,), where)
    reports = {node: a if not isinstance(a, _Unstarted) else {"versions": {}, "lacks": [a.why]}
               for node, a in answers.items()}
    problems = nodes_problems(reports, node_versions(), node_data(spec))
    if problems:
        print(f"preflight on {len(nodes)} node(s) of {where}:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        raise ClusterError(f"{len(problems)} problem(s) on the nodes of {where} (listed above); nothing was started")
    if len(nodes) > 1:  # (Tune's storage: check_shared_storage has every node read it)
        if spec.resolved_tracking_uri.startswith("sqlite"):
            print("WARNING: MLflow on SQLite with a multi-node cluster: the driver alone writes it, which works, "
                  "but only this machine can browse it; an `mlflow server` (README, cluster section) lets "
                  "everyone see the sweep", file=sys.stderr, flush=True)


# Ray's error when a restored trial's checkpoint is missing from storage (Trainable.restore, Ray 2.60)
CHECKPOINT_GONE = "Could not recover from checkpoint as it does not exist on storage anymore"


def resume_from_the_next_checkpoint(trial: Trial) -> str | None:
    """Point a restored trial whose checkpoint is gone at the checkpoint Tune took after it; returns that folder's
    name. Tune keeps a trial's newest checkpoint only, and the experiment state it saved last can name one it has
    deleted since (the driver died before it saved the state, and the trial's result.json, again): Tune's restore
    then fails on every retry (CHECKPOINT_GONE) although the newer checkpoint is right there. Tune has no option
    for this (Ray 2.60), hence its checkpoint bookkeeping set here. Which folder: Tune deletes a checkpoint only
    once it registered a newer one, which the worker reports after storing it whole, and never the newest it
    registered; so the oldest newer folder with all of a checkpoint's files is whole (one before it may be half
    deleted, one after it half copied: the trial's next checkpoint overwrites that). With none, the trial fails to
    restore and ``run_trials`` starts it over. Errors here only warn: Tune would restart the whole experiment."""
    latest = trial.latest_checkpoint_result
    if trial.status != Trial.PENDING or latest is None:  # PENDING: a restored trial that will resume
        return None
    named = Path(latest.checkpoint.path).name
    try:
        if latest.checkpoint.filesystem.get_file_info(latest.checkpoint.path).type != pafs.FileType.NotFound:
            return None
        if not (named_number := CHECKPOINT_FOLDER.fullmatch(named)):
            return None
        fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
        numbers = checkpoint_folders(fs, folder)
        for name in sorted((n for n, i in numbers.items() if i > int(named_number[1])), key=numbers.get):
            files = {e.base_name for e in fs.get_file_info(pafs.FileSelector(f"{folder}/{name}"))}
            if not ({TENSORS, META} <= files or RESULT_FILE in files):
                continue
            manager = _CheckpointManager(trial.run_metadata.checkpoint_manager.checkpoint_config)
            manager.register_checkpoint(_TrainingResult(  # its own metrics were not saved: the named one's, renamed
                checkpoint=tune.Checkpoint(f"{folder}/{name}", filesystem=fs),
                metrics={**latest.metrics, "checkpoint_dir_name": name}))
            trial.run_metadata.checkpoint_manager = manager  # a new one: the old one would delete the missing folder
            trial.storage.current_checkpoint_index = numbers[name]  # the last one's: a worker adds 1 first
            trial.invalidate_json_state()
            print(f"{_key(trial)}: Tune's saved state names {named}, which Tune had deleted since; it resumes from "
                  f"{name}, the checkpoint Tune took after it", flush=True)
            return name
    except Exception as exc:  # noqa: BLE001 (on_trial_add must not fail, see above)
        print(f"WARNING: {_key(trial)}: looking for a checkpoint newer than {named} failed ({exc!r}); the trial "
              "restores from the one Tune's state names", file=sys.stderr, flush=True)
    return None


def run_trials(spec: SweepSpec, trials: list[TrialConfig], restore: bool, supersede: bool = False,
               grid: list[str] | None = None) -> dict[str, int]:
    """Run ``trials`` as one Tune experiment. With ``restore``, first finish every experiment a driver left
    unfinished (it died or was stopped); with ``supersede`` (``--force``: everything reruns) mark those done
    instead, so no later run resumes them. ``grid``: the sweep's keys, which the progress line counts (default:
    ``trials``'). Returns counts of what Tune ended with."""
    progress = Progress()
    _PROGRESS.append(progress)
    try:
        return _run_trials(spec, trials, restore, supersede, grid or [t.key for t in trials], progress)
    finally:
        _PROGRESS.pop()


def _run_trials(spec: SweepSpec, trials: list[TrialConfig], restore: bool, supersede: bool, grid_keys: list[str],
                progress: Progress) -> dict[str, int]:
    init_ray(spec)
    wanted = [t.key for t in trials]
    store = ExperimentStore(tune_root(spec.ray.storage_path, spec.name, spec.sweep_dir))

    def count_outside(to_run: set[str]) -> None:
        """The records as an experiment starts, and the keys this driver is still to run (for the line)."""
        progress.sweep = (grid_keys, to_run, records.all_records(spec.sweep_dir))
    wrapped = tune.with_resources(tune.with_parameters(trainable, data=_data_paths(spec)),
                                  {"cpu": spec.resources.cpu_per_trial, "gpu": spec.resources.gpu_per_trial})
    results = {"FINISHED": 0, "ERROR": 0, "STOPPED": 0}
    for last in store.unfinished():
        if supersede:
            store.mark_done(last)
            continue
        if not restore or not tune.Tuner.can_restore(store.uri(last)):
            continue  # left for a plain `run` (rerun-failed does not resume stopped trials)
        restored_keys = store.keys(last)
        print(f"resuming the interrupted experiment {last} ({n_trials(len(restored_keys))})", flush=True)
        count_outside(set(wanted))
        _RESTORING.append(spec)  # the experiment's own (pickled) callback writes where this spec says
        try:
            grid = tune.Tuner.restore(store.uri(last), wrapped, resume_unfinished=True, resume_errored=False,
                                      restart_errored=False).fit()
        finally:
            _RESTORING.pop()
        if _end(spec, store, last, grid, results) or driver.drain_requested(spec.sweep_dir):
            return _left_by_drain(spec, wanted, results)
        # its keys that Tune never created (a grid is generated as trials finish; see GridSearch) run anew below,
        # and so do those whose checkpoint was gone
        recs = records.all_records(spec.sweep_dir)
        ended = {k for k, r in recs.items() if r.get("status") in ("FINISHED", "FAILED")}
        lost = {k for k in restored_keys if recs.get(k, {}).get("status") == "FAILED"
                and CHECKPOINT_GONE in (recs[k].get("error") or "")}
        if lost:
            results["ERROR"] -= len(lost)
            print(f"{len(lost)} trial(s) could not resume: Tune's saved state names a checkpoint Tune had deleted "
                  "(it keeps the newest; the driver died before it saved its state again), and no newer one is "
                  f"left. They start over, each as a new attempt: {', '.join(sorted(lost))}", flush=True)
        trials = [t for t in trials if t.key not in restored_keys or t.key not in ended or t.key in lost]
    if not trials or driver.drain_requested(spec.sweep_dir):
        return _left_by_drain(spec, wanted, results)
    name = store.next_name()
    store.write_keys(name, [t.key for t in trials])
    count_outside({t.key for t in trials})  # those that ended in this driver count by their records
    callback = SweepCallback(spec)
    tuner = tune.Tuner(
        wrapped,
        param_space={"trial": tune.grid_search([{**t.model_dump(mode="json"), "trial_key": t.key} for t in trials])},
        tune_config=tune.TuneConfig(
            search_alg=GridSearch(max_concurrent=spec.resources.max_concurrent or 0),
            scheduler=Drain(spec),
            reuse_actors=spec.resources.reuse_workers,  # Tune's default is a new process per trial
            trial_name_creator=lambda t: _trial_name(t.config["trial"]),
            trial_dirname_creator=lambda t: _trial_name(t.config["trial"]),
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=store.root, callbacks=[callback, NoTuneTrialLines()], verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    _end(spec, store, name, tuner.fit(), results)
    return _left_by_drain(spec, wanted, results)


def _left_by_drain(spec: SweepSpec, wanted: list[str], results: dict[str, int]) -> dict[str, int]:
    """With a drain asked (`peft-sweep stop --drain`), ``results["DRAINED"]``: the trials of ``wanted`` that did
    not start, left for the next run (neither ended nor left resumable in an experiment)."""
    if driver.drain_requested(spec.sweep_dir):
        ended = {k for k, r in records.all_records(spec.sweep_dir).items() if r.get("status") in ("FINISHED", "FAILED")}
        results["DRAINED"] = max(0, sum(k not in ended for k in wanted) - results["STOPPED"])
    return results


def _end(spec: SweepSpec, store: ExperimentStore, name: str, grid, results: dict[str, int]) -> bool:
    """Count how the experiment's trials ended. One stopped with trials left unfinished (``peft-sweep stop``,
    Ctrl-C) is not marked done, so the next run resumes it. Returns whether it was stopped so. A trial is
    unfinished when Tune has no error and no final result for it and the driver recorded no end for it; one a
    drain stopped before it started is not counted at all (the next run runs it in a new experiment)."""
    ended = {k: r.get("status") for k, r in records.all_records(spec.sweep_dir).items()}
    dropped = store.dropped(name)
    stopped = 0
    for r in grid:
        if dropped and _result_key(r) in dropped:
            continue
        if r.error or (r.metrics or {}).get(FAILED_REPORT):
            results["ERROR"] += 1
        elif (r.metrics or {}).get("final"):
            results["FINISHED"] += 1
        elif ended.get((r.config or {}).get("trial", {}).get("trial_key")) in ("FINISHED", "FAILED"):
            results["FINISHED" if ended[r.config["trial"]["trial_key"]] == "FINISHED" else "ERROR"] += 1
        else:
            stopped += 1
    results["STOPPED"] += stopped
    if not stopped:
        store.mark_done(name)
    return bool(stopped)


def _result_key(result) -> str | None:
    """The trial key of a Tune result. Its config comes from the trial's last report, so a trial that never
    reported has none; its folder is named by ``_trial_name``, which ends with the key."""
    key = (result.config or {}).get("trial", {}).get("trial_key")
    if key is None and result.path:
        key = str(result.path).rstrip("/").rsplit("/", 1)[-1].rsplit("-", 1)[-1]
    return key


def _trial_config(trial: dict[str, Any]) -> dict[str, Any]:
    """The TrialConfig fields of a Tune config (the key rides along so callbacks need not rehash)."""
    return {k: v for k, v in trial.items() if k != "trial_key"}


def _key_of(trial: dict[str, Any]) -> str:
    return trial.get("trial_key") or TrialConfig.model_validate(_trial_config(trial)).key  # older experiments


def _key(trial) -> str:
    return _key_of(trial.config["trial"])


def _trial_name(trial: dict[str, Any]) -> str:
    """The grid row's label (a variant's own name, such as sam-global), task, seed and key."""
    return f"{trial.get('variant') or trial['method']}-{trial['task']}-s{trial['seed']}-{_key_of(trial)}"


