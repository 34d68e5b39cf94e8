"""The driver of a sweep, as seen from its folder: who runs it (``driver.json``), a request to stop it
(``STOP``) or to drain it (``DRAIN``: running trials finish, no new one starts), and what happens when it is
terminated (SIGTERM: ``ray job stop``, a scheduler).

A stop is asked for with a file rather than a signal so that it reaches a driver on any host that sees the
sweep folder, including one started by ``ray job submit``; the driver's Tune callback polls for it and then
stops Tune the way Ctrl-C does (experiment state saved, running trials resumable from their checkpoints).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

DRIVER_FILE = "driver.json"
STOP_FILE = "STOP"
DRAIN_FILE = "DRAIN"
TERMINATED_LOG = "terminated.log"  # what the stop started on SIGTERM printed


HEARTBEAT_S = 30.0  # the driver rewrites its file this often while Tune runs
STALE_S = 300.0  # a driver on another host whose file is older than this is taken for dead


def ray_job() -> str | None:
    """The submission id of the Ray job this driver runs as, if any. Ray's job supervisor passes it to the
    entrypoint only inside RAY_JOB_CONFIG_JSON_ENV_VAR's metadata (ray/dashboard/modules/job/job_supervisor.py,
    ``_get_driver_env_vars``): no variable of its own."""
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        return (config.get("metadata") or {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None


def register(sweep_dir: Path) -> None:
    now = time.time()
    _write(sweep_dir, {"pid": os.getpid(), "host": socket.gethostname(), "started": now, "beat": now,
                       "ray_job": ray_job()})
    clear_stop(sweep_dir)  # a stop asked of an earlier driver is not meant for this one


def beat(sweep_dir: Path) -> None:
    """Say this driver still lives (hosts that cannot see its process read the time)."""
    found = info(sweep_dir)
    if found is not None and _is_mine(found):
        _write(sweep_dir, {**found, "beat": time.time()})


def unregister(sweep_dir: Path) -> None:
    found = info(sweep_dir)
    if found is None or _is_mine(found):  # never remove another driver's file
        (sweep_dir / DRIVER_FILE).unlink(missing_ok=True)
        clear_stop(sweep_dir)


def _is_mine(found: dict[str, Any]) -> bool:
    return found.get("pid") == os.getpid() and found.get("host") == socket.gethostname()


def _write(sweep_dir: Path, data: dict[str, Any]) -> None:
    tmp = sweep_dir / f".{DRIVER_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, sweep_dir / DRIVER_FILE)


def info(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / DRIVER_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def alive(sweep_dir: Path) -> bool:
    """A driver whose process still exists; on another host, one whose heartbeat is recent. A process that
    started after the driver registered only took its pid (a container restarted in place counts pids from 1
    again): the driver is gone."""
    found = info(sweep_dir)
    if found is None:
        return False
    if found.get("host") != socket.gethostname():
        return time.time() - float(found.get("beat") or found.get("started") or 0) < STALE_S
    try:
        os.kill(int(found["pid"]), 0)
    except PermissionError:
        pass  # it exists, as another user's process
    except (OSError, ValueError, KeyError):
        return False
    created = _started_at(int(found["pid"]))
    return created is None or created <= float(found.get("started") or created) + 1.0


def _started_at(pid: int) -> float | None:
    """When process ``pid`` started (Unix time); None where that cannot be read."""
    try:
        import psutil
    except ImportError:  # a node with only Ray's own copy (on sys.path once ray is imported)
        return None
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two readings of driver.json are the same driver (its heartbeat rewrites the file)."""
    keys = ("pid", "host", "started")
    return bool(a) and bool(b) and all(a.get(k) == b.get(k) for k in keys)


def describe(sweep_dir: Path) -> str:
    found = info(sweep_dir) or {}
    return f"pid {found.get('pid')} on {found.get('host')}" + (f", Ray job {found['ray_job']}"
                                                               if found.get("ray_job") else "")


def request_stop(sweep_dir: Path) -> None:
    (sweep_dir / STOP_FILE).write_text(json.dumps({"asked": time.time(), "by": socket.gethostname()}))


def stop_requested(sweep_dir: Path) -> bool:
    return (sweep_dir / STOP_FILE).exists()


def request_drain(sweep_dir: Path) -> None:
    (sweep_dir / DRAIN_FILE).write_text(json.dumps({"asked": time.time(), "by": socket.gethostname()}))


def drain_requested(sweep_dir: Path) -> bool:
    return (sweep_dir / DRAIN_FILE).exists()


def clear_stop(sweep_dir: Path) -> None:
    """Forget a stop and a drain: both were asked of the driver that just ended (or one that starts now)."""
    (sweep_dir / STOP_FILE).unlink(missing_ok=True)
    (sweep_dir / DRAIN_FILE).unlink(missing_ok=True)


@contextmanager
def leave_resumable_when_terminated(sweep_dir: Path) -> Iterator[None]:
    """While it runs, SIGTERM starts ``peft-sweep stop`` in a session of its own and the driver then dies of the
    signal as before. ``ray job stop`` sends SIGTERM and a SIGKILL 3 s later (Ray's RAY_JOB_STOP_WAIT_TIME_S), too
    soon for Tune to stop its trials and for MLflow calls that the signal may have cut in half to finish. The stop
    outlives the driver, waits for it to be gone and marks what it left RUNNING as after any driver death: records
    STOPPED, MLflow runs and the parent KILLED; the next `run` resumes. (Off the main thread no handler can be set,
    and nothing changes.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame) -> None:
        try:
            with open(sweep_dir / TERMINATED_LOG, "ab") as log:
                subprocess.Popen([sys.executable, "-m", "orchestrator", "stop", str(sweep_dir), "--timeout", "120"],
                                 start_new_session=True, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:  # die of the signal whatever happened above: that is what was asked
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)
