"""The progress line of a long run: items done / total, rate, ETA, failures.

Logged at most every few seconds, so a run over many thousands of videos
(or, later, clips to predict or models to export) says where it stands
without flooding the log. Used by `data_prep.builder.build`.

The rate is measured from the first finished item on, not from the start:
before its first item a run pays its start-up (spawning workers, importing
TensorFlow, compiling a flow graph), which can take longer than many items
and would make the first ETAs far too long.  Until a rate exists the line
says so instead of guessing.
"""

from __future__ import annotations

import logging
import math
import time


class Progress:
    """Logs ``done/total <unit>``, rate and ETA on ``logger`` at most every ``every`` seconds."""

    def __init__(self, total: int, every: float, logger: logging.Logger, unit: str = "videos"):
        self.total, self.every, self.logger, self.unit = total, every, logger, unit
        self.done = self.failed = 0
        self.start = self.last = time.monotonic()
        self.first = None  # when the first item finished: the rate's origin

    def rate(self, now: float) -> float | None:
        """Items per second since the first finished item; None before a second one."""
        if self.first is None or self.done < 2 or now <= self.first:
            return None
        return (self.done - 1) / (now - self.first)

    def update(self, failed: bool, force: bool = False) -> None:
        """Counts one finished item (``failed`` or not); logs when due, or always with ``force``."""
        self.done += 1
        self.failed += int(failed)
        now = time.monotonic()
        if self.first is None:
            self.first = now
        if force or now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.rate(now)
            share = 100.0 * self.done / max(self.total, 1)
            if rate is None and self.done < self.total:
                self.logger.info("%d/%d %s (%.0f%%), first after %s (start-up), ETA ?, "
                                 "%d failed", self.done, self.total, self.unit, share,
                                 fmt_seconds(now - self.start), self.failed)
                return
            if rate is None:  # all done with the first item
                rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.logger.info("%d/%d %s (%.0f%%), %.2f %s/s, ETA %s, %d failed",
                             self.done, self.total, self.unit, share, rate, self.unit,
                             fmt_seconds(eta), self.failed)


def fmt_seconds(s: float) -> str:
    """``12m05s`` / ``3h02m05s``; ``?`` for an unknown (infinite) time."""
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
