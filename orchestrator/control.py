"""Commands over sweeps while they run: list the sweeps of a folder, stop one cleanly, watch one.

All three read the sweep folders (spec, local records, driver file), not MLflow: the driver writes a trial's
record before anything else, so it is the freshest view, and it works while the store is down.
"""
from __future__ import annotations

import collections
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import driver, records
from .progress import counts as count_line, eta_s, pace
from .spec import SpecError, SweepSpec
from .sweep import SPEC_FILE, load_sweep, mark_stopped, resume_command, sync, tracker_for

ENDED = ("FINISHED", "FAILED")


@dataclass
class SweepProgress:
    """Where a sweep stands, from its folder."""
    total: int
    counts: dict[str, int]  # FINISHED / FAILED / RUNNING / STOPPED / PENDING
    started: float | None  # when the current (or last) driver started
    driver_alive: bool
    finished_here: int  # trials that FINISHED since the driver started: the rate and ETA (see progress.pace)
    elapsed_s: float  # since the driver started

    @property
    def ended(self) -> int:
        return sum(self.counts.get(s, 0) for s in ENDED)

    def line(self) -> str:
        c = self.counts
        shown = count_line(c.get("FINISHED", 0), self.total, c.get("RUNNING", 0), c.get("FAILED", 0),
                           c.get("PENDING", 0))
        if c.get("STOPPED"):  # one name for them everywhere: STOPPED (resumable), as records and `status` say
            shown += f" | stopped {c['STOPPED']} (resumable)"
        if self.driver_alive:  # rate and ETA belong to a running driver
            shown += f" | {pace(self.finished_here, self.elapsed_s, self.total - self.ended)}"
        return f"{shown} | driver {'alive' if self.driver_alive else 'not running'}"

    def as_json(self) -> dict[str, Any]:
        """What the line says, for scripts (`status --watch --json`): the ETA as the line reckons it, in seconds,
        None where the line shows none (no driver, none FINISHED under it yet, nothing left)."""
        eta = eta_s(self.finished_here, self.elapsed_s, self.total - self.ended) if self.driver_alive else None
        return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "total": self.total, "counts": self.counts,
                "driver": "alive" if self.driver_alive else "not running",
                "elapsed_s": round(self.elapsed_s, 1) if self.driver_alive else None,
                "finished_here": self.finished_here,
                "eta_s": None if eta is None else round(eta, 1)}


def progress(spec: SweepSpec) -> SweepProgress:
    keys = [t.key for t in spec.trials()]
    recs = records.all_records(spec.sweep_dir)
    found = collections.Counter((recs.get(k) or {}).get("status", "PENDING") for k in keys)
    info = driver.info(spec.sweep_dir) or {}
    alive = driver.alive(spec.sweep_dir)
    started = info.get("started")
    finished_here, elapsed = 0, 0.0
    if alive and started:
        # trials that FINISHED since this driver started (ended_at: a record rewritten later, by `sync` marking it
        # synced, is not one that finished now)
        finished_here = sum(1 for k in keys if (rec := recs.get(k) or {}).get("status") == "FINISHED"
                            and records.ended_since(rec, started, lambda k=k: records.written_at(spec.sweep_dir, k)))
        elapsed = time.time() - started
    return SweepProgress(len(keys), dict(found), started, alive, finished_here, elapsed)


def first_run(sweep_dir: Path) -> float | None:
    """When the sweep's first run started (identity.json), as a Unix time; None where it is not recorded."""
    from datetime import datetime

    from .identity import read

    runs = read(sweep_dir).get("runs") or []
    try:
        return datetime.strptime(runs[0]["started"], "%Y-%m-%dT%H:%M:%S%z").timestamp() if runs else None
    except (KeyError, ValueError):
        return None


