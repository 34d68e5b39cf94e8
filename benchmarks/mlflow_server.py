"""Start and stop a real `mlflow server` on SQLite (as on a cluster), for benchmarks and tests alike.

It lives here, not in tests/, because benchmarks must not import tests; tests import it from here.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MLFLOW = str(Path(sys.executable).with_name("mlflow"))  # the venv's own CLI, not whatever is on PATH
START_TIMEOUT_S = 90.0


RAY_WORKER_PORTS = (10002, 19999)  # Ray's default --min-worker-port/--max-worker-port


def free_port() -> int:
    """A port free now, between Ray's worker ports and the kernel's ephemeral range. Callers bind it later (a
    server restarted on it after an outage, a cluster's ports): a port the kernel handed out for port 0 could be
    handed again meanwhile, to Ray's own servers or any client socket, whereas this one is never handed out."""
    low = _ephemeral_low()
    rng = random.SystemRandom()  # not the test's seeded random: two xdist workers would draw the same ports
    for _ in range(200):
        port = rng.randint(RAY_WORKER_PORTS[1] + 1, low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {RAY_WORKER_PORTS[1] + 1}-{low - 1} after 200 tries")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where /proc does not say)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
    return low if low > RAY_WORKER_PORTS[1] + 1000 else 32768


def start_server(db: Path, artifacts: Path, port: int, allowed_hosts: str | None = None) -> subprocess.Popen:
    """An `mlflow server` on ``sqlite:///db`` at 127.0.0.1:``port``, returned once /health answers;
    ``allowed_hosts``: its --allowed-hosts (MLflow 3's default: localhost and private IPs)."""
    extra = ["--allowed-hosts", allowed_hosts] if allowed_hosts else []
    proc = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination",
                             str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            # MLflow 3's job runners (eight huey consumers) serve nothing a tracking store needs
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"mlflow server on port {port} did not answer /health within {START_TIMEOUT_S:g} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Kill the server and its workers (its own process group), as an outage would."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
