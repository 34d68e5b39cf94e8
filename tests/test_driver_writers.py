"""The driver's Ray-free writers that ``SweepCallback`` dispatches to: the MLflow writer with its outage
breaker (against a real SQLite store and a real refused connection) and the console progress line."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.synthetic_trials import fake_result, trial_dict
from orchestrator import records, sweep
from orchestrator.identity import code_version
from orchestrator.breaker import GuardedTracker
from orchestrator.progress import Progress, duration
from orchestrator.records import SweepRecords
from orchestrator.tracking import Tracker
from tests.tracking_fixtures import make_spec


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one costs seconds); each test uses its own trial keys."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def spec(tmp_path, data_dir, store, request):
    """A sweep of its own name in the shared store: one store holds one sweep folder per name (tracking.py)."""
    import hashlib

    return make_spec(tmp_path, data_dir, tracking_uri=store,
                     name=f"t-{hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]}")


def _guarded(spec, uri: str | None = None, clock=None) -> GuardedTracker:
    tracker = Tracker(uri, spec.name, spec.sweep_dir) if uri else sweep.tracker_for(spec)
    return GuardedTracker(tracker, SweepRecords(spec.sweep_dir), clock or Clock())


def _down_store(spec, monkeypatch) -> str:
    """A server URI where nothing listens: a real refused connection, without the client's retries."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return "http://127.0.0.1:9"  # discard's port: a free port picked here could be taken by Ray meanwhile


def test_outage_opens_the_breaker_marks_the_record_and_warns_once(spec, monkeypatch, capsys):
    clock = Clock()
    guarded = _guarded(spec, _down_store(spec, monkeypatch), clock)
    cfg = spec.trials()[0]
    SweepRecords(spec.sweep_dir).started(cfg.key, trial_dict(cfg))
    guarded.start_trial(cfg.key, trial_dict(cfg))  # does not raise: trials go on
    assert guarded.down_until == clock.now + GuardedTracker.retry_after_s
    assert records.read(spec.sweep_dir, cfg.key)["synced"] is False
    assert records.read(spec.sweep_dir, cfg.key)["status"] == "RUNNING"  # the record keeps the trial
    err = capsys.readouterr().err
    assert err.count("WARNING: tracking store unreachable") == 1 and "peft-sweep sync" in err

    clock.now = guarded.down_until + 1  # the window is over: the next call tries again, fails again
    guarded.fail(cfg.key, "boom", trial_dict(cfg))
    assert guarded.down_until == clock.now + GuardedTracker.retry_after_s
    assert "WARNING" not in capsys.readouterr().err  # one warning per driver


def test_open_breaker_leaves_the_store_alone_until_the_window_ends(spec, monkeypatch):
    clock = Clock()
    guarded = _guarded(spec, _down_store(spec, monkeypatch), clock)
    first, second = spec.trials()[1:3]
    guarded.start_trial(first.key, trial_dict(first))
    assert guarded.down_until > clock.now
    guarded.tracker = sweep.tracker_for(spec)  # the store is back, but the window is still open
    guarded.start_trial(second.key, trial_dict(second))
    assert second.key not in guarded.tracker.trial_runs()  # not called
    assert records.read(spec.sweep_dir, second.key)["synced"] is False

    clock.now = guarded.down_until  # the window is over
    guarded.start_trial(second.key, trial_dict(second))
    guarded.finish(second.key, fake_result(second), trial_dict(second), {"ray_node": "10.0.0.1"})
    run = guarded.tracker.trial_runs()[second.key]
    assert run.info.status == "FINISHED" and run.data.tags["ray_node"] == "10.0.0.1"


def test_a_bug_is_raised_never_taken_for_an_outage(spec, capsys):
    guarded = _guarded(spec)
    cfg = spec.trials()[3]
    guarded.start_trial(cfg.key, trial_dict(cfg))
    with pytest.raises(TypeError):
        guarded.log_eval(cfg.key, {"step": None, "dev_score": 0.5}, trial_dict(cfg))  # int(None) in our code
    assert guarded.down_until == 0 and not guarded.warned
    assert records.read(spec.sweep_dir, cfg.key)["synced"] is False  # sync still looks at it
    assert "WARNING" not in capsys.readouterr().err


def test_store_refusing_a_call_is_reported_and_skipped(spec, capsys):
    guarded = _guarded(spec)
    cfg = spec.trials()[4]
    guarded.start_trial(cfg.key, trial_dict(cfg))
    tracker = guarded.tracker
    tracker.client.delete_run(tracker.run_id(cfg.key))  # a deleted run refuses new metrics
    guarded.log_eval(cfg.key, {"step": 3, "dev_score": 0.5, "train_loss": 1.0, "lr": 1e-3}, trial_dict(cfg))
    err = capsys.readouterr().err
    assert f"ERROR: MLflow refused a call for trial {cfg.key}" in err and "peft-sweep sync" in err
    assert guarded.down_until == 0  # the store answered: it is not down
    assert records.read(spec.sweep_dir, cfg.key)["synced"] is False


