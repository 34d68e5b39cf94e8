"""Parquet export from the tracking store: ``trials.parquet`` (one row per trial) and ``curves.parquet``
(one row per evaluation, plus one per projection of diffprune/childprune). Rebuildable at any time."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .spec import SweepSpec
from .tracking import Tracker

COMPONENTS = ["accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman"]
TRIALS_SCHEMA = pa.schema(
    [("sweep", pa.string()), ("trial_key", pa.string()), ("method", pa.string()), ("task", pa.string()),
     ("seed", pa.int64()), ("sparsity", pa.float64()), ("perturbation", pa.int64()), ("model", pa.string()),
     ("status", pa.string()), ("metric", pa.string()), ("test_score", pa.float64()), ("dev_score", pa.float64()),
     ("train_score", pa.float64())]
    + [(f"{split}_{c}", pa.float64()) for split in ("test", "dev", "train") for c in COMPONENTS]
    + [("steps", pa.int64()), ("best_step", pa.int64()), ("wall_s", pa.float64()), ("eligible_params", pa.int64()),
       ("trainable_params", pa.int64()), ("changed_params", pa.int64()), ("n_projections", pa.int64()),
       ("error", pa.string()), ("mlflow_run_id", pa.string())])
CURVES_SCHEMA = pa.schema(
    [("trial_key", pa.string()), ("method", pa.string()), ("task", pa.string()), ("seed", pa.int64()),
     ("kind", pa.string()), ("step", pa.int64()), ("dev_score", pa.float64()), ("train_loss", pa.float64()),
     ("lr", pa.float64()), ("flipped", pa.int64()), ("loss_before", pa.float64()), ("loss_after", pa.float64())])


def _opt_int(v: Any) -> int | None:
    return None if v in (None, "None", "") else int(float(v))


def _opt_float(v: Any) -> float | None:
    return None if v in (None, "None", "") else float(v)


def collect(spec: SweepSpec, tracker: Tracker) -> tuple[list[dict], list[dict]]:
    trials, curves = [], []
    for key, run in sorted(tracker.trial_runs().items()):
        tags = run.data.tags
        result = tracker.result(run) if run.info.status == "FINISHED" else None
        row: dict[str, Any] = {f.name: None for f in TRIALS_SCHEMA}
        row.update(sweep=spec.name, trial_key=key, method=tags.get("method"), task=tags.get("task"),
                   seed=_opt_int(tags.get("seed")), sparsity=_opt_float(tags.get("sparsity")),
                   perturbation=_opt_int(tags.get("perturbation")), model=tags.get("model"),
                   status=run.info.status, error=tags.get("error"), mlflow_run_id=run.info.run_id)
        if result:
            row.update({k: result.get(k) for k in row if k in result and k not in ("status",)})
            row["n_projections"] = len(result.get("projections", []))
        trials.append(row)
        base = {"trial_key": key, "method": row["method"], "task": row["task"], "seed": row["seed"]}
        points: dict[int, dict] = {}
        for metric in ("dev_score", "train_loss", "lr"):
            for m in tracker.history(run.info.run_id, metric):  # a resumed trial may log a step twice: last wins
                points.setdefault(m.step, {"step": m.step})[metric] = m.value
        for step in sorted(points):
            curves.append({**{f.name: None for f in CURVES_SCHEMA}, **base, "kind": "eval", **points[step]})
        for p in (result or {}).get("projections", []):
            curves.append({**{f.name: None for f in CURVES_SCHEMA}, **base, "kind": "projection",
                           "step": p["step"], "flipped": p["flipped"],
                           "loss_before": p["loss_before"], "loss_after": p["loss_after"]})
    return trials, curves


def export(spec: SweepSpec, out: Path) -> tuple[Path, Path]:
    tracker = Tracker(spec.resolved_tracking_uri, spec.name, spec.sweep_dir)
    tracker.check()
    trials, curves = collect(spec, tracker)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "trials.parquet", out / "curves.parquet"
    pq.write_table(pa.Table.from_pylist(trials, schema=TRIALS_SCHEMA), paths[0])
    pq.write_table(pa.Table.from_pylist(curves, schema=CURVES_SCHEMA), paths[1])
    return paths
