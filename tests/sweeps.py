"""Helpers for tests that run real sweeps through the CLI in a subprocess (a real local Ray each)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_spec(folder: Path, tiny_model: str, data_dir: Path, **overrides) -> Path:
    spec = {"name": "t", "model": tiny_model, "data": {"dir": str(data_dir)}, "output_dir": str(folder / "runs"),
            "grid": {"methods": ["sam", "bitfit"], "tasks": ["CB"], "seeds": [0, 1]},
            "training": {"batch_size": 8, "eval_batch_size": 32, "max_steps": 6, "eval_every": 3,
                         "max_seq_length": 64},
            "methods": {"sam": {"burnin": 2, "lr": 1e-2}, "bitfit": {"lr": 1e-2}},
            "ray": {"num_cpus": 2}, "max_failures": 1}
    for key, value in overrides.items():
        node = spec
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args: str, timeout: int = 600, check_rc: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    try:
        proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # say where it stood (pytest's repr of the output is cut short)
        out, err = (_text(exc.stdout), _text(exc.stderr))
        raise AssertionError(f"`{' '.join(args[:2])}` still running after {timeout} s\nSTDOUT (last part)\n"
                             f"{out[-6000:]}\nSTDERR (last part)\n{err[-4000:]}") from None
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc {proc.returncode}\nSTDOUT\n{proc.stdout[-4000:]}\nSTDERR\n{proc.stderr[-4000:]}"
    return proc


def here(capsys, *argv: str, rc: int = 0) -> tuple[str, str]:
    """The CLI in this process, for the commands that start no Ray (a subprocess would import torch again, seconds
    of a test each): (stdout, stderr) of a call that must end with ``rc``. Set $RAY_ADDRESS to "" first (as ``cli``
    does), or a ``run`` here would join the cluster it names."""
    from orchestrator.cli import main

    capsys.readouterr()  # only this call's output
    got = main(list(argv))
    out, err = capsys.readouterr()
    assert got == rc, f"rc {got}\nSTDOUT\n{out[-4000:]}\nSTDERR\n{err[-4000:]}"
    return out, err


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _session_alive(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``, from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def kill_sid(sid: int, timeout: float = 60) -> None:
    """SIGKILL every process of session ``sid`` until none is left alive."""
    end = time.time() + timeout
    while alive := _session_alive(sid):
        assert time.time() < end, f"processes of session {sid} still alive after {timeout} s: {alive}"
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def kill_session(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL a spawned driver and every process it started, all at once, as a lost machine stops. ``killpg``
    is not enough: Ray's workers run in process groups of their own and go on writing (checkpoints, records)
    for a moment after their raylet died. They stay in the driver's session, which ``spawn`` started."""
    kill_sid(proc.pid, timeout)
    proc.wait()


def tracker(sweep_dir: Path):
    from orchestrator.sweep import load_sweep, tracker_for

    return tracker_for(load_sweep(sweep_dir))


def assert_each_trial_once(sweep_dir: Path, n: int) -> None:
    """After a rerun: ``n`` trials, each one FINISHED MLflow child run (no duplicate from the interrupted run) and
    one row of the export."""
    import pandas as pd

    from orchestrator.cli import main

    t = tracker(sweep_dir)
    runs = t.trial_runs()
    assert len(runs) == n and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert len(t.search("tags.role = 'trial'")) == n  # one child run per key
    assert main(["export", str(sweep_dir)]) == 0
    trials = pd.read_parquet(sweep_dir / "export" / "trials.parquet")
    assert len(trials) == trials["trial_key"].nunique() == n


def records(sweep_dir: Path) -> dict[str, dict]:
    folder = sweep_dir / "records"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.is_dir() else {}


def wait_for(predicate, proc, what: str = "the kill point", timeout=300):
    """Poll until ``predicate()`` holds while the spawned sweep ``proc`` still runs (a kill point)."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        assert proc.poll() is None, f"the sweep ended before {what}:\n" + proc.stdout.read()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"{what}: not reached")


def state_knows_a_checkpoint(experiment_dir: Path, key: str) -> bool:
    """Tune's newest saved experiment state in a local experiment folder holds a checkpoint of trial ``key`` taken
    before its end: what a restore resumes from (a checkpoint folder on disk is not enough, the snapshot can lag
    behind it; and a final one would restore the trial as ended, resuming nothing)."""
    states = sorted(experiment_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    return bool(states) and state_text_knows_a_checkpoint(states[-1].read_text(), key)


def state_text_knows_a_checkpoint(state_text: str, key: str) -> bool:
    """The same test on the text of one saved experiment state, wherever it was read from (disk, a bucket)."""
    try:
        state = json.loads(state_text)
    except ValueError:  # being written
        return False
    for _, run_metadata in state["trial_data"]:
        last = json.loads(run_metadata).get("last_result") or {}
        if (last.get("config") or {}).get("trial", {}).get("trial_key") == key and last.get("checkpoint_dir_name") \
                and not last.get("final"):
            return True
    return False