def test_records_follow_the_trial_events(tmp_path):
    local = SweepRecords(tmp_path)
    key = "0123456789ab"
    local.started(key, {"method": "sam"})
    assert records.read(tmp_path, key) == {"trial_key": key, "status": "RUNNING", "trial": {"method": "sam"},
                                           "synced": True, "code_version": code_version()}  # the driver's code
    local.unsynced(key)
    local.failed(key, "boom")
    assert records.read(tmp_path, key)["status"] == "FAILED" and records.read(tmp_path, key)["synced"] is False
    local.finished(key, {"test_score": 0.5})
    rec = records.read(tmp_path, key)
    assert rec["status"] == "FINISHED" and rec["error"] is None and rec["result"] == {"test_score": 0.5}


def test_progress_line_counts_and_eta():
    clock = Clock(1000.0)
    progress = Progress(clock)
    statuses = ["TERMINATED", "TERMINATED", "RUNNING", "PENDING", "PENDING", "PAUSED", "ERROR"]
    clock.now = 1100.0
    assert progress.line(statuses, "x").endswith(
        "done 2/7 | running 1 | failed 1 | queued 3 | elapsed 1m40s | rate ? | ETA ? | x")  # nothing ended here yet
    progress.trial_finished()
    progress.trial_finished()
    # 100 s for 2 trials that FINISHED here; 4 left (3 queued + 1 running): 200 s
    assert "| elapsed 1m40s | 72.0 trials/h | ETA 3m20s | x" in progress.line(statuses, "x")
    assert "ETA" not in progress.line(["TERMINATED", "ERROR"], "x")  # nothing left


def test_progress_counts_the_sweeps_trials_outside_the_running_experiment():
    """A resumed experiment holds some of the grid, the next one the rest: each counted alone, the line read
    "done 3/3" with more to run, and its ETA left those out."""
    from orchestrator.progress import outside

    recs = {"a": {"status": "FINISHED", "ended_at": 500.0},  # before this driver
            "b": {"status": "FAILED", "ended_at": 500.0},
            "c": {"status": "FINISHED", "ended_at": 1050.0},  # in this driver's previous experiment
            "e": {"status": "STOPPED"}}  # not this driver's to run (rerun-failed)
    grid = ["a", "b", "c", "d", "e", "f"]
    got = outside(grid, inside={"f"}, to_run={"c", "d", "f"}, recs=recs, started=1000.0)
    assert got == {"TERMINATED": 2, "ERROR": 1, "PENDING": 1, "LEFT": 1}
    # rerun-failed: b is to run again and has not yet; once it fails again here it is an ERROR
    assert outside(grid, {"f"}, {"b", "f"}, recs, 1000.0)["PENDING"] == 1
    recs["b"]["ended_at"] = 1060.0
    assert outside(grid, {"f"}, {"b", "f"}, recs, 1000.0)["ERROR"] == 1

    clock = Clock(1000.0)
    progress = Progress(clock)
    progress.sweep = (grid, {"c", "d", "f"}, recs)
    clock.now = 1100.0
    progress.trial_finished()
    recs["b"]["ended_at"] = 500.0
    assert "done 2/6 | running 1 | failed 1 | queued 1 | elapsed 1m40s | 36.0 trials/h | ETA 3m20s" in \
        progress.line(["RUNNING"], "x", inside={"f"})


def test_progress_show_prints_the_line(capsys):
    clock = Clock()
    Progress(clock).show(["RUNNING"], "a1b2 sam/CB step 3 dev 0.5000")
    out = capsys.readouterr().out
    assert out.endswith("done 0/1 | running 1 | failed 0 | queued 0 | elapsed 0m00s | rate ? | ETA ? "
                        "| a1b2 sam/CB step 3 dev 0.5000\n")


def test_evaluation_lines_are_kept_to_one_per_interval_while_ends_are_always_shown():
    """A packed GPU sweep reports evaluations several times a second: a line for each buried the trials' ends
    and cost a count over the whole grid per evaluation (31 ms at 50,000 trials)."""
    from orchestrator.progress import EVAL_LINE_S

    clock = Clock(1000.0)
    progress = Progress(clock)
    assert progress.evaluation_line_due()  # the first one is shown
    clock.now += EVAL_LINE_S / 2
    assert not progress.evaluation_line_due()
    clock.now += EVAL_LINE_S / 2
    assert progress.evaluation_line_due()
    assert not progress.evaluation_line_due()  # the one just shown starts the next interval


