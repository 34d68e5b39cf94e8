"""The driver's MLflow writer with an outage breaker; the local records are what it falls back on.

Each trial event is written to the local record first (``records``), then to MLflow through
``GuardedTracker``. When the store is down, every call would stall Tune's event loop through the
client's retries: after one outage the store is left alone for ``retry_after_s`` and the records are
marked unsynced, so ``peft-sweep sync`` fills MLflow later. Ray-free: the Tune callback only dispatches
to these.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from .records import SweepRecords
from .tracking import Tracker, is_outage


class GuardedTracker:
    """``Tracker``'s trial calls, each guarded: an outage marks the record unsynced and opens the breaker
    (one warning per driver); the store answering "no" is reported and skipped; anything else (a bug in
    our code) raises as it would without MLflow."""

    retry_after_s = 30.0  # how long a store that failed is left alone

    def __init__(self, tracker: Tracker, local: SweepRecords, clock: Callable[[], float] = time.time):
        self.tracker, self.local, self.clock = tracker, local, clock
        self.down_until = 0.0
        self.warned = False

    def start_trial(self, key: str, trial: dict[str, Any], over: bool = False) -> None:
        self.tracker.pending_starts[key] = over  # kept if the call is skipped or fails: the next call starts it
        self._call(key, self.tracker.start_trial, key, trial, "", over)

    def log_eval(self, key: str, point: dict[str, Any], trial: dict[str, Any]) -> None:
        self._call(key, self.tracker.log_eval, key, point, trial)

    def finish(self, key: str, result: dict[str, Any], trial: dict[str, Any], tags: dict[str, Any]) -> None:
        self._call(key, self.tracker.finish, key, result, trial, tags)

    def log_model(self, key: str, folder: Path, trial: dict[str, Any]) -> None:
        if not self._call(key, self.tracker.log_model, key, folder, trial):
            self.local.model_missed(key)  # `sync` logs it from the trial's last checkpoint in Tune's storage

    def fail(self, key: str, error: str, trial: dict[str, Any]) -> None:
        self._call(key, self.tracker.fail, key, error, trial)

    def _call(self, key: str, fn: Callable[..., Any], *args: Any) -> bool:
        """Whether the call reached the store."""
        if self.clock() < self.down_until:
            self.local.unsynced(key)
            return False
        try:
            fn(*args)
            return True
        except Exception as exc:
            self.local.unsynced(key)
            if not is_outage(exc):
                if type(exc).__module__.startswith("mlflow"):  # the store answered "no": say so, go on
                    sweep_dir = self.local.sweep_dir
                    print(f"ERROR: MLflow refused a call for trial {key}: {exc}; the local record keeps it, "
                          f"`peft-sweep sync {sweep_dir}` retries", file=sys.stderr, flush=True)
                    return False
                raise
            self.down_until = self.clock() + self.retry_after_s
            if not self.warned:
                sweep_dir = self.local.sweep_dir
                print(f"WARNING: tracking store unreachable ({type(exc).__name__}: {exc}); trials go on and are "
                      f"kept in {sweep_dir / 'records'}; run `peft-sweep sync {sweep_dir}` later",
                      file=sys.stderr, flush=True)
                self.warned = True
            return False
