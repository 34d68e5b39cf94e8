"""Fault injection on real sweeps: a crashing trial, a SIGKILLed driver, a reused worker scores as fresh processes do."""
import json
import os
import shutil
import signal
import time

import pytest

from orchestrator.cli import main
from tests.sweeps import (assert_each_trial_once, cli, kill_session, records, spawn, state_knows_a_checkpoint,
                          tracker, wait_for, write_spec)

pytestmark = pytest.mark.slow


def test_crashed_trial_is_retried_from_its_last_checkpoint(tmp_path, tiny_model, data_dir):
    spec = write_spec(tmp_path, tiny_model, data_dir, grid={"methods": ["sam"], "tasks": ["CB"], "seeds": [0]},
                      max_failures=2,
                      fault={"fail_at_step": 5, "fail_times": 1, "marker_dir": str(tmp_path / "m"), "match": {}})
    out = cli("run", str(spec), check_rc=0)
    assert "retrying from its last checkpoint" in out.stdout
    (rec,) = records(tmp_path / "runs" / "t").values()
    assert rec["status"] == "FINISHED" and rec["result"]["resumed_from_step"] == 3  # not from scratch


def test_trial_past_max_failures_ends_errored_with_its_error(tmp_path, tiny_model, data_dir, capsys):
    spec = write_spec(tmp_path, tiny_model, data_dir, grid={"methods": ["sam"], "tasks": ["CB"], "seeds": [0]},
                      max_failures=1,
                      fault={"fail_at_step": 2, "fail_times": 5, "marker_dir": str(tmp_path / "m"), "match": {}})
    cli("run", str(spec), check_rc=1)
    assert len(list((tmp_path / "m").iterdir())) == 2  # the first attempt and one retry
    sweep_dir = tmp_path / "runs" / "t"
    (run,) = tracker(sweep_dir).trial_runs().values()
    assert run.info.status == "FAILED" and "InjectedFault" in run.data.tags["error"]
    capsys.readouterr()
    assert main(["status", str(sweep_dir)]) == 0  # in this process: status starts no Ray
    assert "injected fault at step 2" in capsys.readouterr().out


def test_a_diverged_trial_fails_at_once_without_retries(tmp_path, tiny_model, data_dir, capsys):
    """A divergence is deterministic: Tune retried it max_failures times, from the same state to the same nan, and
    a sweep paid each retry's GPU time for nothing. It ends FAILED on its first attempt, with its own message."""
    spec = write_spec(tmp_path, tiny_model, data_dir, grid={"methods": ["bitfit"], "tasks": ["CB"], "seeds": [0]},
                      max_failures=2, fault={"nan_loss_at_step": 2})
    out = cli("run", str(spec), check_rc=1)
    assert "retrying" not in out.stdout, out.stdout[-3000:]
    # rerun-failed would repeat it (same settings, same nan): the hint says what to change instead
    assert ("1 of them diverged, which a rerun repeats: give methods.bitfit.lr a smaller value and `peft-sweep "
            "run` the spec again") in out.stdout and "rerun the failed ones" not in out.stdout, out.stdout[-2000:]
    sweep_dir = tmp_path / "runs" / "t"
    (rec,) = records(sweep_dir).values()
    assert rec["status"] == "FAILED" and "training diverged" in rec["error"], rec
    track = tracker(sweep_dir)
    (run,) = track.trial_runs().values()
    assert run.info.status == "FAILED" and "TrainingDiverged: training diverged" in run.data.tags["error"]
    assert not track.client.search_runs([track.experiment_id], "tags.role = 'superseded'")  # no earlier attempt
    capsys.readouterr()
    assert main(["status", str(sweep_dir)]) == 0
    assert "training diverged" in capsys.readouterr().out


def test_driver_sigkilled_before_any_trial_finished_then_rerun_finishes_exactly_once(tmp_path, tiny_model, data_dir):
    """Killed with two trials running and none finished. The kill with three finished and the last one running
    (checkpointed) is test_move's: the same, and resumed in another folder."""
    spec = write_spec(tmp_path, tiny_model, data_dir, training__max_steps=9, resources={"max_concurrent": 2})
    sweep_dir = tmp_path / "runs" / "t"
    proc = spawn("run", str(spec))
    wait_for(lambda: any(r.get("status") == "RUNNING" for r in records(sweep_dir).values()), proc)
    kill_session(proc)  # the driver and everything it started, as a lost head node would
    assert sum(r.get("status") == "FINISHED" for r in records(sweep_dir).values()) < 4
    out = cli("run", str(spec), check_rc=0)
    assert "4/4 FINISHED" in out.stdout
    assert_each_trial_once(sweep_dir, 4)


