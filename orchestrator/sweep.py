"""What a sweep is made of on disk, and the commands over it: run, rerun-failed, status, sync.

The truth of a trial's status is the union of the tracking store and the local records: a trial is
FINISHED if either says so (so an MLflow outage never makes a finished trial run again).
"""
from __future__ import annotations

import collections
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from . import driver, identity, records
from .preflight import check_cluster_paths, check_ray_address, preflight, undo_on_error
from .progress import n_trials
from .spec import SpecError, SweepSpec, load_spec
from .tracking import Tracker, TrackingError

SPEC_FILE = "spec.yaml"


def tracker_for(spec: SweepSpec) -> Tracker:
    return Tracker(spec.resolved_tracking_uri, spec.name, spec.sweep_dir)


def load_sweep(sweep_dir: str | Path) -> SweepSpec:
    """The spec of the sweep in ``sweep_dir``, with the folder where it is now: a folder seen from another working
    directory (a relative output_dir) or moved (another machine) is followed, so nothing reads or writes the
    folder its spec.yaml was written in."""
    folder = Path(sweep_dir).expanduser().resolve()
    path = folder / SPEC_FILE
    if not path.is_file():
        raise SpecError(f"{sweep_dir}: not a sweep folder (no {SPEC_FILE}); give the folder that "
                        "`peft-sweep run` printed, e.g. runs/<name>")
    spec = load_spec(path, saved=True)
    if spec.sweep_dir != folder:
        if spec.name != folder.name:
            raise SpecError(f"SWEEP_DIR {str(sweep_dir)!r} holds the spec of sweep {spec.name!r}, whose folder is "
                            f"{str(spec.sweep_dir)!r}; give that folder, or name the folder {spec.name!r}")
        spec = spec.model_copy(update={"output_dir": str(folder.parent)})
    return spec


def follow_folder(spec: SweepSpec, config: Path, overrides: list[str]) -> SweepSpec:
    """`run SWEEP_DIR/spec.yaml` (the command `stop` prints) means the sweep in that folder, also after the folder
    moved: its spec.yaml still names the old output_dir. An output_dir given with --set wins."""
    folder = config.expanduser().resolve().parent
    in_sweep = config.name == SPEC_FILE and folder.name == spec.name and (folder / identity.IDENTITY_FILE).is_file()
    if not in_sweep or any(o.startswith("output_dir=") for o in overrides):
        return spec
    return spec.model_copy(update={"output_dir": str(folder.parent)})


def finished_keys(sweep_dir: Path) -> set[str]:
    """The trial keys with a result, as the sweep's local records say."""
    return {k for k, r in records.all_records(sweep_dir).items() if r.get("status") == "FINISHED"}


def statuses(spec: SweepSpec, tracker: Tracker | None = None) -> dict[str, str]:
    """trial_key -> FINISHED / FAILED / RUNNING / STOPPED / ..., from MLflow and the local records. A stopped
    trial is STOPPED (resumable), as its record says, not MLflow's KILLED."""
    out = {k: r.get("status", "UNKNOWN") for k, r in records.all_records(spec.sweep_dir).items()}
    if tracker is not None:
        for k, s in tracker.statuses().items():
            out[k] = records.merged_status(out.get(k), s)
    return out


def sync(spec: SweepSpec, tracker: Tracker, mend_parent: bool = True) -> int:
    """Fill MLflow from the local records: trials it missed or whose end it missed, and evaluations it
    missed (a record is marked ``synced: false`` whenever a call was skipped), and tag each trial run in or out
    of the grid. Then mend a parent run left RUNNING by a driver that died. Returns how many trials were synced."""
    n = 0
    runs = tracker.trial_runs()
    for key, rec in records.all_records(spec.sweep_dir).items():
        status = rec.get("status")
        run = runs.get(key)
        if status == "STOPPED" and rec.get("synced") is False and run is not None:
            tracker.stop_trial(key)  # the stop happened while the store was down: no run left RUNNING
            records.update(spec.sweep_dir, key, synced=True)
            continue
        if status not in ("FINISHED", "FAILED"):
            continue
        same_attempt = run is not None and run.info.status == status
        trial = rec.get("trial") or {}
        missed_model = status == "FINISHED" and rec.get("model_logged") is False
        if same_attempt and rec.get("synced") is not False:
            if missed_model:
                log_model_again(spec, tracker, key, trial)
            continue
        if not same_attempt:
            tracker.start_trial(key, trial, version=rec.get("code_version"))  # this attempt's run, or a new one
        if status == "FINISHED":
            tracker.fill_curve(key, rec["result"].get("curve", []), trial)
            tracker.finish(key, rec["result"], trial)
            if missed_model:  # into the run just made, if the outage kept it from starting
                log_model_again(spec, tracker, key, trial)
        else:
            tracker.fail(key, rec.get("error") or "failed", trial)
        records.update(spec.sweep_dir, key, synced=True)
        n += 1
    mark_out_of_grid(spec, tracker)  # runs it made or holds for keys the grid no longer has, as the export says
    if mend_parent and not driver.alive(spec.sweep_dir) and tracker.parent_status() == "RUNNING":
        close_sweep(spec, tracker, statuses(spec, tracker), quiet=True)
    return n


