"""The driver's console progress line: counts from Tune's trial states, elapsed time and an ETA.

Ray-free (the caller passes the states as plain strings), so the line and its ETA are tested without a
cluster. The ETA rests only on trials that ended in this driver: a restored sweep's earlier trials took
time another driver spent.
"""
from __future__ import annotations

import collections
import time
from typing import Callable, Iterable


def duration(seconds: float) -> str:
    """1h02m above an hour, else 3m07s."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def rate_per_hour(ended: int, elapsed_s: float) -> str:
    """Trials per hour, as the driver's line and `peft-sweep status --watch` both show it."""
    return f"{ended / max(elapsed_s, 1e-9) * 3600:.1f} trials/h"


class Progress:
    """One line per trial event: done / running / failed / queued, elapsed time, ETA, and what happened."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.started = clock()
        self.ended_here = 0  # trials that ended in this driver: the base of the ETA

    def trial_ended(self) -> None:
        self.ended_here += 1

    def line(self, statuses: Iterable[str], what: str) -> str:
        """``statuses``: Tune's status of every trial (PENDING, PAUSED, RUNNING, TERMINATED, ERROR)."""
        status = collections.Counter(statuses)
        total = sum(status.values())
        queued = status["PENDING"] + status["PAUSED"]
        elapsed = self.clock() - self.started
        left = queued + status["RUNNING"]
        eta = f"ETA {duration(elapsed / self.ended_here * left)}" if self.ended_here and left else "ETA ?"
        rate = f"{rate_per_hour(self.ended_here, elapsed)} | " if self.ended_here else ""
        return (f"[{time.strftime('%H:%M:%S', time.localtime(self.clock()))}] done {status['TERMINATED']}/{total} "
                f"| running {status['RUNNING']} | failed {status['ERROR']} | queued {queued} "
                f"| elapsed {duration(elapsed)} {eta} | {rate}{what}")

    def show(self, statuses: Iterable[str], what: str) -> None:
        print(self.line(statuses, what), flush=True)
