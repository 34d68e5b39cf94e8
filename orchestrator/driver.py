"""The driver of a sweep, as seen from its folder: who runs it (``driver.json``) and a request to stop it
(``STOP``).

A stop is asked for with a file rather than a signal so that it reaches a driver on any host that sees the
sweep folder, including one started by ``ray job submit``; the driver's Tune callback polls for it and then
stops Tune the way Ctrl-C does (experiment state saved, running trials resumable from their checkpoints).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

DRIVER_FILE = "driver.json"
STOP_FILE = "STOP"


def register(sweep_dir: Path) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "ray_job": os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_SUBMISSION_ID")}
    (sweep_dir / DRIVER_FILE).write_text(json.dumps(info))
    clear_stop(sweep_dir)  # a stop asked of an earlier driver is not meant for this one


def unregister(sweep_dir: Path) -> None:
    (sweep_dir / DRIVER_FILE).unlink(missing_ok=True)
    clear_stop(sweep_dir)


def info(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / DRIVER_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def alive(sweep_dir: Path) -> bool:
    """A driver whose process still exists; one on another host is assumed alive (we cannot look)."""
    found = info(sweep_dir)
    if found is None:
        return False
    if found.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(found["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


def request_stop(sweep_dir: Path) -> None:
    (sweep_dir / STOP_FILE).write_text(json.dumps({"asked": time.time(), "by": socket.gethostname()}))


def stop_requested(sweep_dir: Path) -> bool:
    return (sweep_dir / STOP_FILE).exists()


def clear_stop(sweep_dir: Path) -> None:
    (sweep_dir / STOP_FILE).unlink(missing_ok=True)
