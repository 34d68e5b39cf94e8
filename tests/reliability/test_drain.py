"""`peft-sweep stop --drain` on real sweeps: the running trial finishes, the trials Tune holds waiting never start,
the driver ends with exit 0, and the next `run` runs only what is left (also after a drain cut short by a stop)."""
import time

import pytest

from tests.sweeps import cli, here, records, spawn, tracker, wait_for, write_spec

pytestmark = pytest.mark.slow


def _one_at_a_time(tmp_path, tiny_model, data_dir, steps: int = 12):
    """Three trials of about ``steps`` × 0.5 s each on a local Ray of one CPU: one runs while Tune holds the other
    two PENDING (no max_concurrent: the grid creates them all at once, as configs/paper/small.yaml does)."""
    spec = write_spec(tmp_path, tiny_model, data_dir, grid={"methods": ["bitfit"], "tasks": ["CB"], "seeds": [0, 1, 2]},
                      training__max_steps=steps, training__eval_every=4, ray={"num_cpus": 1},
                      fault={"step_delay_s": 0.5})
    return spec, tmp_path / "runs" / "t"


# the next run: two at a time and no delay (the drain or stop above needed slow trials; a fault setting is not
# part of the results, so the spec is the same sweep's)
THE_REST = ("--set", "ray.num_cpus=2", "--set", "fault.step_delay_s=0")


def _statuses(sweep_dir) -> list[str]:
    return sorted(r.get("status") for r in records(sweep_dir).values())


def test_drain_finishes_the_running_trial_starts_no_other_and_the_next_run_runs_the_rest(tmp_path, tiny_model,
                                                                                        data_dir, capsys):
    spec, sweep_dir = _one_at_a_time(tmp_path, tiny_model, data_dir)
    proc = spawn("run", str(spec))
    wait_for(lambda: _statuses(sweep_dir) == ["RUNNING"], proc, "the first trial running")
    (first,) = records(sweep_dir)
    drained, _ = here(capsys, "stop", str(sweep_dir), "--drain", "--timeout", "120")  # no Ray: in this process
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert "drained; this run 1 FINISHED, 0 FAILED, 2 not started, the sweep 1/3 FINISHED;" in out, out
    assert "completed. Last result" not in out, out  # Tune's line for the trials that never started
    assert records(sweep_dir)[first]["status"] == "FINISHED", drained + out  # finished, not stopped
    assert _statuses(sweep_dir) == ["FINISHED"], out  # the other two never started
    assert not (sweep_dir / "DRAIN").exists()
    finished = records(sweep_dir)[first]

    again = cli("run", str(spec), *THE_REST, check_rc=0)
    assert "1 already FINISHED, 2 to run" in again.stdout and "3/3 FINISHED" in again.stdout, again.stdout
    assert "resuming the interrupted experiment" not in again.stdout  # the drained one had nothing to resume
    assert records(sweep_dir)[first] == finished  # not run again
    assert len(tracker(sweep_dir).search("tags.role = 'trial'")) == 3


def test_a_drain_cut_short_by_a_stop_resumes_the_stopped_trial_and_runs_the_never_started_ones(tmp_path,
                                                                                              tiny_model, data_dir,
                                                                                              capsys):
    # 15 s a trial: the drain's 1 s wait, the stop and Tune's handling of it (seconds on a loaded machine) all
    # land before the first trial would have finished
    spec, sweep_dir = _one_at_a_time(tmp_path, tiny_model, data_dir, steps=30)
    proc = spawn("run", str(spec))
    wait_for(lambda: _statuses(sweep_dir) == ["RUNNING"], proc, "the first trial running")
    _, still = here(capsys, "stop", str(sweep_dir), "--drain", "--timeout", "1", rc=1)  # what run_piece.sh meets
    assert "still draining" in still, still                                            # at its deadline
    here(capsys, "stop", str(sweep_dir), "--timeout", "120")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0 and _statuses(sweep_dir) == ["STOPPED"], out

    again = cli("run", str(spec), *THE_REST, check_rc=0)
    assert "resuming the interrupted experiment" in again.stdout and "3/3 FINISHED" in again.stdout, again.stdout
    assert _statuses(sweep_dir) == ["FINISHED"] * 3
    assert len(tracker(sweep_dir).search("tags.role = 'trial'")) == 3


def test_a_drain_that_the_last_trial_ends_returns_once_the_sweep_is_closed(tmp_path, tiny_model, data_dir):
    """The drain lets the grid's last trial finish: the driver then closes the sweep (export, analysis, report,
    the parent run) as any sweep's end. It had unregistered first, so for those seconds the sweep looked driverless
    with its parent RUNNING: `stop --drain` returned and ended the parent KILLED under the analysis (run_piece.sh
    then killed the driver)."""
    from orchestrator import driver

    spec = write_spec(tmp_path, tiny_model, data_dir, grid={"methods": ["bitfit"], "tasks": ["CB"], "seeds": [0]},
                      training__max_steps=12, training__eval_every=4, fault={"step_delay_s": 0.5})
    sweep_dir = tmp_path / "runs" / "t"
    proc = spawn("run", str(spec))
    wait_for(lambda: _statuses(sweep_dir) == ["RUNNING"], proc, "the trial running")
    t, driverless = tracker(sweep_dir), []
    assert t.parent_status() == "RUNNING"  # the store opened now: each look below takes milliseconds, not seconds
    stopper = spawn("stop", str(sweep_dir), "--drain", "--timeout", "300")
    while stopper.poll() is None:  # the driver's file is gone only once its parent run has ended
        if driver.info(sweep_dir) is None:
            driverless.append(t.parent_status())
        time.sleep(0.1)
    said = stopper.stdout.read()
    assert stopper.returncode == 0 and "RUNNING" not in driverless, (driverless, said)
    assert t.parent_status() == "FINISHED" and (sweep_dir / "report" / "index.html").is_file(), said
    assert "every trial FINISHED, nothing to resume" in said and "resume with" not in said, said
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0 and "1/1 FINISHED" in out and "best on average: bitfit" in out, out
    assert t.parent_status() == "FINISHED" and _statuses(sweep_dir) == ["FINISHED"]
