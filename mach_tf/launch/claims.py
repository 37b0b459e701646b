"""Claims: which worker is training a repetition right now.

Static assignment (worker ``i`` of ``N`` owns ``r % N == i``) keeps well-behaved workers
apart, but the same repetition can still be picked up twice: a scheduler restarts a worker
whose old process is still alive, a Ray task is retried, or two launches with different
``N`` share a run directory. A claim makes sure only one process trains (and writes) a
repetition at a time, and lets a dead worker's repetition be taken over.

A repetition's claims are numbered files ``RUN/rep-XXX/claims/claim-000001.json``
(:func:`mach_tf.rundir.claims_dir`),
``claim-000002.json``, ... The highest number is the current claim. Each holds its
owner (host, pid, process start time, a random id), the worker index, ``heartbeat_at`` and
``lease_s``, and ``released`` once the owner is done. A worker:

* **acquires** a repetition by creating the next number exclusively (only one creator can
  win a number), if the current claim is released, expired or absent;
* **renews** its claim every ``lease_s / 4`` seconds from a background thread (rewriting
  its own file, under a temporary name then renamed: :mod:`tfrecords_tools.atomic`);
* **checks** it still holds the claim (no higher number exists) before each checkpoint and
  before writing the repetition, so a worker whose claim was taken over stops instead of
  writing (fencing);
* **releases** it (``released: true``) when the repetition is written or abandoned.

A claim is expired when its heartbeat is older than its lease, or at once when its owner
ran on this host (same hostname and boot) and that process no longer exists, so a rerun
on the same machine resumes a killed worker's repetition without waiting.

Atomicity the run directory's filesystem must provide: exclusive creation of a file
(``link(2)`` fails when the name exists: POSIX local disks, NFSv3+, Lustre, GPFS,
CephFS) and atomic rename for the heartbeat rewrites. Object stores reached through
``tf.io.gfile`` (``gs://``, ``s3://``) offer no exclusive create there; claims fall back
to check-then-rename, which leaves a window of a few milliseconds in which two workers
that start the same repetition at the same instant could both claim it. Static assignment
makes that need two misconfigured launches at once; use a shared POSIX filesystem when it
must be excluded. Expiry compares the reader's clock with the writer's: hosts' clocks must
agree to well within the lease (NTP gives milliseconds; the default lease is 120 s).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import threading
import time
import uuid
from typing import Callable, Iterable

import psutil
import tensorflow as tf

from mach_tf.errors import ClaimLost
from mach_tf.rundir import claims_dir
from tfrecords_tools import atomic

DEFAULT_LEASE_S = 120.0
_NAME = re.compile(r"^claim-(\d{6,})\.json$")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


@dataclasses.dataclass(frozen=True)
class Owner:
    """Identity of the process that holds claims."""

    host: str
    boot: str
    pid: int
    started: float
    token: str
    worker: int = 0

    @classmethod
    def this_process(cls, worker: int = 0) -> "Owner":
        pid = os.getpid()
        return cls(socket.gethostname(), _boot_id(), pid, _process_start(pid) or 0.0,
                   uuid.uuid4().hex[:12], int(worker))

    @property
    def id(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    def is_dead_here(self) -> bool:
        """True when this owner ran on this host and its process is gone."""
        if self.host != socket.gethostname() or self.boot != _boot_id():
            return False
        started = _process_start(self.pid)
        return started is None or abs(started - self.started) > 1.0


def _claim_path(rep_dir: str, gen: int) -> str:
    return os.path.join(claims_dir(rep_dir), f"claim-{gen:06d}.json")


def _generations(rep_dir: str) -> list[int]:
    d = claims_dir(rep_dir)
    if not tf.io.gfile.isdir(d):
        return []
    return sorted(int(m.group(1)) for m in map(_NAME.match, tf.io.gfile.listdir(d)) if m)


def _read(path: str) -> dict | None:
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return json.loads(f.read())
    except (tf.errors.NotFoundError, ValueError):
        return None


def _expired(record: dict | None, now: float, path: str | None = None) -> bool:
    if record is None:
        # Unreadable: a claim being written through the O_EXCL fallback is live for a
        # lease; anything older is debris.
        try:
            age = now - tf.io.gfile.stat(path).mtime_nsec / 1e9 if path else float("inf")
        except tf.errors.NotFoundError:
            return True
        return age > DEFAULT_LEASE_S
    if record.get("released"):
        return True
    lease = float(record.get("lease_s", DEFAULT_LEASE_S))
    if now - float(record.get("heartbeat_at", 0.0)) > lease:
        return True
    o = record.get("owner", {})
    try:
        owner = Owner(o["host"], o.get("boot", ""), int(o["pid"]), float(o.get("started", 0)),
                      o.get("token", ""))
    except (KeyError, TypeError, ValueError):
        return True
    return owner.is_dead_here()


def current_holder(rep_dir: str) -> dict | None:
    """The live claim record on a repetition, or ``None`` when nobody holds it."""
    gens = _generations(rep_dir)
    if not gens:
        return None
    path = _claim_path(rep_dir, gens[-1])
    record = _read(path)
    return None if _expired(record, time.time(), path) else record


@dataclasses.dataclass
class Claim:
    """A claim this process holds on one repetition."""

    rep_dir: str
    gen: int
    owner: Owner
    lease_s: float
    claimed_at: float
    took_over: dict | None = None

    @property
    def path(self) -> str:
        return _claim_path(self.rep_dir, self.gen)

    def record(self, released: bool = False) -> dict:
        return {"owner": dataclasses.asdict(self.owner), "worker": self.owner.worker,
                "generation": self.gen, "claimed_at": self.claimed_at,
                "heartbeat_at": time.time(), "lease_s": self.lease_s, "released": released,
                "took_over": self.took_over}

    def held(self) -> bool:
        """True while no later claim exists and ours is not released."""
        gens = _generations(self.rep_dir)
        if not gens or gens[-1] != self.gen:
            return False
        record = _read(self.path)
        return bool(record) and record.get("owner", {}).get("token") == self.owner.token \
            and not record.get("released")

    def renew(self) -> bool:
        """Refreshes the heartbeat; False (and nothing written) when the claim was lost."""
        if not self.held():
            return False
        atomic.write_json(self.path, self.record())
        return True

    def release(self) -> None:
        if self.held():
            atomic.write_json(self.path, self.record(released=True))


def try_acquire(rep_dir: str, owner: Owner, lease_s: float = DEFAULT_LEASE_S) -> Claim | None:
    """Claims a repetition, or returns ``None`` when another live worker holds it."""
    for _ in range(3):  # lost races on a number are retried against the new top
        gens = _generations(rep_dir)
        top = _claim_path(rep_dir, gens[-1]) if gens else None
        previous = _read(top) if gens else None
        if gens and not _expired(previous, time.time(), top):
            if previous and previous.get("owner", {}).get("token") == owner.token:
                return Claim(rep_dir, gens[-1], owner, lease_s, previous["claimed_at"])
            return None
        gen = (gens[-1] + 1) if gens else 1
        took_over = None
        if previous and not previous.get("released"):
            took_over = {"owner": previous.get("owner"), "generation": gens[-1],
                         "heartbeat_at": previous.get("heartbeat_at")}
        claim = Claim(rep_dir, gen, owner, float(lease_s), time.time(), took_over)
        if atomic.create_exclusive(claim.path, atomic.dumps(claim.record())):
            return claim
    return None


class ClaimSet:
    """Claims on the repetitions of one group, renewed by a background thread.

    Use :meth:`acquire`; then :meth:`check` before every write and :meth:`release` at the
    end (or use it as a context manager).
    """

    def __init__(self, claims: list[Claim], lease_s: float, log: Callable[[str], None]):
        self.claims = claims
        self.lease_s = lease_s
        self._log = log
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                        name="mach-tf-claims")
        self._thread.start()

    @classmethod
    def acquire(cls, rep_dirs: Iterable[str], owner: Owner, lease_s: float = DEFAULT_LEASE_S,
                log: Callable[[str], None] = lambda m: None) -> "ClaimSet | None":
        """All of ``rep_dirs`` claimed, or ``None`` (and nothing held) if any is taken."""
        got = []
        for d in rep_dirs:
            c = try_acquire(d, owner, lease_s)
            if c is None:
                for held in got:
                    held.release()
                return None
            if c.took_over:
                prev = c.took_over.get("owner") or {}
                log(f"took over {os.path.basename(d)} from {prev.get('host')}:"
                    f"{prev.get('pid')} (claim {c.took_over['generation']} expired)")
            got.append(c)
        return cls(got, lease_s, log)

    def _heartbeat(self) -> None:
        period = max(0.05, self.lease_s / 4.0)
        while not self._stop.wait(period):
            for c in self.claims:
                try:
                    if not c.renew():
                        self._lost = c.rep_dir
                except (OSError, tf.errors.OpError) as e:  # transient storage trouble
                    self._log(f"could not renew the claim on {c.rep_dir}: {e}")

    def check(self) -> None:
        """Raises :class:`ClaimLost` when another worker has taken over a repetition."""
        lost = self._lost or next((c.rep_dir for c in self.claims if not c.held()), None)
        if lost:
            holder = current_holder(lost) or {}
            o = holder.get("owner", {})
            raise ClaimLost(f"{lost}: the claim was taken over by {o.get('host')}:"
                            f"{o.get('pid')} (worker {holder.get('worker')}); stopping "
                            f"without writing")

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for c in self.claims:
            try:
                c.release()
            except (OSError, tf.errors.OpError):
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False
