"""A real two-node local Ray cluster, started once for this module: `ray job submit` runs a sweep; every node
is checked before anything starts; sweeps sharing an S3 root (moto's server) resume only their own trials
after the driver dies; `peft-sweep stop`/`list`/`status --watch` on a running sweep; losing the worker node
mid-sweep does not lose the sweep (last: it takes the node away)."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from benchmarks.mlflow_server import free_port
from tests.sweeps import (ROOT, cli, kill_sid, records, spawn, state_text_knows_a_checkpoint, tracker, wait_for,
                          write_spec)

# one xdist worker runs the whole module (one cluster for all); the tests of other modules run beside it
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]
RAY = str(Path(sys.executable).with_name("ray"))
BUCKET = "sweeps"


def test_the_module_keeps_to_one_worker(request):
    """Under `--dist loadgroup` (make test) the module's tests go to one worker, which starts one cluster for them.
    pytest 9.2 with pytest-xdist 3.8 dropped the group silently (pytest-dev/pytest-xdist#1386): each worker then
    started a two-node cluster of its own, 30 s each, and both ran at once on a 2-core CI machine."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@cluster"), f"{request.node.nodeid}: not in the xdist group"


def _start_two_nodes(env: dict, no_data: str) -> dict:
    """A head and a second node that blocks in the foreground (so a test can stop it alone: a lost node), each
    in its own session (a Ray an earlier test started in this process made it a process-group leader whose
    cleanup may signal that group; and a session is what teardown kills) and with its own temp dir: two nodes
    on one machine sharing one garbage-collect each other's runtime-env files, and a head in the default
    /tmp/ray would be the cluster a plain ray.init() of another test joins. The second node's env names a data
    folder that does not exist: trials that read their node's variable instead of the folder the driver
    recorded would fail there. Each node's dashboard agent listens on a free port: on Ray's fixed default (52365)
    the local Ray of a sweep running beside this module (`make test`'s other worker) may hold it, and a head
    whose agent could not bind takes no `ray job submit` ("No available agent to submit job", seen)."""
    gcs, dash = free_port(), free_port()
    head_tmp, worker_tmp = (tempfile.mkdtemp(prefix=p, dir="/tmp") for p in ("rh", "rw"))
    head = subprocess.Popen([RAY, "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}", "--num-cpus=2",
                             "--num-gpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--ray-client-server-port={free_port()}", f"--temp-dir={head_tmp}",
                             f"--dashboard-agent-listen-port={free_port()}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    started = head.communicate(timeout=180)[0]
    if head.returncode != 0:
        kill_sid(head.pid)
        raise RuntimeError(f"ray start --head failed:\n{started[-2000:]}")
    worker = subprocess.Popen([RAY, "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1", "--num-gpus=1", "--block",
                               f"--temp-dir={worker_tmp}", f"--dashboard-agent-listen-port={free_port()}"],
                              env={**env, "PEFT_SWEEP_DATA_DIR": no_data},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    nodes = {"gcs": gcs, "address": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}", "worker": worker,
             "sessions": [head.pid, worker.pid], "temp_dirs": [head_tmp, worker_tmp]}
    deadline = time.time() + 90
    while time.time() < deadline:
        out = subprocess.run([RAY, "status", f"--address=127.0.0.1:{gcs}"], capture_output=True, text=True, env=env)
        if out.stdout.count("node_") >= 2:
            time.sleep(3)  # and both still there a moment later
            again = subprocess.run([RAY, "status", f"--address=127.0.0.1:{gcs}"], capture_output=True, text=True,
                                   env=env)
            if again.stdout.count("node_") >= 2:
                return nodes
        time.sleep(2)
    _stop_nodes(nodes)
    raise RuntimeError("the second node did not join:\n" + out.stdout + out.stderr[-2000:])


def _stop_nodes(nodes: dict) -> None:
    # each node's daemons and workers stay in the session its `ray start` began (`ray stop` would stop every Ray
    # on the machine, the local Rays of tests running beside this module too)
    for sid in nodes["sessions"]:
        kill_sid(sid)
    for folder in nodes["temp_dirs"]:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    s3_port = free_port()
    # Ray 2.60 turns token auth on at `ray start --head`; every node and client must then ask for it. The nodes'
    # workers find the test's S3 endpoint (started later, on s3_port) the way pyarrow reads it, from the env
    s3_env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "AWS_ACCESS_KEY_ID": "test",
              "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token", **s3_env}
    no_data = str(tmp_path_factory.mktemp("worker") / "no-data-here")
    try:
        nodes = _start_two_nodes(env, no_data)
    except RuntimeError as first:  # a start-up that lost a process: once more, then say what happened
        print(f"cluster start failed once ({first}); retrying", file=sys.stderr)
        nodes = _start_two_nodes(env, no_data)
    yield {**nodes, "env": env, "s3_env": s3_env, "no_data": no_data}
    _stop_nodes(nodes)


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    """Drivers started by the test (subprocesses or in-process CLI calls) reach the cluster."""
    for k, v in cluster["env"].items():
        if k.startswith(("RAY_AUTH", "AWS_")):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("RAY_ADDRESS", "")
    return cluster


@pytest.fixture
def s3(cluster, on_cluster):
    """An S3-compatible endpoint (moto) in this process, where the cluster's nodes expect it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = int(cluster["s3_env"]["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=cluster["s3_env"]["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()


def _submit(cluster, spec: Path, extra_env: dict) -> subprocess.CompletedProcess:
    runtime_env = {"excludes": [".venv", "runs", ".cache", ".git", "**/__pycache__"],
                   "env_vars": {"PEFT_SWEEP_DATA_DIR": os.environ["PEFT_SWEEP_DATA_DIR"],
                                "PEFT_SWEEP_CACHE_DIR": os.environ["PEFT_SWEEP_CACHE_DIR"], **extra_env}}
    for _ in range(6):  # a loaded machine: the head's job agent may not be up yet, and Ray says to try again
        out = subprocess.run([RAY, "job", "submit", "--address", cluster["dashboard"], "--working-dir", str(ROOT),
                              "--runtime-env-json", json.dumps(runtime_env), "--",
                              sys.executable, "-m", "orchestrator", "run", str(spec)],
                             capture_output=True, text=True, env=cluster["env"], timeout=900)
        if "No available agent to submit job" not in out.stderr:
            return out
        time.sleep(10)
    return out


def test_ray_job_submit_on_a_two_node_cluster(cluster, tmp_path, tiny_model, data_dir):
    spec = write_spec(tmp_path, tiny_model, data_dir, resources={"gpu_per_trial": 0.5, "cpu_per_trial": 1},
                      ray={"num_cpus": None})
    out = _submit(cluster, spec, {})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "4/4 FINISHED" in out.stdout
    assert {r["status"] for r in records(tmp_path / "runs" / "t").values()} == {"FINISHED"}


def test_more_cpus_than_the_largest_node_has_is_refused_before_anything_is_written(cluster, tmp_path, tiny_model,
                                                                                   data_dir):
    # 3 CPUs in all, 2 on the largest node: a trial asking for 3 could never start, though the sum would allow it
    spec = write_spec(tmp_path, tiny_model, data_dir, resources__cpu_per_trial=3,
                      ray={"address": f"127.0.0.1:{cluster['gcs']}"})
    out = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(spec)], cwd=ROOT, capture_output=True,
                         text=True, env=cluster["env"], timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "resources.cpu_per_trial 3" in out.stderr and "the largest node" in out.stderr and "2 CPU(s)" in out.stderr
    assert "ray.autoscaling: true" in out.stderr
    assert not (tmp_path / "runs" / "t").exists()


def test_an_autoscaling_cluster_may_be_smaller_than_a_trial_for_now(on_cluster, tmp_path, tiny_model, data_dir):
    """GPU workers that scale from zero: Tune's resource request makes the autoscaler start one, so the check
    warns instead of refusing. In a process of its own: Ray keeps the auth mode of a process's first Ray (an
    earlier test's local one, without token auth), and this cluster wants a token (InvalidAuthToken, seen when
    the outage tests ran first in the same process)."""
    spec = write_spec(tmp_path, tiny_model, data_dir, resources__cpu_per_trial=3,
                      ray={"address": on_cluster["address"], "autoscaling": True})
    code = ("import sys, ray\nfrom orchestrator.spec import load_spec\nfrom orchestrator.tune_runner import init_ray\n"
            "try:\n    init_ray(load_spec(sys.argv[1]))\nfinally:\n    ray.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", code, str(spec)], cwd=ROOT, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "WARNING: resources.cpu_per_trial 3: the largest node" in out.stderr, out.stderr[-3000:]
    assert "wait for the autoscaler" in out.stderr


def test_relative_paths_are_refused_with_a_cluster_address(on_cluster, tmp_path, tiny_model, data_dir,
                                                           monkeypatch, capsys):
    from orchestrator.cli import main

    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_model, data_dir, output_dir="runs", ray={"address": on_cluster["address"]})
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "output_dir 'runs' is relative" in err and "absolute path" in err
    assert not (tmp_path / "runs").exists()


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


def _running_with_checkpoint(sweep_dir, has_checkpoint) -> str | None:
    running = [k for k, r in records(sweep_dir).items() if r.get("status") == "RUNNING"]
    return next((k for k in running if has_checkpoint(k)), None)


def _state_knows_a_checkpoint(client, prefix: str, key: str) -> bool:
    """Tune's newest saved experiment state in the bucket holds a checkpoint of trial ``key`` (what a restore uses)."""
    states = sorted(o for o in _objects(client, prefix) if o.rsplit("/", 1)[-1].startswith("experiment_state"))
    return bool(states) and state_text_knows_a_checkpoint(
        client.get_object(Bucket=BUCKET, Key=states[-1])["Body"].read().decode(), key)


