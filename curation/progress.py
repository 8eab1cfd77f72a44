"""Progress lines at a steady interval, for runs whose stderr is a log file (every `ray job submit`, every nohup).

Ray Data's progress bars need a terminal; without one they are off, and a run of hours would otherwise print nothing
between "N sources listed" and the end. A background thread logs sources done / total, rows, rows/s and an ETA
every `interval_s`, so a stall shows as lines whose counts stop moving.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """`1h02m`, `3m05s`, `42s`: short, for a log line."""
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Counts of a pass (updated by the loop that consumes its results), logged every `interval_s` seconds."""

    def __init__(self, total: int, interval_s: float, what: str = "sources") -> None:
        self.total, self.interval_s, self.what = int(total), float(interval_s), what
        self.done = 0
        self.rows = 0
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, done: int, rows: int) -> None:
        """Record how many units are finished and how many rows came out so far."""
        self.done, self.rows = int(done), int(rows)

    def line(self) -> str:
        """The progress line for the counts as they are now."""
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        done, total = self.done, self.total
        pct = 100.0 * done / total if total else 100.0
        if done and done < total:
            eta = format_duration(elapsed / done * (total - done))
        elif done >= total:
            eta = "0s"
        else:
            eta = "unknown (nothing finished yet)"
        return (f"progress: {done}/{total} {self.what} done ({pct:.1f}%), {self.rows} rows, "
                f"{self.rows / elapsed:.1f} rows/s, elapsed {format_duration(elapsed)}, ETA {eta}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            log.info("%s", self.line())

    def __enter__(self) -> "Progress":
        if self.interval_s > 0 and self.total > 0:
            self._thread = threading.Thread(target=self._run, name="curation-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if exc[0] is None:
                log.info("%s", self.line())  # the final count, so a log always ends with the totals
