"""Everything that knows MLflow: one experiment per sweep, a parent run per sweep, one live child run per
trial key. Only the driver calls this.

Attempts: a trial whose run is still RUNNING (a Tune retry, a resumed driver) keeps logging into that run.
A key whose run already ended (``--force``, ``rerun-failed``, a rerun after an outage) gets a new run, the
next attempt; the old run is tagged ``role=superseded`` and nested under the new one, so the live run never
carries an old attempt's metric history, ``error`` tag or ``error.txt``, and the old attempt stays readable.
"""
from __future__ import annotations

import json
import os
from contextlib import closing, contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from .identity import code_version, git_commit, has_history, sweep_id
from .spec import SpecError

ROLE_TRIAL, ROLE_SWEEP, ROLE_SUPERSEDED = "trial", "sweep", "superseded"
TAG_STOPPED = "stopped"  # on a KILLED run of a trial that `peft-sweep stop` left resumable
TAG_IN_GRID = "in_grid"  # "true"/"false": whether the spec's grid holds the run's trial (the export's in_grid)
COORDS = ("method", "task", "seed", "sparsity", "perturbation", "model", "variant")
SERIES = ("dev_score", "train_loss", "lr")  # logged per evaluation, with its step
MAX_TAG = 8000  # characters of a tag's value MLflow keeps (mlflow/utils/validation.py)
RESULT_TAG = "result"  # every scalar result field as JSON: `export` reads a sweep from one paged listing
# MLflow 3's UI reads this experiment tag to pick its view (enum ExperimentKind in the UI bundle,
# mlflow/server/js/build/static/js/main.*.js: CUSTOM_MODEL_DEVELOPMENT="custom_model_development")
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# the tag alone did not make 3.17 open the training view; this fragment does
RUNS_VIEW = "#/experiments/{id}/runs?workflowType=machine_learning"
# the sweep folder an experiment belongs to (identity.json's sweep_id, and where the folder was when it was made):
# experiments are found by the sweep's name, and two folders of one name in one store mixed their runs
SWEEP_ID_TAG, SWEEP_DIR_TAG = "peft_sweep.sweep_id", "peft_sweep.sweep_dir"
OUTAGE_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "SERVICE_UNDER_MAINTENANCE",
                "WORKSPACE_TEMPORARILY_UNAVAILABLE"}
_SPLIT_COMPONENTS = ("accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman")


class TrackingError(RuntimeError):
    pass


def check_server(uri: str) -> None:
    """An MLflow server answers /health within 5 s: MLflow's own client retries a refused connection for
    minutes and then reports the run it asked for as missing."""
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
    except OSError as exc:
        raise TrackingError(f"tracking store {uri!r} is unreachable: {exc}") from None


def check_readable(uri: str) -> None:
    """A store to read from is there, without writing: a server answers, a SQLite file exists (MLflow would
    create an empty store, folders included, and then find nothing in it)."""
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    elif uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(f"tracking store {uri!r}: no such file {uri.removeprefix('sqlite:///')!r} (a sweep's "
                            "own store is SWEEP_DIR/mlflow.db)")


def refusal(uri: str, exc: BaseException) -> str | None:
    """What to do when a server answers but refuses us (it is reachable: "unreachable" sent users to the network):
    MLflow 3 accepts only localhost and private IPs as the Host header unless started with --allowed-hosts, and a
    server with authentication wants credentials. None for other errors."""
    text = str(exc)
    if "Invalid Host header" in text:
        host = uri.split("://", 1)[-1].split("/", 1)[0]
        return (f"tracking store {uri!r} refuses the host name {host!r} (HTTP 403, Invalid Host header: by default "
                f"MLflow 3 serves only localhost and private IP addresses); start the server with --allowed-hosts "
                f"{host} (or MLFLOW_SERVER_ALLOWED_HOSTS={host}), or use its private IP address in tracking_uri")
    if "error code 401" in text or "error code 403" in text:
        return (f"tracking store {uri!r} refuses our requests ({text.splitlines()[0][:160]}); for a server with "
                "authentication set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
                "where the driver runs (for `ray job submit`: configs/cluster/runtime_env.yaml)")
    return None


