"""A sweep folder moved to another place or machine (other paths for the folder and the data) goes on there:
nothing is read from or written to the old paths, and other task files under the new path are refused."""
import json
import shutil

import pandas as pd
import pytest

from tests.sweeps import (assert_each_trial_once, cli, here, kill_session, records, spawn, state_knows_a_checkpoint,
                          tracker, wait_for, write_spec)

pytestmark = pytest.mark.slow


def _machine(root, data_dir):
    """A machine's own copy of the task data (CB is all these sweeps read)."""
    shutil.copytree(data_dir / "CB", root / "data" / "CB")
    return root


def _artifact_uris(sweep_dir) -> set[str]:
    t = tracker(sweep_dir)
    exp = t.client.get_experiment_by_name("t")
    return {exp.artifact_location} | {r.info.artifact_uri for r in t.search("")}


# 3 s or more a trial: the kill point (the last trial running with a checkpoint Tune knows) lasts seconds, not the
# moment between its first checkpoint and its end that a loaded machine's polling could miss
SLOW = {"step_delay_s": 0.1}


def _kill_when_the_last_one_checkpointed(spec, sweep_dir) -> None:
    """Run the 4-trial sweep one trial at a time; SIGKILL the driver and its Ray (a lost machine) once three
    trials finished and Tune's saved state knows a checkpoint of the fourth."""
    def ready() -> bool:
        recs = records(sweep_dir)
        running = [k for k, r in recs.items() if r.get("status") == "RUNNING"]
        finished = sum(r.get("status") == "FINISHED" for r in recs.values())
        return finished == 3 and len(running) == 1 and state_knows_a_checkpoint(sweep_dir / "tune" / "exp-001",
                                                                                 running[0])

    proc = spawn("run", str(spec))
    wait_for(ready, proc)
    kill_session(proc)


def test_a_sweep_folder_moved_without_checkpoints_grows_and_tracks_where_it_is(tmp_path, tiny_model, data_dir,
                                                                               capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "")  # status and validate run in this process (they start no Ray)
    a, b = _machine(tmp_path / "a", data_dir), _machine(tmp_path / "b", data_dir)
    _kill_when_the_last_one_checkpointed(write_spec(a, tiny_model, a / "data", training__max_steps=30,
                                                    resources={"max_concurrent": 1}, fault=SLOW), a / "runs" / "t")
    moved = b / "runs" / "t"
    moved.mkdir(parents=True)
    for name in ("spec.yaml", "identity.json", "mlflow.db"):  # the state, without checkpoints and artifacts
        shutil.copy(a / "runs" / "t" / name, moved / name)
    shutil.copytree(a / "runs" / "t" / "records", moved / "records")
    shutil.rmtree(a)  # the first machine is gone

    status = json.loads(here(capsys, "status", str(moved), "--json")[0])
    assert status["per_status"] == {"FINISHED": 3, "RUNNING": 1}, status
    plan, _ = here(capsys, "validate", str(moved / "spec.yaml"), "--set", f"data.dir={b / 'data'}")  # as `stop` says
    assert f"3 already FINISHED, 1 to run -> {moved.resolve()}" in plan, plan
    out = cli("run", str(write_spec(b, tiny_model, b / "data", training__max_steps=30,
                                    grid={"methods": ["sam", "bitfit"], "tasks": ["CB"], "seeds": [0, 1, 2]})),
              check_rc=0)
    assert "3 already FINISHED, 3 to run" in out.stdout and "resuming" not in out.stdout
    assert "moved" in out.stdout and str(tmp_path / "a" / "data") in out.stdout  # said, with the old folder
    assert not a.exists()  # nothing was written to the old place
    assert all(u.startswith(moved.resolve().as_uri()) for u in _artifact_uris(moved)), _artifact_uris(moved)
    t = tracker(moved)
    runs = t.trial_runs()
    assert len(runs) == 6 and {r.info.status for r in runs.values()} == {"FINISHED"}
    for run in runs.values():  # the killed trial started over: a new attempt, one history per run
        steps = [m.step for m in t.history(run.info.run_id, "dev_score")]
        assert steps == sorted(set(steps)) == list(range(3, 31, 3)), (run.info.run_name, steps)
    (old,) = t.search("tags.role = 'superseded'")
    assert old.info.status == "KILLED" and runs[old.data.tags["trial_key"]].data.tags["attempt"] == "2"
    new = [r for k, r in runs.items() if r.data.params["seed"] == "2"]
    for run in new:  # the new trials' model deltas are in the moved folder
        assert "model" in [f.path for f in t.client.list_artifacts(run.info.run_id)]
    trials = pd.read_parquet(moved / "export" / "trials.parquet")
    assert len(trials) == trials["trial_key"].nunique() == 6 and set(trials["status"]) == {"FINISHED"}

    c = _machine(tmp_path / "c", data_dir)  # same file names, one example changed
    train = c / "data" / "CB" / "train.jsonl"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text(lines[1] + lines[0] + "".join(lines[2:]))
    spec_c = write_spec(c, tiny_model, c / "data", output_dir=str(b / "runs"), training__max_steps=30,
                        grid={"methods": ["sam", "bitfit"], "tasks": ["CB"], "seeds": [0, 1, 2]})
    _, refused = here(capsys, "validate", str(spec_c), rc=2)
    assert "data.dir: other files for CB than the sweep ran on" in refused, refused


def test_a_killed_sweep_moved_with_its_checkpoints_resumes_them_where_it_is(tmp_path, tiny_model, data_dir):
    """Also the driver SIGKILLed with three trials finished and the last one running: the rerun resumes that one
    from its checkpoint and runs nothing twice."""
    a, b = _machine(tmp_path / "a", data_dir), _machine(tmp_path / "b", data_dir)
    old = a / "runs" / "t"
    _kill_when_the_last_one_checkpointed(write_spec(a, tiny_model, a / "data", training__max_steps=30,
                                                    resources={"max_concurrent": 1}, fault=SLOW), old)
    (b / "runs").mkdir()
    shutil.copytree(old, b / "runs" / "t")  # everything, checkpoints included
    shutil.rmtree(a)
    moved = b / "runs" / "t"

    out = cli("run", str(write_spec(b, tiny_model, b / "data", training__max_steps=30,
                                    resources={"max_concurrent": 1})), check_rc=0)
    assert "resuming the interrupted experiment exp-001" in out.stdout and "4/4 FINISHED" in out.stdout
    assert not a.exists()  # the restored experiment's trials and callback wrote where the folder is now
    recs = records(moved)
    assert {r["status"] for r in recs.values()} == {"FINISHED"}
    resumed = {k: r["result"]["resumed_from_step"] for k, r in recs.items()}
    assert sum((step or 0) > 0 for step in resumed.values()) == 1, (resumed, out.stdout)  # from its checkpoint
    assert_each_trial_once(moved, 4)
    t = tracker(moved)
    assert not t.search("tags.role = 'superseded'")  # resumed, not started over
    for run in t.trial_runs().values():
        steps = [m.step for m in t.history(run.info.run_id, "dev_score")]
        assert steps == sorted(set(steps)), (run.info.run_name, steps)
    assert all(u.startswith(moved.resolve().as_uri()) for u in _artifact_uris(moved))