COORDS = ("method", "variant", "task", "seed", "sparsity", "perturbation")  # what a grid cell is, without settings


def rekeyed(spec: SweepSpec) -> dict[str, str]:
    """Grid trials with no result under their key whose grid cell FINISHED under another key (new key -> old):
    the spec is the same, so the code changed what a trial's settings are (a method gained one), and they rerun."""
    done = {tuple(rec["trial"].get(c) for c in COORDS): key for key, rec in records.all_records(spec.sweep_dir).items()
            if rec.get("status") == "FINISHED" and rec.get("trial")}
    return {t.key: done[cell] for t in spec.trials()
            if (cell := tuple(getattr(t, c) for c in COORDS)) in done and done[cell] != t.key
            and t.key not in done.values()}


def mark_out_of_grid(spec: SweepSpec, tracker: Tracker) -> int:
    """MLflow's runs of trials that a changed spec (``--force``, a fixed or dropped row) left out of the grid are
    tagged ``in_grid=false``, as the export marks them; returns how many were newly tagged."""
    return tracker.tag_grid({t.key for t in spec.trials()})


def log_model_again(spec: SweepSpec, tracker: Tracker, key: str, trial: dict[str, Any]) -> None:
    """Log a finished trial's model delta that the driver could not (the store was down or refused it), from the
    trial's last checkpoint in Tune's storage, which Tune keeps. Said, not raised, when that is gone too."""
    import tempfile

    from trainables.checkpoint import DELTA_META
    from trainables.finetuned import DELTA_DIR

    from .storage import ExperimentStore, tune_root

    store = ExperimentStore(tune_root(spec.ray.storage_path, spec.name, spec.sweep_dir))
    final = store.final_folder(key, f"{DELTA_DIR}/{DELTA_META}")  # the delta whole: its meta file
    if final is None:  # said once: the record stops asking
        print(f"WARNING: trial {key}'s model delta never reached MLflow and its final checkpoint is no longer in "
              f"{store.root}; its results stand, but `peft-sweep load` cannot rebuild its model", file=sys.stderr)
        records.update(spec.sweep_dir, key, model_logged="lost")
        return
    with tempfile.TemporaryDirectory(prefix=f"model-{key}-") as tmp:
        tracker.log_model(key, store.download(f"{final}/{DELTA_DIR}", Path(tmp) / DELTA_DIR), trial)
    records.update(spec.sweep_dir, key, model_logged=True)


# ---------------------------------------------------------------------- the parent run
def spec_params(spec: SweepSpec) -> dict[str, Any]:
    """The spec as the parent run's params: axes and training settings, flattened."""
    data = spec.model_dump(mode="json", exclude={"fault", "output_dir", "tracking_uri", "ray"})
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif node is not None and node != {}:
            out[prefix.rstrip(".")] = node
    walk(data, "")
    return out