def is_outage(exc: BaseException) -> bool:
    """True for errors that mean "the store cannot be reached or is failing", never for a bug in our code
    (a TypeError is a TypeError even while the server is down)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, OSError):
        return True
    try:
        import requests

        if isinstance(exc, requests.RequestException):
            return True
    except ImportError:  # pragma: no cover - mlflow depends on requests
        pass
    try:
        from sqlalchemy.exc import DBAPIError, OperationalError

        if isinstance(exc, (OperationalError, DBAPIError)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, MlflowException) and exc.error_code in OUTAGE_CODES


def plain(value: Any) -> str:
    """A param or tag value as a user would type it: 0.005, true, sam (not "0.005", not null)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, sort_keys=True)


def is_metric(field: str) -> bool:
    """What a user charts: scores and their parts, losses, costs (time, memory, parameters trained).
    Counts and identifiers (best_step, eligible_params, split sizes) are tags instead."""
    return (field.endswith("_score") or field.endswith("_s") or "loss" in field or "mem" in field
            or any(field == f"{s}_{c}" for s in ("test", "dev", "train") for c in _SPLIT_COMPONENTS)
            or (field.endswith("_params") and field != "eligible_params"))


def metric_name(field: str) -> str:
    return f"final_{field}" if field in SERIES else field  # the per-step series keeps the plain name


def scalar_fields(result: dict[str, Any]) -> dict[str, Any]:
    """Result fields that fit in a table cell (lists and dicts, e.g. the curve or a mask anatomy, do not)."""
    return {k: v for k, v in result.items() if v is None or isinstance(v, (str, int, float, bool))}


def trial_params(trial: dict[str, Any]) -> dict[str, str]:
    """The settings a trial really used, defaults filled in: one effective learning rate, the data folder
    actually read, the method's parameters. No None values (MLflow would show them as the text "null")."""
    from trainables import TrialConfig
    from trainables.tasks import resolve_data_dir

    cfg = TrialConfig.model_validate({k: v for k, v in trial.items() if k != "trial_key"})
    method_params = cfg.params().model_dump(mode="json")
    out: dict[str, Any] = {c: trial.get(c) for c in COORDS}
    method_params.pop("lr", None)
    out["lr"] = cfg.effective_lr()  # methods.<m>.lr, else training.lr, else the method's default_lr
    out.update({f"training.{k}": v for k, v in cfg.training.model_dump(mode="json").items() if k != "lr"})
    out.update({f"method.{k}": v for k, v in method_params.items()})
    out.update({f"data.{k}": v for k, v in cfg.data.model_dump(mode="json").items() if k not in ("dir", "cache_dir")})
    data_dir = resolve_data_dir(cfg.data.dir)
    out["data.source"] = str(data_dir) if data_dir is not None else "huggingface-hub"
    return {k: plain(v) for k, v in out.items() if v is not None}


def run_name(trial: dict[str, Any]) -> str:
    """Every coordinate that can vary in a sweep, e.g. sam-CB-s0-p0.005-k1 (variant replaces the method)."""
    parts = [str(trial.get("variant") or trial["method"]), str(trial["task"]), f"s{trial['seed']}"]
    if trial.get("sparsity") is not None:
        parts.append(f"p{plain(trial['sparsity'])}")
    if trial.get("perturbation") is not None:
        parts.append(f"k{trial['perturbation']}")
    return "-".join(parts)


SERVER_SCHEMES = ("http", "https", "databricks")  # a tracking server with an artifact store of its own