def _worker_pids(sweep_dir) -> dict[str, int]:
    """Each trial's worker process, from Tune's own result rows (Tune adds ``pid`` to every report)."""
    rows = {p.parent.name: json.loads(p.read_text().splitlines()[-1]) for p in sweep_dir.glob("tune/*/*/result.json")}
    return {name: row["pid"] for name, row in rows.items()}


def test_a_reused_worker_gives_the_results_of_fresh_processes(tmp_path, tiny_model, data_dir):
    """Trial after trial in one worker (the default) ends exactly as a fresh process per trial: nothing leaks
    from one trial to the next (methods that rebuild modules, draw random numbers or mask, in a row). Also the
    determinism check: two sweeps, the same results."""
    costs = {"wall_s", "setup_s", "train_s", "eval_s", "checkpoint_s", "process_trial", "trial_ended_at"}
    results, pids = [], []
    for name, resources in (("reused", {"max_concurrent": 1}), ("fresh", {"reuse_workers": False})):
        spec = write_spec(tmp_path / name, tiny_model, data_dir, resources=resources,
                          grid={"methods": ["mixout", "lora", "sam", "bitfit"], "tasks": ["CB"], "seeds": [0]})
        cli("run", str(spec), check_rc=0)
        recs = records(tmp_path / name / "runs" / "t")
        results.append({k: {f: v for f, v in r["result"].items() if f not in costs} for k, r in recs.items()})
        pids.append(_worker_pids(tmp_path / name / "runs" / "t"))
        if name == "reused":  # the worker's first trial paid its start-up; the others say they did not
            assert sorted(r["result"]["process_trial"] for r in recs.values()) == [0, 1, 2, 3]
    assert len(results[0]) == 4 and results[0] == results[1]  # scores, curves, counts: all of it
    assert len(pids[0]) == len(pids[1]) == 4
    assert len(set(pids[0].values())) == 1, pids[0]  # one worker ran all four
    assert len(set(pids[1].values())) == 4, pids[1]


def test_sigterm_as_ray_job_stop_sends_it_leaves_nothing_running_and_the_sweep_resumes(tmp_path, tiny_model,
                                                                                       data_dir):
    spec = write_spec(tmp_path, tiny_model, data_dir, training__max_steps=9, resources={"max_concurrent": 1})
    sweep_dir = tmp_path / "runs" / "t"
    statuses = lambda: [r.get("status") for r in records(sweep_dir).values()]  # noqa: E731
    proc = spawn("run", str(spec))
    wait_for(lambda: statuses().count("FINISHED") >= 1 and statuses().count("RUNNING") == 1, proc)
    os.killpg(proc.pid, signal.SIGTERM)  # `ray job stop`: SIGTERM to the driver and its children ...
    proc.wait(timeout=60)  # the driver dies of it (Ray allows 3 s; a loaded CI machine may take longer to react)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # ... then SIGKILL for whatever is left (RAY_JOB_STOP_WAIT_TIME_S)
    except ProcessLookupError:
        pass
    t = tracker(sweep_dir)
    deadline = time.time() + 120  # the stop the driver started on SIGTERM marks what it left
    while time.time() < deadline and ("RUNNING" in statuses() or t.parent_status() == "RUNNING"):
        time.sleep(1)
    log = (sweep_dir / "terminated.log").read_text()
    assert "RUNNING" not in statuses() and "STOPPED" in statuses(), log
    assert "RUNNING" not in {r.info.status for r in t.trial_runs().values()} and t.parent_status() == "KILLED", log
    out = cli("run", str(spec), check_rc=0)
    assert "4/4 FINISHED" in out.stdout
    assert len(tracker(sweep_dir).search("tags.role = 'trial'")) == 4


def _replace_with_a_newer_checkpoint(trial_dir) -> tuple[str, int]:
    """Leave ``trial_dir`` as a kill can, seen in CI: Tune's saved state (and result.json) names a checkpoint that
    Tune deleted once it registered a newer one; the next is half deleted, the one after whole, the last half
    copied. Made from the newest checkpoint, moved two numbers on, and copies of its small file before and after
    it. Returns the whole one's name and step."""
    *older, newest = sorted(trial_dir.glob("checkpoint_*"))
    for folder in older:
        shutil.rmtree(folder)
    number = int(newest.name.rsplit("_", 1)[1])
    half_deleted, whole, half_copied = (trial_dir / f"checkpoint_{number + i:06d}" for i in (1, 2, 3))
    newest.rename(whole)
    for half in (half_deleted, half_copied):
        half.mkdir()
        shutil.copy(whole / "state.json", half / "state.json")
    return whole.name, json.loads((whole / "state.json").read_text())["step"]


