"""Parquet export of a sweep: ``trials.parquet`` (one row per trial) and ``curves.parquet`` (one row per
evaluation, plus one per projection of diffprune/childprune). Rebuildable at any time.

Sources: one paged listing of the MLflow runs (each run's ``result`` tag holds its scalar result
fields) joined with the local records, so trials that finished while the store was down are exported
too; the ``source`` column says where each row's data came from ("mlflow" or "records"). Curves come
from the local records when they hold the trial's result, else from the run's metric history.

Columns: a fixed set first (coordinates, the learning rate used, scores, costs, and the ``code_version`` and
``attempt`` of each trial's run, so a table can be split by them), then every other scalar result field as
it comes (a new field reaches the Parquet file without a change here); list- or dict-valued fields (curve,
projections, mask anatomy) do not fit a cell and are left to their own files.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import records
from . import masks
from .spec import SweepSpec
from .tracking import SERIES, Tracker, TrackingError, is_outage, scalar_fields

COMPONENTS = ["accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman"]
TRIALS_SCHEMA = pa.schema(
    [("sweep", pa.string()), ("trial_key", pa.string()), ("method", pa.string()), ("base_method", pa.string()),
     ("variant", pa.string()), ("task", pa.string()), ("seed", pa.int64()), ("sparsity", pa.float64()),
     ("perturbation", pa.int64()), ("model", pa.string()), ("lr", pa.float64()),
     ("status", pa.string()), ("metric", pa.string()), ("test_score", pa.float64()), ("dev_score", pa.float64()),
     ("train_score", pa.float64())]
    + [(f"{split}_{c}", pa.float64()) for split in ("test", "dev", "train") for c in COMPONENTS]
    + [("steps", pa.int64()), ("best_step", pa.int64()), ("wall_s", pa.float64()), ("eligible_params", pa.int64()),
       ("trainable_params", pa.int64()), ("changed_params", pa.int64()), ("n_projections", pa.int64()),
       ("error", pa.string()), ("code_version", pa.string()), ("attempt", pa.int64()), ("mlflow_run_id", pa.string()),
       ("mlflow_experiment_id", pa.string()), ("source", pa.string()), ("in_grid", pa.bool_())])
CURVES_SCHEMA = pa.schema(
    [("trial_key", pa.string()), ("method", pa.string()), ("task", pa.string()), ("seed", pa.int64()),
     ("kind", pa.string()), ("step", pa.int64()), ("dev_score", pa.float64()), ("train_loss", pa.float64()),
     ("lr", pa.float64()), ("flipped", pa.int64()), ("loss_before", pa.float64()), ("loss_after", pa.float64())])
FIXED = set(TRIALS_SCHEMA.names)


def _opt_int(v: Any) -> int | None:
    return None if v in (None, "None", "") else int(float(v))


def _opt_float(v: Any) -> float | None:
    return None if v in (None, "None", "") else float(v)


def _arrow_type(values: list[Any]) -> pa.DataType:
    """The column type of an extra result field: bool, int, float (ints and floats mixed) or text."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def _row(spec: SweepSpec, key: str, run, rec: dict[str, Any] | None, tracker: Tracker | None) -> tuple[dict, dict]:
    """One trial's row and its full result (empty if it has none)."""
    rec = rec or {}
    tags = run.data.tags if run is not None else {}
    run_status = run.info.status if run is not None else None
    full: dict[str, Any] = {}
    source = "mlflow" if run is not None else "records"
    if rec.get("status") == "FINISHED" and rec.get("result"):
        full = rec["result"]
    if run_status == "FINISHED" and tracker is not None:
        from_run = tracker.result(run) or {}
        full = {**from_run, **{k: v for k, v in full.items() if k not in from_run}}
    elif full:
        source = "records"  # MLflow missed the end of this trial
    result = scalar_fields(full)
    trial = rec.get("trial") or {}
    status = records.merged_status(rec.get("status"), run_status)  # as `status` says
    coord = {c: result.get(c, trial.get(c, tags.get(c))) for c in ("method", "task", "seed", "sparsity",
                                                                    "perturbation", "model", "variant")}
    row: dict[str, Any] = {f: None for f in FIXED}
    row.update({k: v for k, v in result.items() if k not in ("status", "method")})
    row.update(sweep=spec.name, trial_key=key, base_method=coord["method"], variant=coord["variant"],
               method=coord["variant"] or coord["method"], task=coord["task"], seed=_opt_int(coord["seed"]),
               sparsity=_opt_float(coord["sparsity"]), perturbation=_opt_int(coord["perturbation"]),
               model=coord["model"], status=status, source=source,
               error=None if status == "FINISHED" else (tags.get("error") or rec.get("error")),
               mlflow_run_id=run.info.run_id if run is not None else None,
               mlflow_experiment_id=run.info.experiment_id if run is not None else None, lr=_lr(result, trial, run),
               code_version=tags.get("code_version") or rec.get("code_version"), attempt=_opt_int(tags.get("attempt")))
    if "projections" in full:
        row["n_projections"] = len(full["projections"])
    return row, full