def artifact_root(uri: str, sweep_dir: Path) -> str | None:
    """Where a new experiment keeps its artifacts: the sweep folder's ``mlartifacts``, unless a tracking server
    serves them. Left unset with a database URI (postgresql://, mysql://, ...), MLflow takes ./mlruns of the
    current folder (mlflow/tracking/_tracking_service/utils.py), which under `ray job submit` is the job's
    temporary working dir: every model delta, report and error.txt would be lost with the job."""
    return None if uri.split("://", 1)[0] in SERVER_SCHEMES else (sweep_dir / "mlartifacts").resolve().as_uri()


UPLOAD_TIMEOUT_S = 600  # a model delta through a server with --artifacts-destination: the server writes it first


@contextmanager
def patient_uploads():
    """MLflow's HTTP timeout raised to UPLOAD_TIMEOUT_S for one upload (MLflow reads the variable at each call,
    mlflow/utils/rest_utils.py): the driver's short one (10 s, so a dead server cannot hang it) expired on every
    retry of a large full-model delta while the server wrote it on."""
    before = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(UPLOAD_TIMEOUT_S, int(float(before or 0))))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_TIMEOUT", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = before


class Tracker:
    def __init__(self, uri: str, sweep: str, sweep_dir: Path):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # the driver must not hang on a dead server: few retries, short timeouts (the records keep the rest)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # else every run ended on a server prints two "View run/experiment at" lines (and costs a get_run)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        import logging

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial ... tables"
        self.uri, self.sweep, self.sweep_dir = uri, sweep, Path(sweep_dir)
        self._run_ids: dict[str, str] = {}
        self._trials: dict[str, dict[str, Any]] = {}  # to create a run that an outage kept from starting
        self.pending_starts: dict[str, bool] = {}  # starts the store missed: key -> whether it starts over
        self._logged_to: dict[str, int] = {}  # a reopened run's last logged step: its replayed steps are not logged

    def __getstate__(self):  # Tune pickles callbacks with the experiment: no client inside
        return {"uri": self.uri, "sweep": self.sweep, "sweep_dir": self.sweep_dir, "_run_ids": {}, "_trials": {},
                "pending_starts": {}, "_logged_to": {}}

    @cached_property
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def check_reachable(self) -> None:
        """Without writing anything: a server URI answers /health, a SQLite file's folder can be made."""
        if self.uri.startswith(("http://", "https://")):
            check_server(self.uri)
        elif self.uri.startswith("sqlite:///"):
            folder = Path(self.uri.removeprefix("sqlite:///")).parent
            probe = folder
            while not probe.exists():
                probe = probe.parent
            if not os.access(probe, os.W_OK):
                raise TrackingError(f"tracking store {self.uri!r}: cannot write in {probe}")

    def check_owner(self) -> None:
        """Without writing: refuse when the store's experiment of this name belongs to another sweep folder. A SQLite
        file that does not exist yet is not opened (MLflow would create it)."""
        if self.uri.startswith("sqlite:///") and not Path(self.uri.removeprefix("sqlite:///")).is_file():
            return
        try:
            exp = self.client.get_experiment_by_name(self.sweep)
        except Exception as exc:  # noqa: BLE001 - any failure here means the store cannot be used
            raise TrackingError(self._unusable(exc, "cannot be read")) from exc
        if exp is not None and (conflict := self._owner_conflict(exp)):
            raise TrackingError(conflict)

    def _unusable(self, exc: BaseException, what: str) -> str:
        """The store failed us: what to do where it refused (``refusal``), else ``what`` with the error's first line."""
        return refusal(self.uri, exc) or (f"tracking store {self.uri!r} {what}: {type(exc).__name__}: "
                                          f"{str(exc).splitlines()[0] if str(exc) else ''}")

    def _mine(self) -> str | None:
        try:
            return sweep_id(self.sweep_dir)
        except SpecError:  # a damaged identity.json: the writers say so; a reader goes on without the id
            return None

    def _own_store(self) -> bool:
        """The folder's own SQLite store (SWEEP_DIR/mlflow.db): its experiment is this folder's, whatever its tag
        says (an identity.json deleted to be recorded anew draws a new id)."""
        return self.uri.startswith("sqlite:///") and \
            Path(self.uri.removeprefix("sqlite:///")).resolve() == (self.sweep_dir / "mlflow.db").resolve()

    def _owner_conflict(self, exp) -> str | None:
        """Why ``exp`` (found by this sweep's name) is another sweep folder's; None where it is this one's. Another
        folder's: tagged with another id, unless tagged for this very path and this folder has not run (its first
        run failed after the experiment was made, and the folder was removed; or the folder was deleted to start
        over); untagged (made before experiments named their folder) with runs, when this folder has not run."""
        if self._own_store():
            return None
        theirs, mine = exp.tags.get(SWEEP_ID_TAG), self._mine()
        if theirs is not None and theirs == mine:
            return self._copy_conflict(exp, mine)
        if theirs is not None and exp.tags.get(SWEEP_DIR_TAG) == str(self.sweep_dir) and not has_history(
                self.sweep_dir):
            return None
        if theirs is None and (has_history(self.sweep_dir) or not self.client.search_runs(
                [exp.experiment_id], max_results=1)):
            return None
        where = f"another sweep folder ({exp.tags.get(SWEEP_DIR_TAG, 'path not recorded')})" if theirs is not None else \
            "a sweep folder made before experiments named their folder"
        return (f"the MLflow experiment {self.sweep!r} in {self.uri} belongs to {where}, not to {self.sweep_dir}: "
                f"the two would mix their runs. Give this sweep its own name (--set name={self.sweep}-2), or another "
                "tracking store (tracking_uri); to resume that sweep, run its own folder's spec.yaml")

    def _copy_conflict(self, exp, mine: str) -> str | None:
        """Why this folder may not use ``exp`` though it holds the experiment's sweep_id: it is a copy (``cp -r``) of
        the folder the experiment names, which still holds the sweep there, and the two would write trials of the
        same keys into one experiment. A move (the original gone) or the same folder by another path (a link, a
        mount) is no copy."""
        original = exp.tags.get(SWEEP_DIR_TAG)
        if not original or original == str(self.sweep_dir):
            return None
        try:
            if Path(original).samefile(self.sweep_dir) or sweep_id(Path(original)) != mine:
                return None
        except (OSError, SpecError):  # gone, or no readable sweep there: moved
            return None
        return (f"{self.sweep_dir} is a copy of {original} (same sweep_id): both would write into the MLflow "
                f"experiment {self.sweep!r}. If it was moved, remove the original; to run the copy apart, --set "
                f"tracking_uri=sqlite:///{self.sweep_dir}/mlflow.db")

    def check(self) -> None:
        """Fail early, with the URI in the message, if the store cannot be reached."""
        try:
            self.experiment_id
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here means "unreachable"
            self.__dict__.pop("experiment_id", None)
            raise TrackingError(self._unusable(exc, "is unreachable")) from exc

    @cached_property
    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.sweep)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise TrackingError(
                f"the MLflow experiment {self.sweep!r} (id {exp.experiment_id}) in {self.uri} was deleted; restore it "
                f"with `mlflow experiments restore --experiment-id {exp.experiment_id}` (MLFLOW_TRACKING_URI="
                f"{self.uri}), or give the sweep another name (name: ...) to start a new experiment")
        mine = self._mine()
        owner = {SWEEP_ID_TAG: mine, SWEEP_DIR_TAG: str(self.sweep_dir)} if mine else {}
        if exp is not None:
            if conflict := self._owner_conflict(exp):
                raise TrackingError(conflict)
            if exp.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
            if owner and exp.tags.get(SWEEP_ID_TAG) != mine:  # untagged, or re-adopted (see _owner_conflict)
                for key, value in owner.items():
                    self.client.set_experiment_tag(exp.experiment_id, key, value)
            return exp.experiment_id
        return self.client.create_experiment(self.sweep, artifact_location=artifact_root(self.uri, self.sweep_dir),
                                             tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING, **owner})

    def follow_move(self) -> str | None:
        """Point the artifact paths of the sweep folder's own SQLite store at the folder where it is now; returns
        the folder they named before, or None if nothing moved. MLflow fixes an experiment's artifact root and each
        run's artifact URI when it creates them and has no API to move them (mlflow/mlflow#3144, #8226), so a sweep
        folder moved to another path or machine would write new artifacts (model deltas, the report) to the old
        path, outside the folder. Only the writers call this (`run`, `sync` with no driver alive): the same folder
        mounted at another path elsewhere must not repoint a store a running driver uses."""
        import sqlite3

        if not self._own_store():
            return None  # a store of the user's choosing: its paths are theirs
        db = Path(self.uri.removeprefix("sqlite:///"))
        exp = self.client.get_experiment(self.experiment_id)
        old, new = exp.artifact_location, (self.sweep_dir / "mlartifacts").resolve().as_uri()
        if old == new or not old.startswith("file://") or not old.endswith("/mlartifacts"):
            return None
        # what this project logs holds its paths in these columns (run artifacts; logged models' for completeness);
        # it logs no traces, datasets or registered models, whose tables keep URIs of their own
        try:
            with closing(sqlite3.connect(db, timeout=30)) as con, con:
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                            (new, int(exp.experiment_id)))
                for table, column in (("runs", "artifact_uri"), ("logged_models", "artifact_location")):
                    con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE experiment_id = ? "
                                f"AND substr({column}, 1, ?) = ?",
                                (new, len(old) + 1, int(exp.experiment_id), len(old), old))
        except sqlite3.Error as exc:
            raise TrackingError(f"{db}: could not point its artifact paths from {old} to {new}: {exc}") from None
        return old.removeprefix("file://").removesuffix("/mlartifacts")

    def runs_url(self) -> str:
        """Where to browse the runs: the server's URL, or `mlflow ui`'s default one for a SQLite file."""
        base = self.uri.rstrip("/") if self.uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
        return f"{base}/{RUNS_VIEW.format(id=self.experiment_id)}"

    def search(self, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000,
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    # ------------------------------------------------------------------ the sweep's parent run
    @cached_property
    def parent_run_id(self) -> str:
        found = self.search(f"tags.role = '{ROLE_SWEEP}'")
        if found:
            return found[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=self.sweep,
                                     tags={"role": ROLE_SWEEP, "sweep": self.sweep})
        return run.info.run_id

    def start_sweep(self, params: dict[str, Any], spec_file: Path | None = None) -> None:
        """Mark the parent RUNNING and give it the spec as params (a param, once logged, cannot change: a
        changed spec keeps the first values as params; spec.yaml, logged each time, has the current one)."""
        from mlflow.entities import Param

        run = self.client.get_run(self.parent_run_id)
        new = [Param(k, plain(v)) for k, v in params.items() if v is not None and k not in run.data.params]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.parent_run_id, params=new[i:i + 100])
        if spec_file is not None:
            self.client.log_artifact(self.parent_run_id, str(spec_file))
        # tags (unlike params) follow the latest run: its code; identity.json keeps every run's
        self.client.set_tag(self.parent_run_id, "code_version", code_version())
        self.client.set_tag(self.parent_run_id, "git_commit", git_commit() or "none (no .git)")
        self.client.update_run(self.parent_run_id, status="RUNNING")

    def parent_status(self) -> str:
        return self.client.get_run(self.parent_run_id).info.status

    def end_sweep(self, status: str = "FINISHED", metrics: dict[str, float] | None = None,
                  tags: dict[str, Any] | None = None, artifacts: dict[str, Path] | None = None) -> None:
        """The sweep's answer on the parent run: metrics, tags, artifact folders, then its final status."""
        from mlflow.entities import Metric, RunTag

        run_id = self.parent_run_id
        ts = _now_ms()
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in (metrics or {}).items()],
                              tags=[RunTag(k, plain(v)) for k, v in (tags or {}).items()])
        for path, folder in (artifacts or {}).items():
            if Path(folder).is_dir():
                self.client.log_artifacts(run_id, str(folder), path)
        self.client.set_terminated(run_id, status)

    # ------------------------------------------------------------------ one child run per trial key
    def trial_runs(self) -> dict[str, Any]:
        """trial_key -> the live MLflow run of that key (one paged listing)."""
        return {r.data.tags["trial_key"]: r for r in self.search(f"tags.role = '{ROLE_TRIAL}'")}

    def tag_grid(self, grid: set[str]) -> int:
        """Tag each trial run ``in_grid`` true or false by whether the spec's grid holds its key (a run is made
        with true; runs of an older version without the tag get it once). Returns how many turned false."""
        out = 0
        for key, run in self.trial_runs().items():
            want = "true" if key in grid else "false"
            if run.data.tags.get(TAG_IN_GRID) != want:
                self.client.set_tag(run.info.run_id, TAG_IN_GRID, want)
                out += want == "false"
        return out

    def statuses(self) -> dict[str, str]:
        return {k: r.info.status for k, r in self.trial_runs().items()}

    def _live_run(self, key: str):
        found = self.search(f"tags.role = '{ROLE_TRIAL}' and tags.trial_key = '{key}'")
        return found[0] if found else None

    def run_id(self, key: str) -> str | None:
        if key not in self._run_ids:
            run = self._live_run(key)
            if run is not None:
                self._run_ids[key] = run.info.run_id
        return self._run_ids.get(key)

    def start_trial(self, key: str, trial: dict[str, Any], device: str = "", over: bool = False,
                    version: str | None = None) -> str:
        """The run this attempt logs into: the key's run if it is still RUNNING (a retry or a resumed
        driver) or was stopped to resume, else a new run, the next attempt, with the ended one nested under it.
        ``over``: the trial starts over from step 0 (its checkpoints are not there to resume): a new attempt in
        any case, so no run holds two histories of the same steps. ``version``: the code the trial ran with, where
        it is not this driver's (a run rebuilt from its record)."""
        from mlflow.entities import Param

        self._trials[key] = trial
        old = self._live_run(key)
        resumable = old is not None and (old.info.status == "RUNNING" or old.data.tags.get(TAG_STOPPED) == "true")
        if resumable and not over:
            run_id = old.info.run_id  # a retry, a resumed driver, or a trial `peft-sweep stop` left resumable
            if old.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
                self.client.delete_tag(run_id, TAG_STOPPED)
            # it resumes from its last checkpoint, which can be older than the last step this run logged
            self._logged_to[key] = max((m.step for m in self.history(run_id, "dev_score")), default=-1)
        else:
            self._logged_to.pop(key, None)
            attempt = 1
            if resumable:  # an attempt that did not finish, and will not be reopened
                if old.data.tags.get(TAG_STOPPED):
                    self.client.delete_tag(old.info.run_id, TAG_STOPPED)
                if old.info.status == "RUNNING":
                    self.client.set_terminated(old.info.run_id, "KILLED")
            if old is not None:  # retag first: a crash in between leaves no key with two live runs
                attempt = int(old.data.tags.get("attempt", "1")) + 1
                self.client.set_tag(old.info.run_id, "role", ROLE_SUPERSEDED)
            tags = {"role": ROLE_TRIAL, "trial_key": key, "sweep": self.sweep, "mlflow.parentRunId": self.parent_run_id,
                    "code_version": version or code_version(), "attempt": str(attempt), TAG_IN_GRID: "true",
                    **{c: plain(trial[c]) for c in COORDS if trial.get(c) is not None}}
            if old is not None:
                tags["previous_run_id"] = old.info.run_id
            run_id = self.client.create_run(self.experiment_id, run_name=run_name(trial), tags=tags).info.run_id
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in trial_params(trial).items()])
            if old is not None:  # every earlier attempt nests right under the latest: one level, not a chain
                earlier = self.search(f"tags.trial_key = '{key}' and tags.role = '{ROLE_SUPERSEDED}'")
                for run in {r.info.run_id: r for r in [*earlier, old]}.values():
                    self.client.set_tag(run.info.run_id, "mlflow.parentRunId", run_id)
                self.client.set_tag(old.info.run_id, "superseded_by", run_id)
        self._run_ids[key] = run_id
        self.pending_starts.pop(key, None)
        if device:
            self.client.set_tag(run_id, "device", device)
        return run_id

    def _ensure(self, key: str, trial: dict[str, Any] | None) -> str:
        """The key's run; created now if the store was down when the trial started (then as that start meant:
        a trial that starts over gets a new attempt, not the key's old run)."""
        run_id = None if key in self.pending_starts else self.run_id(key)
        if run_id is not None:
            return run_id
        trial = trial or self._trials.get(key)
        if trial is None:
            raise TrackingError(f"trial {key} has no MLflow run and no config to create one")
        return self.start_trial(key, trial, over=self.pending_starts.get(key, False))

    def log_eval(self, key: str, point: dict[str, float], trial: dict[str, Any] | None = None) -> None:
        from mlflow.entities import Metric

        step, ts = int(point["step"]), int(point.get("timestamp", 0) * 1000) or _now_ms()
        if step <= self._logged_to.get(key, -1):  # replayed after a resume: logged already (a resume is bit-exact)
            return
        metrics = [Metric(k, float(point[k]), ts, step) for k in SERIES if point.get(k) is not None]
        self.client.log_batch(self._ensure(key, trial), metrics=metrics)

    def fill_curve(self, key: str, curve: list[dict[str, Any]], trial: dict[str, Any] | None = None) -> int:
        """Log the evaluations MLflow missed (an outage): only the steps it lacks. Returns how many."""
        run_id = self._ensure(key, trial)
        logged = {m.step for m in self.history(run_id, "dev_score")}
        missing = [p for p in curve if int(p["step"]) not in logged]
        for point in missing:
            self.log_eval(key, point, trial)
        return len(missing)

    def finish(self, key: str, result: dict[str, Any], trial: dict[str, Any] | None = None,
               tags: dict[str, Any] | None = None) -> None:
        """Final metrics (what a user charts), counts and identifiers as tags, every scalar field in the
        ``result`` tag (where it fits in a tag), result.json as an artifact. Logging it twice adds no second metric
        value."""
        from mlflow.entities import Metric, RunTag

        run_id = self._ensure(key, trial)
        fields = scalar_fields(result)
        have = self.client.get_run(run_id).data.metrics
        ts = _now_ms()
        metrics = [Metric(metric_name(k), float(v), ts, 0) for k, v in fields.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and is_metric(k)
                   and have.get(metric_name(k)) != float(v)]
        run_tags = {f"result.{k}": v for k, v in fields.items()
                    if v is not None and k not in (*COORDS, "trial_key", "status") and not (
                        isinstance(v, (int, float)) and not isinstance(v, bool) and is_metric(k))}
        whole = json.dumps(fields, default=str)
        if len(whole) <= MAX_TAG:  # cut, it would not parse: ``result`` reads result.json then
            run_tags[RESULT_TAG] = whole
        if fields.get("device"):
            run_tags["device"] = result.get("device_name") or fields["device"]
        run_tags.update(tags or {})
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, plain(v)[:MAX_TAG]) for k, v in run_tags.items()])
        self.client.log_dict(run_id, result, "result.json")
        self.client.set_terminated(run_id, "FINISHED")

    def log_model(self, key: str, folder: Path, trial: dict[str, Any] | None = None) -> None:
        """The trial's fine-tuned model as a delta (``model/delta.safetensors`` + ``model/meta.json``):
        ``peft-sweep load RUN_ID`` rebuilds it."""
        run_id = self._ensure(key, trial)
        with patient_uploads():
            self.client.log_artifacts(run_id, str(folder), "model")

    def stop_trial(self, key: str) -> None:
        """A trial stopped by `peft-sweep stop`: KILLED, not stuck in RUNNING, and reopened when it resumes."""
        run_id = self.run_id(key)
        if run_id is not None:
            self.client.set_tag(run_id, TAG_STOPPED, "true")
            self.client.set_terminated(run_id, "KILLED")

    def forget_stops(self) -> int:
        """`run --force` starts stopped trials over: their KILLED runs become ended attempts (the rerun is
        attempt N+1), no longer runs to reopen. Returns how many."""
        found = self.search(f"tags.role = '{ROLE_TRIAL}' and tags.{TAG_STOPPED} = 'true'")
        for run in found:
            self.client.delete_tag(run.info.run_id, TAG_STOPPED)
        return len(found)

    def fail(self, key: str, error: str, trial: dict[str, Any] | None = None) -> None:
        run_id = self._ensure(key, trial)
        # the tag is a table column: the exception's line first, then the end of the traceback (error.txt: all)
        last = next((line for line in reversed(error.strip().splitlines()) if line.strip()), "")
        self.client.set_tag(run_id, "error", f"{last}\n\n{error[-3500:]}" if last != error.strip() else error[-4000:])
        self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(run_id, "FAILED")

    def result(self, run) -> dict[str, Any] | None:
        """A run's result: its ``result`` tag (the scalar fields), or, for runs logged before the tag existed and
        results too long for a tag, its result.json artifact (the whole result)."""
        if RESULT_TAG in run.data.tags:
            return json.loads(run.data.tags[RESULT_TAG])
        try:
            import mlflow.artifacts

            return mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/result.json")
        except Exception:  # noqa: BLE001 - a run without the artifact has no result
            return None

    def history(self, run_id: str, metric: str) -> list:
        return self.client.get_metric_history(run_id, metric)


