"""Synthetic sweeps for tests of the tracking layer: a real spec, real MLflow (SQLite or a server), records
of finished trials; the results themselves come from benchmarks/synthetic_trials.py (shared with benchmarks)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.synthetic_trials import fake_result, trial_dict
from orchestrator import records, sweep
from orchestrator.spec import SweepSpec, spec_from_dict


def make_spec(folder: Path, data_dir: Path | None = None, tracking_uri: str | None = None, name: str = "t",
              **grid) -> SweepSpec:
    data = {"name": name, "output_dir": str(folder / "runs"),
            "grid": {"methods": ["sam", "bitfit"], "tasks": ["CB", "RTE"], "seeds": [0, 1], **grid},
            "training": {"max_steps": 9, "eval_every": 3}, "methods": {"sam": {"lr": 1e-2}}}
    if data_dir is not None:
        data["data"] = {"dir": str(data_dir)}
    if tracking_uri:
        data["tracking_uri"] = tracking_uri
    return spec_from_dict(data)


def record_finished(spec: SweepSpec, cfg, result: dict[str, Any], synced: bool = True) -> None:
    records.update(spec.sweep_dir, cfg.key, status="FINISHED", trial=trial_dict(cfg), result=result, error=None,
                   synced=synced)


def finish_all(spec: SweepSpec, fail: int = 0):
    """Every trial of ``spec`` tracked and recorded as a driver would: the first ``fail`` FAILED, the rest FINISHED
    with a synthetic result. Returns the tracker."""
    tr = sweep.tracker_for(spec)
    for i, cfg in enumerate(spec.trials()):
        tr.start_trial(cfg.key, trial_dict(cfg))
        if i < fail:
            tr.fail(cfg.key, "RuntimeError: boom")
            records.update(spec.sweep_dir, cfg.key, status="FAILED", trial=trial_dict(cfg), error="boom")
        else:
            result = fake_result(cfg)
            tr.finish(cfg.key, result)
            record_finished(spec, cfg, result)
    return tr
