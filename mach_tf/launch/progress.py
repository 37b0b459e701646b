"""Progress of a run across its workers, read from the run directory, from the first epoch.

Workers never talk to the launcher. After every epoch each group in training rewrites its
progress record (``RUN/progress/group-....json``, :mod:`mach_tf.training.progress`), and
each finished repetition leaves its completion marker. :class:`RepetitionProgress` polls
both and prints a line for every epoch a worker finishes, then the run's line with an
estimate of the time left::

    train worker 1/2 reps [1, 3] epoch 3/20: loss 2.41, val P@1 0.512, 14 s
    train [######--------------] 31%, 1/8 repetitions complete, 1 min 02 s, about 2 min 15 s left

Work is counted in repetition-epochs (:func:`estimate`): the run's budget is every
repetition's epoch cap, less what early stopping saved once it is known, so the percentage
and the estimate improve as epochs finish.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, Sequence

from mach_tf import rundir
from mach_tf.errors import RunDirError
from mach_tf.training.progress import duration, epoch_text


def bar(done: int, total: int, width: int = 20) -> str:
    """``[#######-------------]`` for ``done`` of ``total``."""
    filled = int(round(width * done / total)) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def epoch_line(worker: int, num_workers: int, group: Sequence[int], entry: dict,
               epochs: int | None = None) -> str:
    """``train worker 1/2 reps [1, 3] epoch 3/20: loss 2.41, val P@1 0.512, 14 s``."""
    return f"train worker {worker}/{num_workers} reps {list(group)} {epoch_text(entry, epochs)}"


def epoch_events(log: Callable[[str], None], num_workers: int) -> Callable[[dict], None]:
    """An ``events`` receiver (:func:`mach_tf.launch.worker.train_worker`) that logs a worker's
    epochs as :func:`epoch_line` lines: progress for a worker that no launcher watches."""
    def receive(event: dict) -> None:
        if event.get("event") == "epoch":
            log(epoch_line(event["worker"], num_workers, event["reps"], event,
                           event.get("epochs")))

    return receive


@dataclasses.dataclass
class Estimate:
    """Where a run stands, in repetition-epochs (a group's epoch counts once for each of its
    repetitions).

    Attributes:
        done: Repetition-epochs trained.
        total: Those the run is expected to train (see :func:`estimate`).
        left: Seconds left, or ``None`` while unknown (no epoch of this session finished
            yet, or nothing left to train).
    """

    done: float
    total: float
    left: float | None

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 1.0


def estimate(records: Sequence[dict], complete: dict, num_repetitions: int, epochs: int,
             num_workers: int, since: float, now: float) -> Estimate:
    """The run's progress and time left from its groups' progress records.

    A complete repetition counts the epochs it trained. Any other is expected to train the
    epoch cap, or, once some repetitions have ended (complete, or stopped early), their
    mean epochs when that is less, and at least one epoch more than it has; a repetition
    whose group stopped early or reached the cap expects no more. Each worker's rate is
    the repetition-epochs it trained in this session over the time since it started its
    first group (so it includes the work between epochs: validation, checkpoints, saving);
    its time left is its repetitions' expected epochs left over that rate (a worker
    without an epoch yet takes the mean rate of the others), and the run's is the longest.

    Args:
        records: The groups' progress records (:func:`mach_tf.rundir.read_progress`).
        complete: ``{repetition: epochs it trained}`` of the complete repetitions
            (``None``: not recorded; the cap is assumed).
        num_repetitions: R.
        epochs: The epoch cap.
        num_workers: Workers in this session; a repetition without a record of this session
            belongs to worker ``r % num_workers``.
        since: When this session started (records of groups started before it are from an
            earlier session: their epochs count as trained, not in the rate).
        now: The time now, on the records' clock.

    Returns:
        An :class:`Estimate`.
    """
    cap = max(1, int(epochs))
    latest: dict[int, dict] = {}
    for rec in records:
        for r in rec.get("group", []):
            if r not in latest or rec.get("updated_at", 0) >= latest[r].get("updated_at", 0):
                latest[r] = rec

    def current(rec: dict) -> bool:
        return rec.get("started_at", float("-inf")) >= since

    ended = [float(e or cap) for e in complete.values()]
    ended += [float(rec.get("epoch", 0)) for r, rec in latest.items()
              if r not in complete and rec.get("stopped")]
    typical = min(float(cap), sum(ended) / len(ended)) if ended else float(cap)
    done = total = 0.0
    remaining: dict[int, float] = {}
    for r in range(num_repetitions):
        if r in complete:
            trained = float(complete[r] or cap)
            done, total = done + trained, total + trained
            continue
        rec = latest.get(r)
        trained = float(min(cap, rec.get("epoch", 0))) if rec is not None else 0.0
        if rec is not None and (rec.get("stopped") or trained >= cap):
            expected = trained
        else:
            expected = min(float(cap), max(typical, trained + 1))
        done, total = done + trained, total + expected
        worker = int(rec.get("worker", 0)) if rec is not None and current(rec) else \
            r % max(1, num_workers)
        remaining[worker] = remaining.get(worker, 0.0) + expected - trained
    units: dict[int, float] = {}
    first: dict[int, float] = {}
    for rec in records:
        if not current(rec):
            continue
        w = int(rec.get("worker", 0))
        trained = max(0, int(rec.get("epoch", 0)) - int(rec.get("start_epoch", 0)))
        units[w] = units.get(w, 0.0) + trained * len(rec.get("group", []))
        first[w] = min(first.get(w, now), float(rec["started_at"]))
    rates = {w: u / (now - first[w]) for w, u in units.items() if u > 0 and now > first[w]}
    pending = {w: x for w, x in remaining.items() if x > 0}
    left = None
    if pending and rates:
        mean = sum(rates.values()) / len(rates)
        left = max(x / rates.get(w, mean) for w, x in pending.items())
    return Estimate(done, total, left)


class RepetitionProgress:
    """Prints a run's progress (module docstring) while it trains: a line for every epoch a
    worker finishes, and the run's line with the estimate (:func:`estimate`) whenever an
    epoch or a repetition completes.

    Use as a context manager around training: a background thread polls every
    ``interval`` seconds; leaving the block polls a last time and stops it. Epochs already
    on record when it starts (an earlier session's) are not printed again.

    Args:
        run: The run directory.
        total: R, the number of repetitions.
        log: Where the lines go.
        interval: Seconds between polls.
        epochs: The epoch cap (the config's ``epochs``).
        num_workers: The workers training the run (repetition r is worker r % N's).
        clock: The clock of the workers' records (``time.time``).
    """

    def __init__(self, run: str, total: int, log: Callable[[str], None],
                 interval: float = 2.0, *, epochs: int = 1, num_workers: int = 1,
                 clock: Callable[[], float] = time.time):
        self.run = run
        self.total = int(total)
        self.log = log
        self.interval = float(interval)
        self.epochs = max(1, int(epochs))
        self.num_workers = max(1, int(num_workers))
        self.clock = clock
        self._t0 = clock()
        self._complete: dict[int, int | None] = {}
        self._printed = {tuple(rec["group"]): int(rec.get("epoch", 0))
                         for rec in rundir.read_progress(run)}
        self._last = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def complete(self) -> dict:
        """``{repetition: epochs it trained}`` of the complete repetitions (``None``: not
        recorded)."""
        for r in range(self.total):
            if r not in self._complete and rundir.is_complete(self.run, r):
                try:
                    marker = rundir.completion(self.run, r) or {}
                except RunDirError:
                    marker = {}
                self._complete[r] = marker.get("epochs")
        return dict(self._complete)

    def count(self) -> int:
        """Complete repetitions."""
        return len(self.complete())

    def epoch_lines(self, records: Sequence[dict]) -> list[str]:
        """The :func:`epoch_line` of every epoch on record not printed yet."""
        lines = []
        for rec in sorted(records, key=lambda x: (int(x.get("worker", 0)), x["group"])):
            key = tuple(rec["group"])
            seen = self._printed.get(key, 0)
            for entry in rec.get("history", []):
                if int(entry.get("epoch", 0)) > seen:
                    lines.append(epoch_line(rec.get("worker", 0), self.num_workers,
                                            rec["group"], entry, rec.get("epochs")))
                    seen = int(entry["epoch"])
            self._printed[key] = seen
        return lines

    def line(self, est: Estimate, complete: int, elapsed: float) -> str:
        """``train [######--------------] 31%, 1/8 repetitions complete, 1 min 02 s, about
        2 min 15 s left``."""
        # 100% once every repetition is saved, not when the last epoch ends
        percent = int(100 * est.fraction) if complete >= self.total else \
            min(99, int(100 * est.fraction))
        text = (f"train {bar(est.fraction, 1.0)} {percent}%, "
                f"{complete}/{self.total} repetitions complete, {duration(elapsed)}")
        if est.left is not None and complete < self.total:
            text += f", about {duration(est.left)} left"
        return text

    def poll(self) -> int:
        """Prints what changed since the last poll; returns the complete repetitions."""
        records = rundir.read_progress(self.run)
        complete = self.complete()
        lines = self.epoch_lines(records)
        now = self.clock()
        est = estimate(records, complete, self.total, self.epochs, self.num_workers,
                       self._t0, now)
        state = (len(complete), est.done)
        if lines or state != self._last:
            self._last = state
            for text in lines:
                self.log(text)
            self.log(self.line(est, len(complete), now - self._t0))
        return len(complete)

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
