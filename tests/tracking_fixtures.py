"""Synthetic sweeps for tests of the tracking layer: a real spec, real MLflow (SQLite or a server), and
trial results shaped like ``trainables.loop`` makes them, without training anything."""
from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator import records
from orchestrator.spec import SweepSpec, spec_from_dict

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def make_spec(folder: Path, data_dir: Path | None = None, tracking_uri: str | None = None, **grid) -> SweepSpec:
    data = {"name": "t", "output_dir": str(folder / "runs"),
            "grid": {"methods": ["sam", "bitfit"], "tasks": ["CB", "RTE"], "seeds": [0, 1], **grid},
            "training": {"max_steps": 9, "eval_every": 3}, "methods": {"sam": {"lr": 1e-2}}}
    if data_dir is not None:
        data["data"] = {"dir": str(data_dir)}
    if tracking_uri:
        data["tracking_uri"] = tracking_uri
    return spec_from_dict(data)


def trial_dict(cfg) -> dict[str, Any]:
    """What Tune's config carries for a trial (and the record keeps)."""
    return {**cfg.model_dump(mode="json"), "trial_key": cfg.key}


def fake_result(cfg, score: float | None = None, steps=(3, 6, 9), **extra) -> dict[str, Any]:
    rng = random.Random(cfg.key)
    score = rng.uniform(0.4, 0.9) if score is None else score
    curve = [{"step": s, "dev_score": score - 0.01 * (len(steps) - i), "train_loss": 1.0 / (i + 1), "lr": 1e-3}
             for i, s in enumerate(steps)]
    out = {"trial_key": cfg.key, "method": cfg.method, "task": cfg.task, "seed": cfg.seed, "sparsity": cfg.sparsity,
           "perturbation": cfg.perturbation, "model": cfg.model, "status": "FINISHED", "metric": "accuracy",
           "test_score": score, "dev_score": score + 0.01, "train_score": score + 0.05, "test_accuracy": score,
           "dev_accuracy": score + 0.01, "train_accuracy": score + 0.05, "majority_dev_score": 0.5,
           "majority_test_score": 0.45, "steps": steps[-1], "best_step": steps[-1], "resumed_from_step": None,
           "eligible_params": 1000, "trainable_params": 10, "changed_params": 10, "added_params": 0,
           "device": "cpu", "n_train": 200, "n_dev": 22, "n_test": 56, "projections": [], "curve": curve,
           "wall_s": 1.5, "setup_s": 0.1, "train_s": 1.0, "eval_s": 0.3, "checkpoint_s": 0.1}
    out.update(extra)
    return out


def record_finished(spec: SweepSpec, cfg, result: dict[str, Any], synced: bool = True) -> None:
    records.update(spec.sweep_dir, cfg.key, status="FINISHED", trial=trial_dict(cfg), result=result, error=None,
                   synced=synced)


def start_server(db: Path, artifacts: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination",
                             str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import urllib.request

    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise AssertionError("mlflow server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    import os
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
