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
    """A port free now that the kernel never hands out for a bind to port 0: above Ray's worker ports and below
    the ephemeral range (or above it, where that range starts low). Callers bind it later (a server restarted on
    it after an outage, a cluster's ports): an ephemeral port could be handed to Ray's own servers, or to any
    client socket, meanwhile."""
    first, last = _outside_ephemeral()
    rng = random.SystemRandom()  # not the test's seeded random: two xdist workers would draw the same ports
    for _ in range(200):
        port = rng.randint(first, last)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{last} after 200 tries")


def _outside_ephemeral() -> tuple[int, int]:
    """The widest stretch of ports above Ray's worker ports and outside the kernel's ephemeral range."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2])
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    above_ray = RAY_WORKER_PORTS[1] + 1
    stretches = [(above_ray, low - 1), (max(above_ray, high + 1), 65535)]
    first, last = max(stretches, key=lambda r: r[1] - r[0])
    if last - first < 1000:
        raise RuntimeError(f"the kernel's ephemeral range {low}-{high} leaves no room for a fixed port above "
                           f"{RAY_WORKER_PORTS[1]}")
    return first, last


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