def _lr(result: dict[str, Any], trial: dict[str, Any], run) -> float | None:
    """The learning rate the trial used: its result's (trials run since results carry it), else resolved
    from its config like the trial resolved it, else the run's ``lr`` param."""
    if result.get("lr") is not None:
        return float(result["lr"])
    if trial:
        from pydantic import ValidationError

        from trainables import TrialConfig

        try:
            return TrialConfig.model_validate({k: v for k, v in trial.items() if k != "trial_key"}).effective_lr()
        except ValidationError:  # a record of an older config format: the run's param says it
            pass
    return _opt_float(run.data.params.get("lr")) if run is not None else None


def _curve_rows(row: dict, full: dict, run, tracker: Tracker | None) -> list[dict]:
    base = {**{f.name: None for f in CURVES_SCHEMA}, "trial_key": row["trial_key"], "method": row["method"],
            "task": row["task"], "seed": row["seed"]}
    points: dict[int, dict] = {}
    if full.get("curve") is not None:
        for p in full["curve"]:
            points[int(p["step"])] = {"step": int(p["step"]), **{k: p.get(k) for k in SERIES}}
    elif run is not None and tracker is not None:
        for metric in SERIES:
            for m in tracker.history(run.info.run_id, metric):  # a resumed trial may log a step twice: last wins
                points.setdefault(m.step, {"step": m.step})[metric] = m.value
    out = [{**base, "kind": "eval", **points[s]} for s in sorted(points)]
    out += [{**base, "kind": "projection", "step": p["step"], "flipped": p["flipped"],
             "loss_before": p["loss_before"], "loss_after": p["loss_after"]} for p in full.get("projections", [])]
    return out


def collect(spec: SweepSpec, tracker: Tracker | None) -> tuple[list[dict], list[dict], dict[str, dict]]:
    """Rows of trials and curves, and each trial's full result (for exports of list-valued fields)."""
    runs = {}
    if tracker is not None:
        try:
            runs = tracker.trial_runs()
        except Exception as exc:
            if not is_outage(exc):
                raise
            print(f"WARNING: tracking store unreachable ({type(exc).__name__}); exporting from the local records "
                  "only", file=sys.stderr)
            tracker = None
    recs = records.all_records(spec.sweep_dir)
    # a trial of a row fixed or dropped after it failed, or of a `run --force` with other settings, stays in the
    # records and MLflow but is no result of this spec: kept, marked, and left out by the analysis
    grid = {t.key: t for t in spec.trials()}
    trials, curves, results = [], [], {}
    for key in sorted(set(runs) | set(recs)):
        run = runs.get(key)
        row, full = _row(spec, key, run, recs.get(key), tracker)
        row["in_grid"] = key in grid
        trials.append(row)
        curves.extend(_curve_rows(row, full, run, tracker))
        if full:
            results[key] = full
    # a grid trial no driver started yet is a row too: without it the grid looked smaller than it is
    for key in sorted(set(grid) - set(runs) - set(recs)):
        row, _ = _row(spec, key, None, {"status": "PENDING", "trial": grid[key].model_dump(mode="json")}, None)
        trials.append({**row, "source": "grid", "in_grid": True})
    return trials, curves, results


def trials_table(rows: list[dict]) -> pa.Table:
    extra = sorted({k for r in rows for k in r} - FIXED)
    schema = pa.schema(list(TRIALS_SCHEMA) + [(k, _arrow_type([r.get(k) for r in rows])) for k in extra])
    cast = [{k: (str(v) if v is not None and schema.field(k).type == pa.string() and not isinstance(v, str) else v)
             for k, v in r.items()} for r in rows]
    return pa.Table.from_pylist(cast, schema=schema)


def export(spec: SweepSpec, out: Path, tracker: Tracker | None = None) -> tuple[Path, Path]:
    store = spec.sweep_dir / "mlflow.db"
    if tracker is None and not spec.tracking_uri and not store.is_file():
        # reading would make a new, empty store where the sweep's was (deleted, or not copied with the folder)
        print(f"WARNING: the sweep's MLflow store {store} is missing; exporting from the local records only "
              f"(`peft-sweep sync {spec.sweep_dir}` rebuilds the store from them)", file=sys.stderr)
    elif tracker is None:
        tracker = Tracker(spec.resolved_tracking_uri, spec.name, spec.sweep_dir)
        try:
            tracker.check()
        except TrackingError as exc:
            print(f"WARNING: {exc}; exporting from the local records only", file=sys.stderr)
            tracker = None
    trials, curves, results = collect(spec, tracker)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "trials.parquet", out / "curves.parquet"
    pq.write_table(trials_table(trials), paths[0])
    pq.write_table(pa.Table.from_pylist(curves, schema=CURVES_SCHEMA), paths[1])
    # list-valued result fields get their own files: where each trial's budget went, and the masks themselves
    masks.write_anatomy([{"trial_key": k, **r} for k, r in results.items()], out)
    masks.copy_masks(spec.sweep_dir, list(results), out)
    return paths
