"""Everything that knows MLflow: one experiment per sweep, a parent run per sweep, one child run per
trial key (reused on retry, resume and rerun, never duplicated). Only the driver calls this."""
from __future__ import annotations

import json
import os
import subprocess
from functools import cached_property
from pathlib import Path
from typing import Any

ROLE_TRIAL, ROLE_SWEEP = "trial", "sweep"
COORDS = ("method", "task", "seed", "sparsity", "perturbation", "model")


class TrackingError(RuntimeError):
    pass


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    def __init__(self, uri: str, sweep: str, sweep_dir: Path):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # the driver must not hang on a dead server: few retries, short timeouts (the records keep the rest)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri, self.sweep, self.sweep_dir = uri, sweep, Path(sweep_dir)
        self._run_ids: dict[str, str] = {}

    def __getstate__(self):  # Tune pickles callbacks with the experiment: no client inside
        return {"uri": self.uri, "sweep": self.sweep, "sweep_dir": self.sweep_dir, "_run_ids": {}}

    @cached_property
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def check_reachable(self) -> None:
        """Without writing anything: a server URI answers /health, a SQLite file's folder can be made."""
        if self.uri.startswith(("http://", "https://")):
            import urllib.request

            try:
                urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=5).read()
            except OSError as exc:
                raise TrackingError(f"tracking store {self.uri!r} is unreachable: {exc}") from None
        elif self.uri.startswith("sqlite:///"):
            folder = Path(self.uri.removeprefix("sqlite:///")).parent
            probe = folder
            while not probe.exists():
                probe = probe.parent
            if not os.access(probe, os.W_OK):
                raise TrackingError(f"tracking store {self.uri!r}: cannot write in {probe}")

    def check(self) -> None:
        """Fail early, with the URI in the message, if the store cannot be reached."""
        try:
            self.experiment_id
        except Exception as exc:  # noqa: BLE001 - any failure here means "unreachable"
            self.__dict__.pop("experiment_id", None)
            raise TrackingError(f"tracking store {self.uri!r} is unreachable: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc

    @cached_property
    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.sweep)
        if exp is not None:
            return exp.experiment_id
        artifacts = (self.sweep_dir / "mlartifacts").resolve().as_uri() if "://" not in self.uri or \
            self.uri.startswith("sqlite") else None
        return self.client.create_experiment(self.sweep, artifact_location=artifacts)

    def _search(self, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000,
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    @cached_property
    def parent_run_id(self) -> str:
        found = self._search(f"tags.role = '{ROLE_SWEEP}'")
        if found:
            return found[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=self.sweep,
                                     tags={"role": ROLE_SWEEP, "sweep": self.sweep, "git_commit": git_commit()})
        return run.info.run_id

    def trial_runs(self) -> dict[str, Any]:
        """trial_key -> the MLflow run of that key."""
        return {r.data.tags["trial_key"]: r for r in self._search(f"tags.role = '{ROLE_TRIAL}'")}

    def statuses(self) -> dict[str, str]:
        return {k: r.info.status for k, r in self.trial_runs().items()}

    def run_id(self, key: str) -> str | None:
        if key not in self._run_ids:
            found = self._search(f"tags.role = '{ROLE_TRIAL}' and tags.trial_key = '{key}'")
            if found:
                self._run_ids[key] = found[0].info.run_id
        return self._run_ids.get(key)

    def start_trial(self, key: str, trial: dict[str, Any], device: str = "") -> str:
        """The child run of this key, created once; a retried or resumed trial gets the same run."""
        run_id = self.run_id(key)
        if run_id is None:
            tags = {"role": ROLE_TRIAL, "trial_key": key, "sweep": self.sweep, "mlflow.parentRunId": self.parent_run_id,
                    "git_commit": git_commit(), **{c: str(trial.get(c)) for c in COORDS}}
            name = f"{trial['method']}-{trial['task']}-s{trial['seed']}-{key}"
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            self.client.log_batch(run_id, params=_params(trial))
            self._run_ids[key] = run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        if device:
            self.client.set_tag(run_id, "device", device)
        return run_id

    def log_eval(self, key: str, point: dict[str, float]) -> None:
        from mlflow.entities import Metric

        step, ts = int(point["step"]), int(point.get("timestamp", 0) * 1000) or _now_ms()
        metrics = [Metric(k, float(point[k]), ts, step) for k in ("dev_score", "train_loss", "lr") if k in point]
        self.client.log_batch(self.run_id(key), metrics=metrics)

    def finish(self, key: str, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        run_id = self.run_id(key)
        ts = _now_ms()
        numeric = {k: float(v) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in COORDS}
        self.client.log_batch(run_id, metrics=[Metric(f"final_{k}", v, ts, 0) for k, v in numeric.items()])
        self.client.log_dict(run_id, result, "result.json")
        self.client.set_terminated(run_id, "FINISHED")

    def fail(self, key: str, error: str) -> None:
        run_id = self.run_id(key)
        self.client.set_tag(run_id, "error", error[-4000:])
        self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(run_id, "FAILED")

    def result(self, run) -> dict[str, Any] | None:
        """The result.json artifact of a finished run."""
        try:
            import mlflow.artifacts

            return mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/result.json")
        except Exception:  # noqa: BLE001 - a run without the artifact has no result
            return None

    def history(self, run_id: str, metric: str) -> list:
        return self.client.get_metric_history(run_id, metric)

    def end_sweep(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_run_id, status)


def _params(trial: dict[str, Any], prefix: str = "") -> list:
    from mlflow.entities import Param

    out = []
    for k, v in trial.items():
        if k == "fault":
            continue
        if isinstance(v, dict):
            out.extend(_params(v, f"{prefix}{k}."))
        else:
            out.append(Param(f"{prefix}{k}", json.dumps(v) if not isinstance(v, str) else v))
    return out


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
