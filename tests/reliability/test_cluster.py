"""A real two-node local Ray cluster: `ray job submit` runs a sweep; losing the worker node mid-sweep
does not lose the sweep."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks.mlflow_server import free_port
from tests.sweeps import ROOT, records, write_spec

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))



@pytest.fixture
def cluster(tmp_path):
    gcs, dash = free_port(), free_port()
    # Ray 2.60 turns token auth on at `ray start --head`; every node and client must then ask for it
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token"}
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=60)
    subprocess.run([RAY, "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}", "--num-cpus=2",
                    "--num-gpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1"],
                   check=True, capture_output=True, env=env, timeout=180)
    # the second node blocks in the foreground, so the test can stop it alone (a lost node). Its own temp dir:
    # two nodes on one machine sharing one would garbage-collect each other's runtime-env files (the job's cwd)
    worker_tmp = tempfile.mkdtemp(prefix="rw", dir="/tmp")
    worker = subprocess.Popen([RAY, "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1", "--num-gpus=1", "--block",
                               f"--temp-dir={worker_tmp}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        out = subprocess.run([RAY, "status", f"--address=127.0.0.1:{gcs}"], capture_output=True, text=True, env=env)
        if out.stdout.count("node_") >= 2:
            break
        time.sleep(2)
    else:
        pytest.fail("the second node did not join:\n" + out.stdout)
    yield {"gcs": gcs, "dashboard": f"http://127.0.0.1:{dash}", "worker": worker, "env": env}
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
    shutil.rmtree(worker_tmp, ignore_errors=True)


def _submit(cluster, spec: Path, extra_env: dict) -> subprocess.CompletedProcess:
    runtime_env = {"excludes": [".venv", "runs", ".cache", ".git", "**/__pycache__"],
                   "env_vars": {"PEFT_SWEEP_DATA_DIR": os.environ["PEFT_SWEEP_DATA_DIR"],
                                "PEFT_SWEEP_CACHE_DIR": os.environ["PEFT_SWEEP_CACHE_DIR"], **extra_env}}
    return subprocess.run([RAY, "job", "submit", "--address", cluster["dashboard"], "--working-dir", str(ROOT),
                           "--runtime-env-json", json.dumps(runtime_env), "--",
                           sys.executable, "-m", "orchestrator", "run", str(spec)],
                          capture_output=True, text=True, env=cluster["env"], timeout=900)


def test_ray_job_submit_on_a_two_node_cluster(cluster, tmp_path, tiny_model, data_dir):
    spec = write_spec(tmp_path, tiny_model, data_dir, resources={"gpu_per_trial": 0.5, "cpu_per_trial": 1},
                      ray={"num_cpus": None})
    out = _submit(cluster, spec, {})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "4/4 FINISHED" in out.stdout
    assert {r["status"] for r in records(tmp_path / "runs" / "t").values()} == {"FINISHED"}


def test_sweep_survives_losing_the_worker_node(cluster, tmp_path, tiny_model, data_dir):
    # one CPU per trial: three run at once, so one runs on the worker node when it goes; trials long enough
    # (120 steps, a checkpoint every 3) that it is still running then
    spec = write_spec(tmp_path, tiny_model, data_dir, training__max_steps=120, training__eval_every=3,
                      grid={"methods": ["sam", "bitfit", "full"], "tasks": ["CB"], "seeds": [0, 1]},
                      max_failures=3, ray={"num_cpus": None})
    env = {**cluster["env"], "RAY_ADDRESS": f"127.0.0.1:{cluster['gcs']}", "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(spec)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep_dir = tmp_path / "runs" / "t"
    deadline = time.time() + 300
    while time.time() < deadline and sum(r.get("status") == "RUNNING" for r in records(sweep_dir).values()) < 3:
        time.sleep(0.5)
    time.sleep(1)
    os.killpg(cluster["worker"].pid, signal.SIGTERM)  # the node stops, with the trials running on it
    out, _ = driver.communicate(timeout=900)
    assert driver.returncode == 0, out[-5000:]
    assert "6/6 FINISHED" in out
    assert "retrying from its last checkpoint" in out  # the worker's trial moved to the head node


def test_more_gpus_than_the_cluster_has_is_refused_before_anything_is_written(cluster, tmp_path, tiny_model,
                                                                             data_dir):
    spec = write_spec(tmp_path, tiny_model, data_dir, resources__gpu_per_trial=4,
                      ray={"address": f"127.0.0.1:{cluster['gcs']}"})
    out = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(spec)], cwd=ROOT, capture_output=True,
                         text=True, env=cluster["env"], timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "resources.gpu_per_trial 4" in out.stderr and "3 GPU(s) in all" in out.stderr
    assert not (tmp_path / "runs" / "t").exists()