def test_sweeps_sharing_an_s3_root_resume_only_their_own(s3, on_cluster, spawned, tmp_path, tiny_model,
                                                         data_dir):
    root = f"s3://{BUCKET}/tune"
    common = {"training__max_steps": 24, "training__eval_every": 3, "resources": {"max_concurrent": 1},
              "ray": {"address": on_cluster["address"], "storage_path": root}}
    grid = {"methods": ["sam"], "tasks": ["CB"], "seeds": [0, 1]}
    spec_a = write_spec(tmp_path / "a", tiny_model, data_dir, name="a", grid=grid, fault={"step_delay_s": 0.25},
                        **common)
    spec_b = write_spec(tmp_path / "b", tiny_model, data_dir, name="b", grid={**grid, "seeds": [0]}, **common)
    dir_a = tmp_path / "a" / "runs" / "a"
    saved = lambda k: _state_knows_a_checkpoint(s3, "tune/a/exp-001/", k)  # noqa: E731
    proc = spawned("run", str(spec_a))
    wait_for(lambda: any(r.get("status") == "FINISHED" for r in records(dir_a).values())
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


def test_stop_leaves_trials_resumable_and_nothing_running(on_cluster, spawned, capsys, tmp_path, tiny_model,
                                                          data_dir):
    from orchestrator.cli import main

    spec = write_spec(tmp_path, tiny_model, data_dir, training__max_steps=60, training__eval_every=3,
                      resources={"max_concurrent": 1}, fault={"step_delay_s": 0.3},
                      ray={"address": on_cluster["address"]},
                      grid={"methods": ["sam"], "tasks": ["CB"], "seeds": [0, 1]})
    sweep_dir = tmp_path / "runs" / "t"
    ckpt = lambda k: any(k in str(p) for p in (sweep_dir / "tune").rglob("checkpoint_*"))  # noqa: E731
    proc = spawned("run", str(spec))
    wait_for(lambda: _running_with_checkpoint(sweep_dir, ckpt), proc, "a checkpointed running trial")

    watch = spawned("status", str(sweep_dir), "--watch", "--interval", "0.5")  # a line per interval off a terminal
    seen = [watch.stdout.readline() for _ in range(3)]  # a line may fall in the moment between two trials
    assert any("running 1 |" in line and "driver alive" in line for line in seen), seen
    # in this process (no interpreter start-up): the trial must still be running when the stop arrives
    assert main(["list", str(tmp_path / "runs"), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["sweep"], r["total"], r["driver"], r.get("RUNNING")) for r in listed] == [("t", 2, "alive", 1)]
    assert main(["stop", str(sweep_dir), "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert "stopped:" in out and "resume with: peft-sweep run" in out
    assert proc.wait(timeout=60) == 0
    driver_out = proc.stdout.read()
    assert "STOPPED (resumable, from their last checkpoint where they saved one, else from step 0)" in driver_out
    assert "/2 FINISHED; resume with" in driver_out  # the whole sweep, not only this run
    assert "Tuner.restore" not in driver_out  # Tune's own resume advice would bypass the tool's checks
    watched = watch.communicate(timeout=60)[0]
    assert watch.returncode == 0 and "driver not running" in watched.splitlines()[-1]

    statuses = {k: r["status"] for k, r in records(sweep_dir).items()}
    stopped = [k for k, s in statuses.items() if s == "STOPPED"]
    assert stopped and set(statuses.values()) <= {"FINISHED", "STOPPED"}
    # the driver's counts are the records' (and `status`'s): a trial that never started is "not started"
    assert f"{len(stopped)} STOPPED (resumable" in driver_out
    assert (f"{2 - len(statuses)} not started" in driver_out) == (len(statuses) < 2), driver_out
    tr = tracker(sweep_dir)
    runs = tr.trial_runs()
    assert "RUNNING" not in {r.info.status for r in runs.values()} and tr.parent_status() == "KILLED"
    assert {runs[k].info.status for k in stopped} == {"KILLED"}
    stopped_run = {k: runs[k].info.run_id for k in stopped}

    write_spec(tmp_path, tiny_model, data_dir, training__max_steps=60, training__eval_every=3,
               resources={"max_concurrent": 1}, grid={"methods": ["sam"], "tasks": ["CB"], "seeds": [0, 1]},
               ray={"address": on_cluster["address"]})
    out = cli("run", str(spec), check_rc=0).stdout
    assert "resuming the interrupted experiment exp-001" in out and "2/2 FINISHED" in out
    after = records(sweep_dir)
    runs = tracker(sweep_dir).trial_runs()
    for key, run_id in stopped_run.items():
        assert after[key]["result"]["resumed_from_step"] > 0
        assert runs[key].info.run_id == run_id and runs[key].info.status == "FINISHED"  # reopened, not a new run


def test_sweep_survives_losing_the_worker_node(cluster, tmp_path, tiny_model, data_dir):
    # one CPU per trial: the three run at once, so one runs on the worker node when it goes; trials long enough
    # (120 steps, a checkpoint every 3) that it is still running then. The spec leaves data.dir to the driver's
    # $PEFT_SWEEP_DATA_DIR; the worker node's own variable names no folder: its trial reads the folder the
    # driver recorded in spec.yaml, so it runs until the node goes
    spec = write_spec(tmp_path, tiny_model, data_dir, training__max_steps=120, training__eval_every=3,
                      grid={"methods": ["sam", "bitfit", "full"], "tasks": ["CB"], "seeds": [0]},
                      max_failures=3, ray={"num_cpus": None}, data={"dir": None},
                      fault={"step_delay_s": 0.05})  # 6 s or more a trial: still running when the node goes
    env = {**cluster["env"], "RAY_ADDRESS": f"127.0.0.1:{cluster['gcs']}", "PYTHONUNBUFFERED": "1",
           "PEFT_SWEEP_DATA_DIR": str(data_dir)}
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(spec)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep_dir = tmp_path / "runs" / "t"
    deadline = time.time() + 300
    while sum(r.get("status") == "RUNNING" for r in records(sweep_dir).values()) < 3:
        assert time.time() < deadline and driver.poll() is None, "the three trials never ran at once"
        time.sleep(0.5)
    time.sleep(1)
    os.killpg(cluster["worker"].pid, signal.SIGTERM)  # the node stops, with the trials running on it
    out, _ = driver.communicate(timeout=900)
    assert driver.returncode == 0, out[-5000:]
    assert "3/3 FINISHED" in out
    # the worker's trial moved to the head node: from its checkpoint, or from step 0 if it had none yet (the line
    # says which: it claimed a checkpoint either way before)
    assert ("failed, retrying from its last checkpoint" in out
            or "failed, retrying from step 0 (it had no checkpoint)" in out)
    assert cluster["no_data"] not in out  # no trial read the worker's own (missing) data folder
    assert yaml.safe_load((sweep_dir / "spec.yaml").read_text())["data"]["dir"] == str(data_dir)