def download_model(uri: str, run_id: str, dst: Path) -> Path:
    """A trial run's ``model/`` artifact (its delta) into ``dst``; a clear error when the run has none. A sweep
    folder's own store read where the folder is now (moved, or mounted elsewhere) still names the artifact
    folder where the run was logged: read-only, this looks in the folder beside the store instead of repointing
    it (only writers repoint, `Tracker.follow_move`)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    check_readable(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"no MLflow run {run_id!r} at {uri} ({str(exc).splitlines()[0][:120]})") from None
    recorded = run.info.artifact_uri
    if recorded.startswith("file://") and not Path(recorded.removeprefix("file://")).exists():
        here = _beside_store(uri, recorded)
        if here is None:
            raise TrackingError(f"run {run_id}'s artifacts are at {recorded.removeprefix('file://')}, which does not "
                                f"exist here; if its sweep folder moved, read its store where it is now "
                                f"(--tracking-uri sqlite:///NEW_DIR/mlflow.db)")
        if not (here / "model").is_dir():
            raise TrackingError(f"run {run_id} has no model/ artifact in {here}")
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=(here / "model").as_uri(), dst_path=str(dst)))
    if not any(f.path == "model" for f in client.list_artifacts(run_id)):
        raise TrackingError(f"run {run_id} has no model/ artifact: it is not a finished trial of this tool "
                            "(the parent run, a failed trial, or logged before model deltas existed)")
    return Path(client.download_artifacts(run_id, "model", str(dst)))


def _beside_store(uri: str, recorded: str) -> Path | None:
    """A run's artifact folder under the ``mlartifacts`` folder beside a SQLite store, where a moved sweep folder
    holds it; None if there is none."""
    _, sep, tail = recorded.partition("/mlartifacts/")
    if not uri.startswith("sqlite:///") or not sep:
        return None
    here = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / tail
    return here if here.is_dir() else None


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
