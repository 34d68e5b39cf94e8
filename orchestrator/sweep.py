"""What a sweep is made of on disk, and the commands over it: run, rerun-failed, status, sync.

The truth of a trial's status is the union of the tracking store and the local records: a trial is
FINISHED if either says so (so an MLflow outage never makes a finished trial run again).
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any

import yaml

from . import records
from .preflight import check_ray_address, preflight, undo_on_error
from .spec import SpecError, SweepSpec, spec_from_dict
from .tracking import Tracker, TrackingError

SPEC_FILE = "spec.yaml"


def tracker_for(spec: SweepSpec) -> Tracker:
    return Tracker(spec.resolved_tracking_uri, spec.name, spec.sweep_dir)


def load_sweep(sweep_dir: str | Path) -> SweepSpec:
    path = Path(sweep_dir) / SPEC_FILE
    if not path.is_file():
        raise SpecError(f"{sweep_dir}: not a sweep folder (no {SPEC_FILE}); give the folder that "
                        "`peft-sweep run` printed, e.g. runs/<name>")
    return spec_from_dict(yaml.safe_load(path.read_text()), str(path))


def statuses(spec: SweepSpec, tracker: Tracker | None = None) -> dict[str, str]:
    """trial_key -> FINISHED / FAILED / RUNNING / ..., from MLflow and the local records."""
    out = {k: r.get("status", "UNKNOWN") for k, r in records.all_records(spec.sweep_dir).items()}
    if tracker is not None:
        for k, s in tracker.statuses().items():
            if out.get(k) != "FINISHED":
                out[k] = s
    return out


def sync(spec: SweepSpec, tracker: Tracker) -> int:
    """Fill MLflow from local records that it missed. Returns how many trials were synced."""
    n = 0
    runs = tracker.trial_runs()
    for key, rec in records.all_records(spec.sweep_dir).items():
        status = rec.get("status")
        run = runs.get(key)
        if status not in ("FINISHED", "FAILED") or (run is not None and run.info.status == status):
            continue
        trial = rec.get("trial") or {}
        tracker.start_trial(key, trial)
        if status == "FINISHED":
            result = rec["result"]
            logged = {m.step for m in tracker.history(tracker.run_id(key), "dev_score")}
            for point in result.get("curve", []):
                if int(point["step"]) not in logged:
                    tracker.log_eval(key, point)
            tracker.finish(key, result)
        else:
            tracker.fail(key, rec.get("error") or "failed")
        records.update(spec.sweep_dir, key, synced=True)
        n += 1
    return n


def run(spec: SweepSpec, force: bool = False, only_failed: bool = False) -> int:
    """Run what is left of the sweep. Returns the number of trials that ended in error."""
    import os

    from .tune_runner import init_ray, run_trials  # Ray is imported only when a sweep really runs

    trials = spec.trials()
    preflight(spec)
    tracker = tracker_for(spec)
    tracker.check_reachable()
    check_ray_address(spec.ray.address or os.environ.get("RAY_ADDRESS"))
    with undo_on_error(spec.sweep_dir):  # a store that refuses us leaves no empty sweep folder behind
        spec.sweep_dir.mkdir(parents=True, exist_ok=True)
        tracker.check()
    (spec.sweep_dir / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    synced = sync(spec, tracker)
    if synced:
        print(f"synced {synced} trial(s) from local records into MLflow", flush=True)
    status = statuses(spec, tracker)
    if only_failed:
        pending = [t for t in trials if status.get(t.key) == "FAILED"]
    elif force:
        pending = trials
    else:
        pending = [t for t in trials if status.get(t.key) != "FINISHED"]
    done = sum(status.get(t.key) == "FINISHED" for t in trials)
    print(f"sweep {spec.name}: {len(trials)} trials, {done} already FINISHED, {len(pending)} to run "
          f"-> {spec.sweep_dir}", flush=True)
    if not pending:
        print("nothing to run", flush=True)
        return 0
    init_ray(spec)  # only now: a sweep with nothing left to run starts no Ray
    tracker.client.update_run(tracker.parent_run_id, status="RUNNING")
    counts = run_trials(spec, pending, restore=not (force or only_failed))
    try:
        final = statuses(spec, tracker)
    except Exception as exc:  # noqa: BLE001 - the store went down during the sweep: the records know
        print(f"WARNING: tracking store unreachable at the end ({type(exc).__name__}); counting from the local "
              f"records; run `peft-sweep sync {spec.sweep_dir}` when it is back", file=sys.stderr, flush=True)
        final = statuses(spec, None)
    failed = [t.key for t in trials if final.get(t.key) == "FAILED"]
    left = [t.key for t in trials if final.get(t.key) != "FINISHED"]
    print(f"sweep {spec.name}: {len(trials) - len(left)}/{len(trials)} FINISHED, {len(failed)} FAILED "
          f"(Tune: {counts})", flush=True)
    if failed:
        print(f"rerun the failed ones with: peft-sweep rerun-failed {spec.sweep_dir}", flush=True)
    if not left:
        try:
            tracker.end_sweep()
        except Exception:  # noqa: BLE001 - the records hold the outcome; sync will mend it
            pass
    return len(failed)


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
    errors = {}
    for t in trials:
        s = status.get(t.key, "PENDING")
        per_pair[(t.label, t.task)][s] += 1
        if s == "FAILED":
            err = (recs.get(t.key) or {}).get("error") or ""
            errors[t.key] = err.strip().splitlines()[-1] if err.strip() else ""
    return {"total": len(trials), "per_status": dict(per_status),
            "per_method_task": {f"{m}/{t}": dict(c) for (m, t), c in per_pair.items()}, "errors": errors}