def close_sweep(spec: SweepSpec, tracker: Tracker, final: dict[str, str], quiet: bool = False) -> list[str]:
    """Put the sweep's answer on the parent run (analysis and report as artifacts, ρ, counts and each
    task's best mean as metrics) and end it: FINISHED when every trial finished, else FAILED. Returns
    the lines of the answer for the console."""
    import pandas as pd

    from . import analysis, export

    keys = [t.key for t in spec.trials()]
    n_finished = sum(final.get(k) == "FINISHED" for k in keys)
    n_failed = len(keys) - n_finished
    metrics: dict[str, float] = {"n_finished": n_finished, "n_failed": n_failed}
    tags: dict[str, Any] = {}
    artifacts: dict[str, Path] = {}
    lines: list[str] = []
    try:
        trials_path, curves_path = export.export(spec, spec.sweep_dir / "export", tracker)
        df = pd.read_parquet(trials_path)
        from dashboards.analysis import analyze, best_per_task, current, scored, unscored
        from dashboards.answer import answer
        from dashboards.report import build_report

        ours = current(df)
        lacking, analysable = unscored(ours), not scored(ours).empty
        if not analysable and lacking:
            lines.append(f"no analysis: none of the {len(lacking)} FINISHED trial(s) has a test score in MLflow or "
                         f"in the records: {', '.join(lacking[:5])}" + (" ..." if len(lacking) > 5 else ""))
        if analysable:
            result = analyze(df)  # once, for the analysis files and the report
            analysis.analyze_file(trials_path, spec.sweep_dir / "analysis", result)
            index = build_report(trials_path, curves_path, spec.sweep_dir / "report", tracking_uri=tracker.uri,
                                 analysis=result)
            artifacts = {"analysis": spec.sweep_dir / "analysis", "report": index.parent}
            summary = result.summary
            for name, value in (("spearman_rho", summary["spearman"]["rho"]),
                                ("spearman_permutation_p_value", summary["spearman"]["permutation_p_value"]),
                                ("spearman_p_value", summary["spearman"]["p_value"])):  # scipy's: pairs independent
                if value is not None:
                    metrics[name] = value
            for task, (method, mean) in best_per_task(result).items():  # AVG: among methods with every task
                metrics[f"best_mean.{task}"] = mean
                tags[f"best_method.{task}"] = method
            said = answer(result, df)
            lines += said["lines"]
            if said["most_stable"]:
                tags["most_stable_method"] = said["most_stable"]
            if said["lead"] and said["lead"].get("p") is not None:
                metrics["lead_p_value"] = said["lead"]["p"]
            if said["unranked"]:  # never-started trials are in the export as PENDING, so in this line too
                tags["unranked_methods"] = ", ".join(sorted(said["unranked"]))
            lines.append(f"report: {index}")
    except Exception as exc:  # noqa: BLE001 - the status must still be set; say what is missing
        import traceback

        traceback.print_exc()  # where it failed, on stderr: the one line below alone left a bug unplaceable
        lines.append(f"no analysis on the parent run: {type(exc).__name__}: {exc}; the trials are recorded and in "
                     f"MLflow all the same; `peft-sweep analyze {spec.sweep_dir}` tries again (the traceback is "
                     "above, on stderr)")
    lines.append(browse_hint(spec, tracker))
    if not quiet:  # the answer first: it stands even if the store fails now
        for line in lines:
            print(line, flush=True)
    tracker.end_sweep("FINISHED" if n_failed == 0 else "FAILED", metrics, tags, artifacts)
    return lines


def browse_hint(spec: SweepSpec, tracker: Tracker) -> str:
    url = tracker.runs_url()
    if tracker.uri.startswith(("http://", "https://")):
        return f"browse in MLflow: {url}"
    from dashboards.report import mlflow_command

    return f"browse in MLflow: {mlflow_command()} ui --backend-store-uri {tracker.uri} --port 5000, then open {url}"


class Checked(NamedTuple):
    """What `run` goes on with once every check passed."""
    spec: SweepSpec  # with the data folder it will read written in
    tracker: Tracker  # not written to yet
    note: str | None  # to print once the sweep folder is written (its data unrecorded, or moved)


def check_before_run(spec: SweepSpec, force: bool = False) -> Checked:
    """Everything `run` checks before it writes or starts anything (paths, resources, model, data, no other
    driver, the sweep's identity with the data folder it reads, store, cluster). `validate` calls it too, so what
    it reports is what `run` would meet."""
    spec = identity.with_data_folder(spec)  # spec.yaml and every trial name the folder, not the shell's variable
    previous = load_sweep(spec.sweep_dir) if (spec.sweep_dir / SPEC_FILE).is_file() else None
    adopted = None
    if not spec.data.dir and previous is not None and previous.data.dir:
        # a resume from a shell without $PEFT_SWEEP_DATA_DIR: the Hub would be refused as a switch of data anyway
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"dir": previous.data.dir})})
        adopted = (f"note: no data folder given (data.dir, $PEFT_SWEEP_DATA_DIR); reading the one this sweep "
                   f"recorded: {previous.data.dir}")
    address = spec.ray_address
    check_cluster_paths(spec, address)
    preflight(spec)
    if driver.alive(spec.sweep_dir):
        raise SpecError(f"sweep {spec.name!r} is running ({driver.describe(spec.sweep_dir)}); two drivers would run "
                        f"its trials twice: wait, or `peft-sweep stop {spec.sweep_dir}` first")
    identity.check_rerun(previous, spec, force, finished_keys(spec.sweep_dir) if previous else None)
    note = adopted or identity.unrecorded_data_note(previous, spec) or identity.moved_data_note(previous, spec)
    tracker = tracker_for(spec)
    tracker.check_reachable()
    tracker.check_owner()  # another sweep folder of this name in the same store: refused before anything is written
    check_ray_address(address)
    return Checked(spec, tracker, note)