@pytest.mark.parametrize("lost", ["never_saved", "deleted"])
def test_a_restored_trial_without_its_checkpoint_resumes_from_the_next_or_starts_over(lost, tmp_path, tiny_model, data_dir):
    """never_saved: checkpointing off. deleted: Tune's saved state names a checkpoint Tune had deleted already (it
    keeps the newest, and the driver died before saving its state again; seen in CI after `ray job stop`): the
    restore failed, and so did each retry, and the trial ended FAILED. With a newer checkpoint in the trial's
    folder (seen in CI after a SIGKILL) the trial resumes from that one; with none, it starts over. Both from the
    same kill: a copy of the sweep folder as the kill left it, moved elsewhere, is the second case."""
    settings = dict(training__max_steps=60, resources={"max_concurrent": 1},
                    training__checkpoint_every=0 if lost == "never_saved" else 3,
                    fault={"step_delay_s": 0.1})  # the last trial still runs at the kill (a fault: no result field)
    spec = write_spec(tmp_path, tiny_model, data_dir, **settings)
    sweep_dir = tmp_path / "runs" / "t"
    last, store = [], []

    def last_one_evaluated() -> bool:  # three finished, the fourth logged an evaluation (and is in Tune's state)
        recs = records(sweep_dir)
        running = [k for k, r in recs.items() if r.get("status") == "RUNNING"]
        if sum(r.get("status") == "FINISHED" for r in recs.values()) != 3 or len(running) != 1:
            return False
        if lost == "deleted":
            seen = state_knows_a_checkpoint(sweep_dir / "tune" / "exp-001", running[0])
        else:
            if not store:  # made once: opening the store takes seconds on a busy CI machine, inside the window
                store.append(tracker(sweep_dir))
            t = store[0]
            run_id = t.run_id(running[0])
            seen = bool(run_id and t.history(run_id, "dev_score"))
        last[:] = running
        return seen

    proc = spawn("run", str(spec))
    wait_for(last_one_evaluated, proc)
    kill_session(proc)
    (running,) = last
    assert records(sweep_dir)[running]["status"] == "RUNNING"
    if lost == "deleted":
        copy = shutil.copytree(sweep_dir, tmp_path / "copy" / "runs" / "t", symlinks=True)
        (trial_dir,) = (sweep_dir / "tune" / "exp-001").glob(f"*-{running}")
        newer, step = _replace_with_a_newer_checkpoint(trial_dir)
        out = cli("run", str(spec), check_rc=0)
        assert f"{running}: Tune's saved state names" in out.stdout and f"resumes from {newer}" in out.stdout, \
            out.stdout
        assert "could not resume" not in out.stdout and "4/4 FINISHED" in out.stdout, out.stdout
        assert records(sweep_dir)[running]["result"]["resumed_from_step"] == step
        assert not tracker(sweep_dir).search("tags.role = 'superseded'")  # the same attempt went on
        left = sorted(p.name for p in trial_dir.glob("checkpoint_*"))  # the half-copied one was overwritten
        assert len(left) == 2 and left[0] < newer < left[1], left  # the half-deleted one, and its final one
        sweep_dir, spec = copy, write_spec(tmp_path / "copy", tiny_model, data_dir, **settings)  # none left now
        (trial_dir,) = (sweep_dir / "tune" / "exp-001").glob(f"*-{running}")
        for folder in trial_dir.glob("checkpoint_*"):
            shutil.rmtree(folder)
    out = cli("run", str(spec), check_rc=0)
    assert "resuming the interrupted experiment" in out.stdout and "4/4 FINISHED" in out.stdout, out.stdout
    assert ("could not resume" in out.stdout) == (lost == "deleted") and running in out.stdout
    t = tracker(sweep_dir)
    for run in t.trial_runs().values():  # the restarted trial's steps are logged once, in its new attempt
        steps = [m.step for m in t.history(run.info.run_id, "dev_score")]
        assert steps == sorted(set(steps)), (run.info.run_name, steps)
    (old,) = t.search("tags.role = 'superseded'")
    assert old.info.status == ("KILLED" if lost == "never_saved" else "FAILED")
    assert old.data.tags["trial_key"] == running and t.trial_runs()[running].data.tags["attempt"] == "2"
    assert not records(sweep_dir)[running]["result"]["resumed_from_step"]  # from step 0