def list_sweeps(output_dir: Path) -> list[dict[str, Any]]:
    """The sweep folders directly under ``output_dir``, with where each stands."""
    if not output_dir.is_dir():
        raise SpecError(f"{str(output_dir)!r} is not a folder; give an output_dir of a sweep spec (default ./runs)")
    rows = []
    for folder in sorted(p for p in output_dir.iterdir() if (p / SPEC_FILE).is_file()):
        try:
            p = progress(load_sweep(folder))
            started = p.started or first_run(folder) or (folder / SPEC_FILE).stat().st_mtime
        except Exception as exc:  # noqa: BLE001 - one unreadable sweep must not hide the others
            rows.append({"sweep": folder.name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({"sweep": folder.name, "path": str(folder), "total": p.total, **p.counts,
                     "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
                     "driver": "alive" if p.driver_alive else "-"})
    return rows


def stop(sweep_dir: Path, timeout_s: float, drain: bool = False) -> int:
    """Ask the sweep's driver to stop, wait for it, and leave nothing RUNNING in MLflow. Returns 0 when the
    sweep is stopped, 1 when the driver did not stop within ``timeout_s``. With ``drain`` the running trials
    finish first and no new one starts (the driver then ends as after a stop); a drain that outlasts the wait
    goes on, and a stop without ``drain`` ends it at once."""
    spec = load_sweep(sweep_dir)
    if not driver.alive(spec.sweep_dir):
        n = leave_resumable(spec)
        print(f"no driver is running {spec.sweep_dir}; " + (f"{n} trial(s) it left RUNNING are now STOPPED "
              f"(resumable); resume with: {resume_command(spec)}" if n else
              "nothing to stop (no trial was left RUNNING)"), flush=True)
        return 0
    first = driver.info(spec.sweep_dir) or {}
    if drain:
        driver.request_drain(spec.sweep_dir)
        print(f"asked the driver on {first.get('host', '?')} to drain (running trials finish, no new one starts); "
              f"waiting up to {timeout_s:g} s", flush=True)
    else:
        driver.request_stop(spec.sweep_dir)
        print(f"asked the driver on {first.get('host', '?')} to stop; waiting up to {timeout_s:g} s", flush=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not driver.alive(spec.sweep_dir) or not driver.same(driver.info(spec.sweep_dir), first):
            break
        time.sleep(1.0)
    else:
        if drain:
            running = progress(spec).counts.get("RUNNING", 0)
            print(f"the driver is still draining after {timeout_s:g} s ({running} trial(s) running); it ends when "
                  f"they do, or stop them now with `peft-sweep stop {spec.sweep_dir}`", file=sys.stderr, flush=True)
            return 1
        print(f"the driver has not stopped within {timeout_s:g} s; it stops at its next Tune step (a trial's "
              f"setup can delay it); check with `peft-sweep status {spec.sweep_dir}`", file=sys.stderr, flush=True)
        return 1
    if driver.alive(spec.sweep_dir):  # another driver took the sweep over meanwhile: what runs is its own
        print(f"the driver stopped and another one runs {spec.sweep_dir} now ({driver.describe(spec.sweep_dir)}); "
              "nothing to mark", flush=True)
        return 0
    leave_resumable(spec)  # a driver killed while stopping leaves RUNNING records behind
    p = progress(spec)
    left = p.total - p.counts.get("FINISHED", 0)  # a drain can let the last trials finish: then nothing is left
    print(f"{'drained' if drain else 'stopped'}: {p.line()}; "
          + (f"resume with: {resume_command(spec)}" if left else "every trial FINISHED, nothing to resume"), flush=True)
    return 0


def leave_resumable(spec: SweepSpec) -> int:
    """What a dead driver left RUNNING becomes STOPPED/KILLED (the next run resumes it), and MLflow gets what
    the records hold that it missed. Returns how many trials were left RUNNING."""
    tracker = tracker_for(spec)
    n = mark_stopped(spec, tracker)
    sync(spec, tracker, mend_parent=False)
    driver.clear_stop(spec.sweep_dir)
    return n


def live_bar(console=None):
    """The terminal's view: name, bar and done/total first, the counts and ETA folded onto more lines where the
    terminal is narrow (at 80 columns they took the line, and the name, bar and count were cut to "qui…")."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn
    from rich.table import Column

    return Bar(TextColumn("{task.description}", table_column=Column(no_wrap=True)), BarColumn(bar_width=20),
               MofNCompleteColumn(), TextColumn("{task.fields[info]}", table_column=Column(overflow="fold", ratio=1)),
               refresh_per_second=2, console=console)


def watch(spec: SweepSpec, interval_s: float, as_json: bool = False) -> int:
    """A live view until no driver runs the sweep: a rich progress bar on a terminal, else a line per
    interval (logs, CI), or with ``as_json`` a JSON object per interval (JSON Lines, for scripts)."""
    if as_json or not sys.stdout.isatty():
        while True:
            p = progress(spec)
            print(json.dumps(p.as_json()) if as_json else f"[{time.strftime('%H:%M:%S')}] {p.line()}", flush=True)
            if not p.driver_alive:
                return 0
            time.sleep(interval_s)
    with live_bar() as bar:
        task = bar.add_task(spec.name, total=None, info="")
        while True:
            p = progress(spec)
            bar.update(task, total=p.total, completed=p.ended, info=p.line().split(" | ", 1)[1])
            if not p.driver_alive:
                return 0
            time.sleep(interval_s)

