"""The driver's console progress line: counts from Tune's trial states (and the sweep's trials outside the Tune
experiment running now), elapsed time and an ETA.

Ray-free (the caller passes the states as plain strings), so the line and its ETA are tested without a
cluster. The rate and ETA rest only on trials that FINISHED in this driver: a restored sweep's earlier trials
took time another driver spent, and failed ones (often at once: out of memory, a bad setting) took no training
time, so that an ETA from them said minutes for a sweep of hours.
"""
from __future__ import annotations

import collections
import time
from typing import Callable, Iterable

from .records import ended_since

# at most one evaluation line per this many seconds (a trial's end is always shown): a packed GPU sweep reports
# several evaluations a second, and each line counts the whole grid (31 ms at 50,000 trials on a CPU core)
EVAL_LINE_S = 10.0


def duration(seconds: float) -> str:
    """1h02m above an hour, else 3m07s."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def n_trials(n: int) -> str:
    """"1 trial", "3 trials": the count as every console line says it."""
    return f"{n} trial" if n == 1 else f"{n} trials"


def rate_per_hour(finished: int, elapsed_s: float) -> str:
    """FINISHED trials per hour, as the driver's line and `peft-sweep status --watch` both show it."""
    return f"{finished / max(elapsed_s, 1e-9) * 3600:.1f} trials/h"


def counts(done: int, total: int, running: int, failed: int, queued: int) -> str:
    """The counts, in the same words on the driver's line and in `status --watch`."""
    return f"done {done}/{total} | running {running} | failed {failed} | queued {queued}"


def eta_s(finished_here: int, elapsed_s: float, left: int) -> float | None:
    """Seconds left at this driver's pace so far; None while none FINISHED under it, or nothing is left."""
    return elapsed_s / finished_here * left if finished_here and left else None


def pace(finished_here: int, elapsed_s: float, left: int) -> str:
    """Elapsed time, rate and ETA from the trials that FINISHED under this driver: "rate ? | ETA ?" while none
    has; no ETA once nothing is left."""
    out = f"elapsed {duration(elapsed_s)}"
    if not finished_here:
        return f"{out} | rate ? | ETA ?" if left else out
    out += f" | {rate_per_hour(finished_here, elapsed_s)}"
    return f"{out} | ETA {duration(eta_s(finished_here, elapsed_s, left))}" if left else out


class Progress:
    """One line per trial event: done / running / failed / queued, elapsed time, ETA, and what happened."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.started = clock()
        self.finished_here = 0  # trials that FINISHED in this driver: the base of the rate and ETA
        # (the sweep's keys, the keys this driver runs, the records as the running experiment started): the line
        # counts the grid's trials outside that experiment too (see ``outside``)
        self.sweep: tuple[list[str], set[str], dict[str, dict]] | None = None
        self.last_evaluation_line: float | None = None

    def evaluation_line_due(self) -> bool:
        """Whether an evaluation gets a line: the first, and then one per ``EVAL_LINE_S`` (MLflow has them all)."""
        now = self.clock()
        if self.last_evaluation_line is not None and now - self.last_evaluation_line < EVAL_LINE_S:
            return False
        self.last_evaluation_line = now
        return True

    def trial_finished(self) -> None:
        self.finished_here += 1

    def line(self, statuses: Iterable[str], what: str, inside: set[str] | None = None) -> str:
        """``statuses``: Tune's status of every trial (PENDING, PAUSED, RUNNING, TERMINATED, ERROR) of the
        experiment running; ``inside``: their keys (with ``sweep`` known, the grid's other trials count too)."""
        status = collections.Counter(statuses)
        if self.sweep is not None and inside is not None:
            grid, to_run, recs = self.sweep
            status += outside(grid, inside, to_run, recs, self.started)
        queued = status["PENDING"] + status["PAUSED"]
        elapsed = self.clock() - self.started
        return (f"[{time.strftime('%H:%M:%S', time.localtime(self.clock()))}] "
                f"{counts(status['TERMINATED'], sum(status.values()), status['RUNNING'], status['ERROR'], queued)} "
                f"| {pace(self.finished_here, elapsed, queued + status['RUNNING'])} | {what}")

    def show(self, statuses: Iterable[str], what: str, inside: set[str] | None = None) -> None:
        print(self.line(statuses, what, inside), flush=True)


def outside(grid: Iterable[str], inside: set[str], to_run: set[str], recs: dict[str, dict],
            started: float) -> collections.Counter:
    """The sweep's trials outside the Tune experiment running now, as Tune states, so that the driver's line
    counts the whole grid (a resumed experiment holds some trials, the next one the rest; each counted alone, the
    line read "done 3/3" with ten trials to go and an ETA to match). ``to_run``: the keys this driver runs;
    ``recs``: the local records; ``started``: the driver's start (the records' ``ended_at`` clock). One that
    ended is TERMINATED (FINISHED) or ERROR, unless this driver is still to run it again (rerun-failed); one
    this driver is to run is PENDING; others (left alone: STOPPED ones under rerun-failed) count in the total."""
    states: collections.Counter = collections.Counter()
    for key in grid:
        if key in inside:
            continue
        rec = recs.get(key) or {}
        status = rec.get("status")
        if key in to_run and not ended_since(rec, started):
            states["PENDING"] += 1
        else:
            states[{"FINISHED": "TERMINATED", "FAILED": "ERROR"}.get(status, "LEFT")] += 1
    return states
