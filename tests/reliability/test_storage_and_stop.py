"""Tune storage shared by sweeps, in an S3-compatible bucket, across a driver's death; `peft-sweep stop`,
`list` and `status --watch` on a running sweep. Real Ray, real MLflow (SQLite), a real S3 API (moto's server)."""
import json
import logging
import os
import signal
import time

import pytest

from tests.sweeps import cli, free_port, records, spawn, tracker, write_spec

pytestmark = pytest.mark.slow
BUCKET = "sweeps"


@pytest.fixture
def s3(monkeypatch):
    """An S3-compatible endpoint in this process; the sweeps' drivers and Ray workers find it through
    AWS_ENDPOINT_URL, as pyarrow (Tune's storage layer) reads it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()


@pytest.fixture
def spawned():
    """``spawn`` whose process group is killed at teardown if the test left it running."""
    procs = []

    def start(*args: str):
        procs.append(spawn(*args))
        return procs[-1]
    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _objects(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _wait_for(predicate, proc, what: str, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        assert proc.poll() is None, f"the sweep ended before {what}:\n" + proc.stdout.read()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"{what}: not reached")


def _running_with_checkpoint(sweep_dir, has_checkpoint) -> str | None:
    running = [k for k, r in records(sweep_dir).items() if r.get("status") == "RUNNING"]
    return next((k for k in running if has_checkpoint(k)), None)


def _state_knows_a_checkpoint(client, prefix: str, key: str) -> bool:
    """Tune's saved experiment state in the bucket holds a checkpoint of trial ``key`` (what a restore uses)."""
    states = sorted(o for o in _objects(client, prefix) if o.rsplit("/", 1)[-1].startswith("experiment_state"))
    if not states:
        return False
    state = json.loads(client.get_object(Bucket=BUCKET, Key=states[-1])["Body"].read())
    for _, run_metadata in state["trial_data"]:
        last = json.loads(run_metadata).get("last_result") or {}
        if (last.get("config") or {}).get("trial", {}).get("trial_key") == key and last.get("checkpoint_dir_name"):
            return True
    return False


def test_sweeps_sharing_an_s3_root_resume_only_their_own(s3, spawned, tmp_path, tiny_model, data_dir):
    root = f"s3://{BUCKET}/tune"
    common = {"training__max_steps": 24, "training__eval_every": 3, "resources": {"max_concurrent": 1},
              "ray": {"num_cpus": 2, "storage_path": root}}
    grid = {"methods": ["sam"], "tasks": ["CB"], "seeds": [0, 1]}
    spec_a = write_spec(tmp_path / "a", tiny_model, data_dir, name="a", grid=grid, fault={"step_delay_s": 0.25},
                        **common)
    spec_b = write_spec(tmp_path / "b", tiny_model, data_dir, name="b", grid={**grid, "seeds": [0]}, **common)
    dir_a = tmp_path / "a" / "runs" / "a"
    saved = lambda k: _state_knows_a_checkpoint(s3, "tune/a/exp-001/", k)  # noqa: E731
    proc = spawned("run", str(spec_a))
    _wait_for(lambda: any(r.get("status") == "FINISHED" for r in records(dir_a).values())
              and _running_with_checkpoint(dir_a, saved), proc, "a finished trial and a checkpointed one")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray, as a lost head node would
    proc.wait()
    before = records(dir_a)
    interrupted = [k for k, r in before.items() if r.get("status") == "RUNNING"]
    finished = {k: r["result"] for k, r in before.items() if r.get("status") == "FINISHED"}
    assert len(interrupted) == 1 and len(finished) == 1

    out_b = cli("run", str(spec_b), check_rc=0).stdout  # same storage root while A is interrupted
    assert "resuming" not in out_b and "1/1 FINISHED" in out_b
    assert {o.split("/")[2] for o in _objects(s3, "tune/b/")} - {""} == {"exp-001"}  # its own namespace

    write_spec(tmp_path / "a", tiny_model, data_dir, name="a", grid=grid, **common)  # no delay now (not a result field)
    out_a = cli("run", str(spec_a), check_rc=0).stdout
    assert "resuming the interrupted experiment exp-001" in out_a and "2/2 FINISHED" in out_a
    after = records(dir_a)
    assert after[interrupted[0]]["result"]["resumed_from_step"] > 0, after[interrupted[0]]["result"]
    for key, result in finished.items():
        assert after[key]["result"] == result  # nothing ran twice
    runs = tracker(dir_a).trial_runs()
    assert len(runs) == 2 and {r.data.tags["attempt"] for r in runs.values()} == {"1"}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}


def test_stop_leaves_trials_resumable_and_nothing_running(spawned, capsys, monkeypatch, tmp_path, tiny_model,
                                                          data_dir):
    from orchestrator.cli import main

    monkeypatch.setenv("RAY_ADDRESS", "")
    spec = write_spec(tmp_path, tiny_model, data_dir, training__max_steps=60, training__eval_every=3,
                      resources={"max_concurrent": 1}, fault={"step_delay_s": 0.3},
                      grid={"methods": ["sam"], "tasks": ["CB"], "seeds": [0, 1]})
    sweep_dir = tmp_path / "runs" / "t"
    ckpt = lambda k: any(k in str(p) for p in (sweep_dir / "tune").rglob("checkpoint_*"))  # noqa: E731
    proc = spawned("run", str(spec))
    _wait_for(lambda: _running_with_checkpoint(sweep_dir, ckpt), proc, "a checkpointed running trial")

    watch = spawned("status", str(sweep_dir), "--watch", "--interval", "0.5")  # a line per interval off a terminal
    first = watch.stdout.readline()
    assert "running 1 |" in first and "driver alive" in first, first
    # in this process (no interpreter start-up): the trial must still be running when the stop arrives
    assert main(["list", str(tmp_path / "runs"), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["sweep"], r["total"], r["driver"], r.get("RUNNING")) for r in listed] == [("t", 2, "alive", 1)]
    assert main(["stop", str(sweep_dir), "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert "stopped:" in out and "resume with: peft-sweep run" in out
    assert proc.wait(timeout=60) == 0
    assert "left resumable from their last checkpoints" in proc.stdout.read()
    watched = watch.communicate(timeout=60)[0]
    assert watch.returncode == 0 and "driver not running" in watched.splitlines()[-1]

    statuses = {k: r["status"] for k, r in records(sweep_dir).items()}
    stopped = [k for k, s in statuses.items() if s == "STOPPED"]
    assert stopped and set(statuses.values()) <= {"FINISHED", "STOPPED"}
    tr = tracker(sweep_dir)
    runs = tr.trial_runs()
    assert "RUNNING" not in {r.info.status for r in runs.values()} and tr.parent_status() == "KILLED"
    assert {runs[k].info.status for k in stopped} == {"KILLED"}
    stopped_run = {k: runs[k].info.run_id for k in stopped}

    write_spec(tmp_path, tiny_model, data_dir, training__max_steps=60, training__eval_every=3,
               resources={"max_concurrent": 1}, grid={"methods": ["sam"], "tasks": ["CB"], "seeds": [0, 1]})
    out = cli("run", str(spec), check_rc=0).stdout
    assert "resuming the interrupted experiment exp-001" in out and "2/2 FINISHED" in out
    after = records(sweep_dir)
    runs = tracker(sweep_dir).trial_runs()
    for key, run_id in stopped_run.items():
        assert after[key]["result"]["resumed_from_step"] > 0
        assert runs[key].info.run_id == run_id and runs[key].info.status == "FINISHED"  # reopened, not a new run
