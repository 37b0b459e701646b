"""Progress of a run's repetitions across workers, read from the run directory.

Workers never talk to the launcher, but each finished repetition leaves its completion
marker in the run directory; :class:`RepetitionProgress` polls the markers and prints a
progress bar line whenever the count changes, with the time elapsed and an estimate of
the time left (from the rate of repetitions completed since it started).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from mach_tf import rundir


def bar(done: int, total: int, width: int = 20) -> str:
    """``[#######-------------]`` for ``done`` of ``total``."""
    filled = int(round(width * done / total)) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class RepetitionProgress:
    """Prints ``train [####----] 3/8 repetitions complete (38%), 41 s, about 68 s left``
    each time the number of complete repetitions of ``run`` changes.

    Use as a context manager around training: a background thread polls every
    ``interval`` seconds; leaving the block polls a last time and stops it.

    Args:
        run: The run directory.
        total: R, the number of repetitions.
        log: Where the lines go.
        interval: Seconds between polls.
    """

    def __init__(self, run: str, total: int, log: Callable[[str], None],
                 interval: float = 2.0):
        self.run = run
        self.total = int(total)
        self.log = log
        self.interval = float(interval)
        self._t0 = time.monotonic()
        self._start = self.count()
        self._last = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self) -> int:
        return sum(1 for r in range(self.total) if rundir.is_complete(self.run, r))

    def line(self, done: int, elapsed: float) -> str:
        text = (f"train {bar(done, self.total)} {done}/{self.total} repetitions complete "
                f"({100.0 * done / max(self.total, 1):.0f}%), {_duration(elapsed)}")
        new = done - self._start
        if 0 < new and done < self.total:
            text += f", about {_duration(elapsed / new * (self.total - done))} left"
        return text

    def poll(self) -> int:
        """Prints a line if the count changed since the last poll; returns the count."""
        done = self.count()
        if done != self._last:
            self._last = done
            self.log(self.line(done, time.monotonic() - self._t0))
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a progress line must never stop training
                pass

    def __enter__(self) -> "RepetitionProgress":
        self.poll()
        self._thread = threading.Thread(target=self._loop, name="mach-tf-progress",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()
