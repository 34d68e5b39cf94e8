"""Local trial records (SWEEP_DIR/records/<trial_key>.json), written by the driver before MLflow.

They make the tracking store rebuildable: if MLflow is down while trials finish, nothing is lost, and
``peft-sweep sync`` (or the next run) fills MLflow from them. One file per key, replaced atomically.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

KEY = re.compile(r"^[0-9a-f]{12}$")


def _path(sweep_dir: Path, key: str) -> Path:
    if not KEY.match(key):  # a trial key is a 12-hex hash; anything else could escape the folder
        raise ValueError(f"invalid trial key {key!r}")
    return sweep_dir / "records" / f"{key}.json"


def read(sweep_dir: Path, key: str) -> dict[str, Any] | None:
    p = _path(sweep_dir, key)
    return json.loads(p.read_text()) if p.is_file() else None


def write(sweep_dir: Path, key: str, record: dict[str, Any]) -> None:
    p = _path(sweep_dir, key)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, default=str)
    os.replace(tmp, p)


def update(sweep_dir: Path, key: str, **fields: Any) -> dict[str, Any]:
    record = read(sweep_dir, key) or {"trial_key": key}
    record.update(fields)
    write(sweep_dir, key, record)
    return record


def all_records(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    folder = sweep_dir / "records"
    if not folder.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def merged_status(recorded: str | None, tracked: str | None) -> str | None:
    """A trial's status from its record and its MLflow run: FINISHED where either says so; STOPPED (resumable)
    where the record says so and the run is KILLED or missing; else the run's, or the record's without a run."""
    if "FINISHED" in (recorded, tracked):
        return "FINISHED"
    if recorded == "STOPPED" and tracked in ("KILLED", None):
        return "STOPPED"
    return tracked or recorded


def written_at(sweep_dir: Path, key: str) -> float:
    """When the key's record was last written (its status changed), as a Unix time."""
    return _path(sweep_dir, key).stat().st_mtime


def ended_since(rec: dict[str, Any], started: float, written_at: Callable[[], float] = lambda: 0.0) -> bool:
    """Whether the record's trial ended (FINISHED or FAILED) at or after ``started`` (the records' clock): one
    that a driver started then ended. A record from before ``ended_at`` existed goes by ``written_at()``."""
    if rec.get("status") not in ("FINISHED", "FAILED"):
        return False
    ended = rec.get("ended_at")
    return (ended if ended is not None else written_at()) >= started


class SweepRecords:
    """The local record of each trial key, one method per trial event."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = Path(sweep_dir)

    def started(self, key: str, trial: dict[str, Any]) -> None:
        from .identity import code_version  # the driver's code, as on the trial's MLflow run

        update(self.sweep_dir, key, status="RUNNING", trial=trial, synced=True, code_version=code_version())

    def finished(self, key: str, result: dict[str, Any]) -> None:
        update(self.sweep_dir, key, status="FINISHED", result=result, error=None, model_logged=None,
               ended_at=time.time())

    def failed(self, key: str, error: str) -> None:
        update(self.sweep_dir, key, status="FAILED", error=error, ended_at=time.time())

    def model_missed(self, key: str) -> None:
        """The trial's model delta did not reach MLflow: ``sync`` logs it from Tune's storage."""
        update(self.sweep_dir, key, model_logged=False)

    def unsynced(self, key: str) -> None:
        """MLflow missed something of this trial: ``sync`` must look at it."""
        update(self.sweep_dir, key, synced=False)
