"""A group's progress as it trains, and the short lines the command line prints from it.

Workers never talk to the launcher: after every epoch, :class:`GroupProgress` rewrites the
group's progress record in the run directory (``RUN/progress/group-....json``,
:func:`mach_tf.rundir.write_progress`), which the launcher polls
(:mod:`mach_tf.launch.progress`) to print one line per epoch and estimate the time left.
The same callback sends an ``epoch`` event to a launcher that collects events (Ray).
:class:`EpochLines` logs the same line directly, for training in this process (the tuner's
trials).

A record holds ``group``, ``worker``, ``pid``, ``epochs`` (the cap), ``start_epoch`` and
``started_at`` (where and when this process started the group), ``epoch`` (epochs done,
counting those before a restart), ``stopped`` (early stopping ended the group),
``updated_at``, and ``history``: one entry per epoch this process trained (``epoch``,
``loss``, ``val_p@1`` with validation, ``seconds``, ``stopped``). Times are
``time.time()`` seconds.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import keras

from mach_tf.training.callbacks import PREFIX


def duration(seconds: float) -> str:
    """``41 s``, ``2 min 05 s``, ``1 h 03 min``."""
    seconds = int(round(max(0.0, seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def epoch_entry(epoch: int, logs: dict | None, seconds: float, stopped: bool = False) -> dict:
    """One epoch of a progress record: ``epoch`` (1-based), ``loss``, ``val_p@1`` (the
    run-level merged validation P@1, when validated), ``seconds``, ``stopped``."""
    logs = logs or {}
    entry = {"epoch": int(epoch), "seconds": round(float(seconds), 3), "stopped": bool(stopped)}
    if logs.get("loss") is not None:
        entry["loss"] = float(logs["loss"])
    if logs.get(PREFIX + "p@1") is not None:
        entry["val_p@1"] = float(logs[PREFIX + "p@1"])
    return entry


def epoch_text(entry: dict, epochs: int | None = None) -> str:
    """``epoch 3/20: loss 2.41, val P@1 0.512, 14 s`` (``, early stop`` when it ended the
    training)."""
    parts = []
    if entry.get("loss") is not None:
        parts.append(f"loss {entry['loss']:.4g}")
    if entry.get("val_p@1") is not None:
        parts.append(f"val P@1 {entry['val_p@1']:.3f}")
    seconds = float(entry.get("seconds", 0.0))
    parts.append(f"{seconds:.1f} s" if seconds < 9.95 else duration(seconds))
    if entry.get("stopped"):
        parts.append("early stop")
    cap = f"/{epochs}" if epochs else ""
    return f"epoch {entry['epoch']}{cap}: " + ", ".join(parts)


class GroupProgress(keras.callbacks.Callback):
    """Rewrites the group's progress record when training starts and after every epoch
    (see the module docstring), and sends an ``epoch`` event.

    Put it after the step checkpoint (an epoch whose end is checkpointed is saved before
    it is reported) and after the callbacks that add the merged validation and stop early
    (it reads their logs).

    Args:
        worker: This worker's index.
        group: The group's repetitions.
        epochs: The epoch cap.
        write: Stores a record (``None``: no record).
        emit: Receives the ``epoch`` events (``None``: none).
        clock: The wall clock of the records.
    """

    def __init__(self, worker: int, group: Sequence[int], epochs: int,
                 write: Callable[[dict], None] | None = None,
                 emit: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.time):
        super().__init__()
        self.worker = int(worker)
        self.group = list(group)
        self.epochs = int(epochs)
        self.write = write
        self.emit = emit
        self.clock = clock
        self.record: dict | None = None
        self._epoch_start = 0.0

    def _store(self) -> None:
        if self.write is None:
            return
        try:
            self.write(self.record)
        except Exception:  # noqa: BLE001 - a progress record must never stop training
            pass

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.monotonic()
        if self.record is None:  # the first epoch this process trains (after a restart too)
            now = self.clock()
            self.record = {"group": self.group, "worker": self.worker, "pid": os.getpid(),
                           "epochs": self.epochs, "start_epoch": int(epoch),
                           "started_at": now, "epoch": int(epoch), "stopped": False,
                           "updated_at": now, "history": []}
            self._store()

    def on_epoch_end(self, epoch, logs=None):
        if self.record is None:
            self.on_epoch_begin(epoch)
        stopped = bool(getattr(self.model, "stop_training", False))
        entry = epoch_entry(epoch + 1, logs, time.monotonic() - self._epoch_start, stopped)
        self.record.update(epoch=epoch + 1, stopped=stopped, updated_at=self.clock())
        self.record["history"].append(entry)
        self._store()
        if self.emit is not None:
            logs = logs or {}
            self.emit({"event": "epoch", "worker": self.worker, "reps": self.group,
                       "epochs": self.epochs,
                       "bucket_acc": float(logs.get("bucket_acc", float("nan"))),
                       **entry, "loss": float(logs.get("loss", float("nan")))})


class EpochLines(keras.callbacks.Callback):
    """Logs ``PREFIX epoch 3/20: loss 2.41, val P@1 0.512, 14 s`` after every epoch (after
    the merged validation and early stopping, whose logs it reads).

    Args:
        log: Where the lines go.
        prefix: What each line starts with, e.g. ``tune trial 2/10``.
    """

    def __init__(self, log: Callable[[str], None], prefix: str):
        super().__init__()
        self.log = log
        self.prefix = prefix
        self._epoch_start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        stopped = bool(getattr(self.model, "stop_training", False))
        entry = epoch_entry(epoch + 1, logs, time.monotonic() - self._epoch_start, stopped)
        self.log(f"{self.prefix} {epoch_text(entry, (self.params or {}).get('epochs'))}")