@pytest.mark.parametrize("seconds,text", [(0, "0m00s"), (59.9, "0m59s"), (187, "3m07s"), (3599, "59m59s"),
                                          (3600, "1h00m"), (3725, "1h02m"), (90061, "25h01m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_the_writers_load_neither_ray_nor_mlflow():
    """Ray stays in tune_runner; the writers SweepCallback dispatches to load neither (MLflow only on a call)."""
    import subprocess
    import sys

    code = ("import sys; import orchestrator.breaker, orchestrator.progress, orchestrator.records; "
            "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == "[]"


def test_driver_line_and_watch_view_use_the_same_words(tmp_path):
    from orchestrator.control import SweepProgress

    clock = Clock(1000.0)
    progress = Progress(clock)
    clock.now = 1100.0
    driver_line = progress.line(["TERMINATED", "RUNNING", "PENDING"], "x")
    watch_line = SweepProgress(3, {"FINISHED": 1, "RUNNING": 1, "PENDING": 1}, 1000.0, True, 0, 100.0).line()
    for line in (driver_line, watch_line):
        assert "done 1/3 | running 1 | failed 0 | queued 1 | elapsed 1m40s | rate ? | ETA ?" in line, line
    progress.trial_finished()
    done = progress.line(["TERMINATED", "TERMINATED"], "x")
    watched = SweepProgress(2, {"FINISHED": 2}, 1000.0, True, 1, 100.0).line()
    for line in (done, watched):  # all ended: a rate, and no "ETA ?"
        assert "| elapsed 1m40s | 36.0 trials/h |" in line and "ETA" not in line, line
    ended = SweepProgress(2, {"FINISHED": 2}, 1000.0, False, 0, 0.0).line()
    assert ended == "done 2/2 | running 0 | failed 0 | queued 0 | driver not running"
    midway = SweepProgress(3, {"FINISHED": 1, "RUNNING": 1, "PENDING": 1}, 1000.0, True, 1, 100.0)
    assert "ETA 3m20s" in midway.line() and midway.as_json()["eta_s"] == 200.0  # the same ETA, in seconds
    assert watch_line.endswith("driver alive") and SweepProgress(
        3, {"FINISHED": 1, "RUNNING": 1, "PENDING": 1}, 1000.0, True, 0, 100.0).as_json()["eta_s"] is None


def test_a_model_delta_the_store_missed_is_logged_by_sync_from_tunes_last_checkpoint(spec, monkeypatch, capsys):
    """A finished trial whose delta upload met an outage gets it from its last checkpoint in Tune's storage (which
    Tune keeps) at the next `sync`; with that gone too, sync says so once."""
    tracker, local = sweep.tracker_for(spec), SweepRecords(spec.sweep_dir)
    kept, lost = spec.trials()[:2]
    for cfg in (kept, lost):
        result = fake_result(cfg)
        local.started(cfg.key, trial_dict(cfg))
        tracker.start_trial(cfg.key, trial_dict(cfg))
        local.finished(cfg.key, result)
        tracker.finish(cfg.key, result, trial_dict(cfg))
    trial_dir = spec.sweep_dir / "tune" / "exp-001" / f"{kept.method}-CB-s0-{kept.key}"  # Tune's folders
    (trial_dir / "checkpoint_000003" / "model").mkdir(parents=True)  # an older one, without a delta
    final = trial_dir / "checkpoint_000004" / "model"
    final.mkdir(parents=True)
    (final / "delta.safetensors").write_bytes(b"the delta")
    (final / "meta.json").write_text('{"trial_key": "%s"}' % kept.key)
    (final.parent / "result.json").write_text("{}")

    guarded = _guarded(spec, _down_store(spec, monkeypatch))
    for cfg in (kept, lost):
        guarded.down_until = 0.0  # each upload meets the outage itself
        guarded.log_model(cfg.key, final, trial_dict(cfg))
        assert records.read(spec.sweep_dir, cfg.key)["model_logged"] is False
    capsys.readouterr()

    sweep.sync(spec, sweep.tracker_for(spec), mend_parent=False)
    run_id = tracker.run_id(kept.key)
    assert {a.path for a in tracker.client.list_artifacts(run_id, "model")} == {"model/delta.safetensors",
                                                                               "model/meta.json"}
    assert records.read(spec.sweep_dir, kept.key)["model_logged"] is True
    err = capsys.readouterr().err
    assert f"trial {lost.key}'s model delta never reached MLflow" in err and kept.key not in err
    assert not tracker.client.list_artifacts(tracker.run_id(lost.key), "model")
    sweep.sync(spec, sweep.tracker_for(spec), mend_parent=False)
    assert "never reached MLflow" not in capsys.readouterr().err  # said once


def test_a_pid_a_later_process_took_is_no_live_driver(tmp_path):
    """A container restarted in place counts pids from 1 again: the dead driver's pid may be another process's,
    and `run` refused the sweep as running until someone deleted driver.json."""
    import json
    import os
    import socket
    import subprocess
    import time

    from orchestrator import driver

    def claim(pid: int, started: float) -> None:
        (tmp_path / driver.DRIVER_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                               "started": started, "beat": started}))

    claim(os.getpid(), time.time())  # this process registered just now: alive
    assert driver.alive(tmp_path)
    later = subprocess.Popen(["sleep", "30"])
    try:
        claim(later.pid, time.time() - 600)  # registered 10 minutes ago; the process with that pid is new
        assert not driver.alive(tmp_path)
    finally:
        later.kill()
        later.wait()
    assert not driver.alive(tmp_path)  # and gone


def test_one_sync_logs_the_model_of_a_trial_whose_run_the_outage_kept_from_starting(spec):
    """sync logged a missed delta only into a run that existed before it began: for a trial that ran wholly
    while the store was down, the first sync made its run and the second logged its model."""
    cfg = spec.trials()[0]
    local = SweepRecords(spec.sweep_dir)
    local.started(cfg.key, trial_dict(cfg))
    local.finished(cfg.key, fake_result(cfg))
    records.update(spec.sweep_dir, cfg.key, synced=False, model_logged=False)  # as the outage leaves them
    final = spec.sweep_dir / "tune" / "exp-001" / f"{cfg.method}-CB-s0-{cfg.key}" / "checkpoint_000004" / "model"
    final.mkdir(parents=True)
    (final / "delta.safetensors").write_bytes(b"the delta")
    (final / "meta.json").write_text('{"trial_key": "%s"}' % cfg.key)
    (final.parent / "result.json").write_text("{}")

    tracker = sweep.tracker_for(spec)
    assert sweep.sync(spec, tracker, mend_parent=False) == 1
    assert {a.path for a in tracker.client.list_artifacts(tracker.run_id(cfg.key), "model")} == {
        "model/delta.safetensors", "model/meta.json"}
    assert records.read(spec.sweep_dir, cfg.key)["model_logged"] is True


def test_the_driver_file_names_the_ray_job_it_runs_in(tmp_path, monkeypatch):
    """Ray 2.60's job supervisor gives the entrypoint its submission id only inside RAY_JOB_CONFIG_JSON_ENV_VAR
    (ray/dashboard/modules/job/job_supervisor.py, _get_driver_env_vars); the RAY_JOB_SUBMISSION_ID read before is
    never set, so `status` never said which job runs a sweep."""
    import json

    from orchestrator import driver

    monkeypatch.delenv("RAY_JOB_SUBMISSION_ID", raising=False)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc", "job_name": "raysubmit_abc"}}))
    driver.register(tmp_path)
    assert driver.info(tmp_path)["ray_job"] == "raysubmit_abc"
    assert driver.describe(tmp_path).endswith(", Ray job raysubmit_abc")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "not json")  # no job then, and no crash
    driver.register(tmp_path)
    assert driver.info(tmp_path)["ray_job"] is None


def test_the_line_counts_a_trial_that_ended_failed_as_failed(tmp_path, data_dir, capsys):
    """A trial Tune ends TERMINATED (a divergence's final report, or no final result at all) that the driver
    records FAILED was counted done on the line that said "FAILED" and on every line after it."""
    from types import SimpleNamespace

    from orchestrator.tune_runner import FAILED_REPORT, SweepCallback

    spec = make_spec(tmp_path, data_dir)
    a, b, c = (SimpleNamespace(config={"trial": trial_dict(t)}, status="RUNNING", last_result={}, checkpoint=None)
               for t in spec.trials()[:3])
    callback = SweepCallback(spec)
    a.last_result = {"final": True, FAILED_REPORT: "TrainingDiverged: training diverged"}
    callback.on_trial_complete(0, [a, b, c], a)
    a.status = "TERMINATED"
    b.last_result = {"step": 3}  # ended without a final result
    callback.on_trial_complete(0, [a, b, c], b)
    lines = capsys.readouterr().out.strip().splitlines()
    assert "done 0/3 | running 2 | failed 1 |" in lines[0] and "FAILED: TrainingDiverged" in lines[0], lines
    assert "done 0/3 | running 1 | failed 2 |" in lines[1] and "trial ended without a final result" in lines[1], lines
    # failures (often at once: out of memory, a bad setting) took no training time: an ETA from them said minutes
    # for a sweep of hours; the rate and ETA rest on the trials that FINISHED
    assert "| rate ? | ETA ? |" in lines[1], lines
    # a trial Tune ended before it ever reported (a drain stopped it) is no failure: queued for the next run
    c.status, c.last_result = "TERMINATED", {}
    assert SweepCallback(spec).line_status(c, None) == "PENDING"