def plan(trials: list, status: dict[str, str], force: bool = False,
         only_failed: bool = False) -> tuple[int, list]:
    """How many of ``trials`` already FINISHED, and the trials a run would start."""
    if only_failed:
        pending = [t for t in trials if status.get(t.key) == "FAILED"]
    elif force:
        pending = list(trials)
    else:
        pending = [t for t in trials if status.get(t.key) != "FINISHED"]
    return sum(status.get(t.key) == "FINISHED" for t in trials), pending


def plan_line(done: int, pending: list, force: bool) -> str:
    """"3 already FINISHED, 2 to run"; with --force the FINISHED ones run again, and it says so."""
    return (f"{done} FINISHED before, all {len(pending)} run again (--force)" if force and done else
            f"{done} already FINISHED, {len(pending)} to run")


def run(spec: SweepSpec, force: bool = False, only_failed: bool = False) -> int:
    """Run what is left of the sweep. Returns the number of trials that ended in error."""
    from .tune_runner import check_shared_storage, init_ray, run_trials  # Ray only when a sweep really runs

    spec, tracker, note = check_before_run(spec, force)
    trials = spec.trials()
    if spec.ray_address:  # connect now: a cluster without the GPUs a trial asks for is refused before any write
        init_ray(spec)
    with undo_on_error(spec.sweep_dir):  # a store that refuses us leaves no empty sweep folder behind
        spec.sweep_dir.mkdir(parents=True, exist_ok=True)
        identity.ensure_sweep_id(spec.sweep_dir)  # before the experiment is made or adopted: it names its folder
        tracker.check()
        if spec.ray_address:  # every node reads what the driver writes to Tune's storage (a file, removed)
            check_shared_storage(spec)
    moved_from = tracker.follow_move()
    if moved_from:
        print(f"note: this sweep folder moved here from {moved_from}: its MLflow store's artifact paths now point "
              f"into {spec.sweep_dir / 'mlartifacts'} (earlier trials' model deltas are there only if that folder "
              "was copied too)", flush=True)
    for line in (note, spec.training.early_stopping_note()):
        if line:
            print(line, flush=True)
    (spec.sweep_dir / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    synced = sync(spec, tracker, mend_parent=False)  # this driver is about to run the sweep
    if synced:
        print(f"synced {synced} trial(s) from local records into MLflow", flush=True)
    status = statuses(spec, tracker)
    done, pending = plan(trials, status, force, only_failed)
    if force and not only_failed:
        tracker.forget_stops()  # everything starts over: a stopped trial's run is not reopened
    print(f"sweep {spec.name}: {n_trials(len(trials))}, {plan_line(done, pending, force and not only_failed)} "
          f"-> {spec.sweep_dir}", flush=True)
    if not force and (moved := rekeyed(spec)):  # with --force a changed spec explains it
        print(f"note: {len(moved)} trial(s) of this grid FINISHED before under other keys (this code keys their "
              "settings differently: a method gained a setting, whose default changes what they train); they run "
              "again under the new keys, and the old results stay, out of the grid", flush=True)
    left = collections.Counter(status.get(t.key, "PENDING") for t in trials) - collections.Counter(
        {"FINISHED": len(trials), "FAILED": len(trials)})
    if only_failed and left:  # stopped or never started: not this command's, and said so
        print(f"{sum(left.values())} trial(s) neither FINISHED nor FAILED ("
              + ", ".join(f"{n} {s}" for s, n in sorted(left.items())) + "): rerun-failed runs FAILED ones only; "
              f"`{resume_command(spec)}` runs them", flush=True)
    if not pending:
        print("nothing to run" + (": no trial of this grid FAILED" if only_failed else ""), flush=True)
        if tracker.parent_status() == "RUNNING":  # left so by a driver that died after the last trial
            close_sweep(spec, tracker, status)
        elif done:
            print(f"its answer again: peft-sweep analyze {spec.sweep_dir}", flush=True)
        if "fingerprint" not in identity.read(spec.sweep_dir):  # one that never recorded it (written before it was)
            identity.record_run(spec)
        return 0
    identity.record_run(spec)  # a run that runs trials: its code version, data and start (list's "started")
    init_ray(spec)  # only now: a sweep with nothing left to run starts no Ray
    tracker.start_sweep(spec_params(spec), spec.sweep_dir / SPEC_FILE)
    driver.register(spec.sweep_dir)
    started = time.time()
    try:
        with driver.leave_resumable_when_terminated(spec.sweep_dir):  # `ray job stop`: nothing left RUNNING
            counts = run_trials(spec, pending, restore=not (force or only_failed), supersede=force,
                                grid=[t.key for t in trials])
    except BaseException:  # interrupted or crashed: the parent must not stay RUNNING
        driver.unregister(spec.sweep_dir)
        try:
            tracker.end_sweep("KILLED")
        except Exception:  # noqa: BLE001 - store down too: `sync` mends it later
            pass
        raise
    if counts.get("STOPPED") or counts.get("DRAINED"):
        return _stopped(spec, tracker, counts, started)
    try:  # registered until the parent run is closed: a `stop` meanwhile waits for the analysis, rather than take
        return _end(spec, tracker, trials, counts)  # the driver for gone and end the parent KILLED under it
    finally:
        driver.unregister(spec.sweep_dir)


def rerun_hint(spec: SweepSpec, failed: list[str]) -> str:
    """What to do about the failed trials. A divergence repeats on a rerun (same settings, same seed: the same
    nan), so `rerun-failed` alone would loop; the methods that diverged are named for new settings."""
    recs = records.all_records(spec.sweep_dir)
    diverged = [k for k in failed if "TrainingDiverged" in (recs.get(k, {}).get("error") or "")]
    if not diverged:
        return f"rerun the failed ones with: peft-sweep rerun-failed {spec.sweep_dir}"
    trials = [recs[k].get("trial") or {} for k in diverged]
    settings = sorted({f"variants.{t['variant']}.lr" if t.get("variant") else f"methods.{t.get('method', '?')}.lr"
                       for t in trials})
    return (f"{len(diverged)} of them diverged, which a rerun repeats: give " + " / ".join(settings)
            + " a smaller value and `peft-sweep run` the spec again"
            + (f"; rerun the {len(failed) - len(diverged)} other(s) with: peft-sweep rerun-failed {spec.sweep_dir}"
               if len(diverged) < len(failed) else ""))


def _end(spec: SweepSpec, tracker: Tracker, trials: list, counts: dict[str, int]) -> int:
    """Every trial ran: say how they ended and close the parent run with the answer. Returns the failed count."""
    try:
        final = statuses(spec, tracker)
    except Exception as exc:  # noqa: BLE001 - the store went down during the sweep: the records know
        print(f"WARNING: tracking store unreachable at the end ({type(exc).__name__}); counting from the local "
              f"records; run `peft-sweep sync {spec.sweep_dir}` when it is back", file=sys.stderr, flush=True)
        final = statuses(spec, None)
    failed = [t.key for t in trials if final.get(t.key) == "FAILED"]
    left = [t.key for t in trials if final.get(t.key) != "FINISHED"]
    print(f"sweep {spec.name}: {len(trials) - len(left)}/{len(trials)} FINISHED, {len(failed)} FAILED "
          f"(Tune: " + ", ".join(f"{n} {what}" for what, n in counts.items()) + ")", flush=True)
    if failed:
        print(rerun_hint(spec, failed), flush=True)
    try:
        close_sweep(spec, tracker, final)
    except Exception as exc:  # noqa: BLE001 - the records hold the outcome; sync will mend it
        print(f"WARNING: could not close the sweep's parent run ({type(exc).__name__}: {exc}); run "
              f"`peft-sweep sync {spec.sweep_dir}` when the store is back", file=sys.stderr, flush=True)
    return len(failed)


def mark_stopped(spec: SweepSpec, tracker: Tracker) -> int:
    """Trials a driver left RUNNING (it stopped, or died) become STOPPED, resumable, with their MLflow runs
    KILLED and the parent run ended KILLED. A store that is down leaves the records unsynced for `sync`.
    Returns how many trials that touched."""
    left = [k for k, r in records.all_records(spec.sweep_dir).items() if r.get("status") == "RUNNING"]
    for key in left:
        records.update(spec.sweep_dir, key, status="STOPPED")
        try:
            tracker.stop_trial(key)
        except Exception:  # noqa: BLE001 - store down: the record says STOPPED and unsynced, `sync` mends it
            records.update(spec.sweep_dir, key, synced=False)
    try:
        if tracker.parent_status() == "RUNNING":
            tracker.end_sweep("KILLED")
    except Exception:  # noqa: BLE001 - store down: `sync` closes the parent later
        pass
    return len(left)


def resume_command(spec: SweepSpec) -> str:
    """How to resume the sweep where it last ran. A cluster from $RAY_ADDRESS (`ray job submit` sets it for its
    job) is not in spec.yaml: the bare command, typed on a login node, would run the rest on a local Ray there."""
    command = f"peft-sweep run {spec.sweep_dir / SPEC_FILE}"
    try:
        runs = identity.read(spec.sweep_dir).get("runs") or [{}]
    except SpecError:  # a hint printed on the way out; the next run says what is wrong with the file
        return command
    cluster = runs[-1].get("cluster")
    if not cluster or spec.ray.address:
        return command
    joined = "" if cluster == "auto" else f", or {command} --set ray.address={cluster}"
    return f"the same `ray job submit ... -- python -m orchestrator run {spec.sweep_dir / SPEC_FILE}`{joined}"


def ended_since(spec: SweepSpec, started: float, recs: dict[str, dict] | None = None) -> collections.Counter:
    """FINISHED and FAILED counts of the grid's trials that ended at or after ``started`` (the driver's clock, as
    the records' ``ended_at``; a record from before that field goes by its file time): a run's own (Tune's counts
    of a restored experiment hold what earlier drivers finished in it too). ``recs``: the records, if read."""
    recs = records.all_records(spec.sweep_dir) if recs is None else recs
    return collections.Counter(
        recs[t.key]["status"] for t in spec.trials()
        if t.key in recs
        and records.ended_since(recs[t.key], started, lambda: records.written_at(spec.sweep_dir, t.key)))


def _stopped(spec: SweepSpec, tracker: Tracker, counts: dict[str, int], started: float) -> int:
    """Tune stopped with trials left (`peft-sweep stop`, Ctrl-C) or drained (`stop --drain`): leave them
    resumable, their runs KILLED."""
    mark_stopped(spec, tracker)
    driver.unregister(spec.sweep_dir)
    # counted from the records, as `status` counts: Tune's count of trials left also holds some that never started
    # (and not those its generator had not made yet)
    recs, keys = records.all_records(spec.sweep_dir), {t.key for t in spec.trials()}
    left = collections.Counter((recs.get(k) or {}).get("status", "PENDING") for k in keys)
    stopped, drained = left["STOPPED"], sum(n for s, n in left.items() if s not in ("FINISHED", "FAILED", "STOPPED"))
    done = left["FINISHED"]
    ended = ended_since(spec, started, recs)
    print(f"sweep {spec.name}: {'stopped' if counts['STOPPED'] else 'drained'}; this run {ended['FINISHED']} "
          f"FINISHED, {ended['FAILED']} FAILED, " + (f"{stopped} STOPPED (resumable, from their last "
                                                    "checkpoint where they saved one, else from step 0), "
                                                    if stopped or not drained else "")
          + (f"{drained} not started, " if drained else "")
          + f"the sweep {done}/{len(spec.trials())} FINISHED; resume with: {resume_command(spec)}", flush=True)
    return 0


def status_table(spec: SweepSpec) -> dict[str, Any]:
    trials = spec.trials()
    try:
        tracker = tracker_for(spec)
        tracker.check()
    except TrackingError as exc:
        print(f"WARNING: {exc}; showing the local records only", file=sys.stderr)
        tracker = None
    status = statuses(spec, tracker)
    recs = records.all_records(spec.sweep_dir)
    per_status = collections.Counter(status.get(t.key, "PENDING") for t in trials)
    per_pair: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    errors, failed = {}, {}
    for t in trials:
        s = status.get(t.key, "PENDING")
        per_pair[(t.label, t.task)][s] += 1
        if s == "FAILED":
            err = (recs.get(t.key) or {}).get("error") or ""
            errors[t.key] = err.strip().splitlines()[-1] if err.strip() else ""
            failed[t.key] = f"{t.label}/{t.task} seed {t.seed}"  # what the key stands for, as the report names it
    return {"total": len(trials), "per_status": dict(per_status),
            "driver": "alive" if driver.alive(spec.sweep_dir) else "not running",
            "per_method_task": {f"{m}/{t}": dict(c) for (m, t), c in per_pair.items()}, "errors": errors,
            "failed_trials": failed}
