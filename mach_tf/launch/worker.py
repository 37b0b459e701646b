"""One worker: trains its unfinished repetitions, group by group, each group claimed first.

Worker ``i`` of ``N`` owns the repetitions ``r`` with ``r % N == i``
(:mod:`mach_tf.launch.identity`). It trains them in groups of ``config.group_size``
(:func:`mach_tf.training.group.train_group`) and writes each finished repetition to the
run directory with its completion marker. Workers never communicate: the run directory is
their only meeting point, so they can run as local processes (:mod:`mach_tf.launch.local`),
Ray tasks (:mod:`mach_tf.launch.ray_launcher`), Kubernetes indexed jobs or Slurm array
tasks. A rerun skips repetitions already complete and resumes unfinished groups from their
last step checkpoint; a claim (:mod:`mach_tf.launch.claims`) keeps two live workers from
training the same repetition.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.errors import ClaimLost, NonFiniteLossError
from mach_tf.launch.claims import DEFAULT_LEASE_S, ClaimSet, Owner, current_holder
from mach_tf.launch.identity import assigned_repetitions, worker_identity
from mach_tf.training.checkpoint import GroupCheckpoint
from mach_tf.training.group import Events, Log, log_to_stderr, train_group
from mach_tf.training.prepare import prepare_run
from tfrecords_tools.paths import expand_path


@dataclasses.dataclass
class WorkerReport:
    """What a worker did."""

    worker_index: int
    num_workers: int
    trained: list[int] = dataclasses.field(default_factory=list)
    skipped: list[int] = dataclasses.field(default_factory=list)
    failed: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def train_worker(run: str, train: str, valid: str | None = None,
                 config: MachConfig | None = None, worker_index: int | None = None,
                 num_workers: int | None = None, verbose: int = 2,
                 log: Log = log_to_stderr, *, checkpoint_every: int = 0,
                 claim_lease: float | None = None, events: Events | None = None,
                 callbacks: Sequence = ()) -> WorkerReport:
    """Trains this worker's unfinished repetitions (see module docstring).

    Each group is claimed before it is trained (:mod:`mach_tf.launch.claims`): a group
    another live worker holds is left to it and waited for after this worker's other
    groups; it is taken over if that worker's claim expires. Groups resume from their step
    checkpoints.

    Args:
        run: The run directory.
        train: Training data prefix.
        valid: Optional validation data prefix.
        config: The config; ``None`` reads the run's ``config.json``.
        worker_index, num_workers: This worker's place (see :func:`worker_identity`).
        verbose: Keras fit verbosity.
        log: Where progress lines go.
        checkpoint_every: Also checkpoint every this many steps (0: every 5 minutes).
        claim_lease: Seconds without a heartbeat after which a claim is taken over
            (default ``MACH_TF_CLAIM_LEASE_S`` or 120).
        events: Receives progress events (dicts), e.g. for a launcher's display.
        callbacks: More Keras callbacks for every group's ``fit`` (see
            :func:`mach_tf.training.group.train_group`).

    Returns:
        A :class:`WorkerReport`. Repetitions whose training failed are listed in
        ``failed`` (with the reason); the others are unaffected.
    """
    run, train, valid = expand_path(run), expand_path(train), expand_path(valid)
    index, count = worker_identity(worker_index, num_workers)
    cpu0 = time.process_time()
    if config is None:
        config = rundir.load_config(run)
    config = prepare_run(run, config, train, valid)
    lease = float(claim_lease or os.environ.get("MACH_TF_CLAIM_LEASE_S")
                  or DEFAULT_LEASE_S)
    report = WorkerReport(index, count)
    emit = events or (lambda e: None)
    tag = f"[worker {index}/{count}]"
    t0 = time.time()
    mine = assigned_repetitions(config.num_repetitions, index, count)
    report.skipped = [r for r in mine if rundir.is_complete(run, r)]
    todo = [r for r in mine if r not in report.skipped]
    emit({"event": "start", "worker": index, "num_workers": count, "pid": os.getpid(),
          "reps": mine, "skipped": report.skipped})
    if report.skipped:
        log(f"{tag} repetitions {report.skipped} already complete: skipped")
    owner = Owner.this_process(index)
    pending = plan_groups(run, mine, todo, config.group_size)
    worker_cache: dict = {}  # validation sample, complete repetitions' scores, parsed data
    waiting: set = set()  # groups whose holders were already named in the log
    while pending:
        deferred = []
        for group in pending:
            left = [r for r in group if not rundir.is_complete(run, r)]
            if not left:
                report.skipped.extend(r for r in group if r not in report.skipped)
                log(f"{tag} repetitions {group} were completed by another worker")
                continue
            held = ClaimSet.acquire([rundir.rep_dir(run, r) for r in left], owner, lease,
                                    log=lambda m: log(f"{tag} {m}"))
            if held is None:
                deferred.append(group)
                if tuple(group) not in waiting:
                    waiting.add(tuple(group))
                    holders = {r: current_holder(rundir.rep_dir(run, r))
                               for r in left}
                    who = {r: f"{h['owner']['host']}:{h['owner']['pid']}" for r, h in
                           holders.items() if h}
                    log(f"{tag} repetitions {left} are claimed by {who}: waiting for them "
                        f"to finish or their claim to expire ({lease:.0f} s)")
                    emit({"event": "waiting", "worker": index, "reps": left})
                continue
            with held:
                # Re-check under the claim: another worker may have finished in between.
                left = [r for r in group if not rundir.is_complete(run, r)]
                if not left:
                    report.skipped.extend(r for r in group if r not in report.skipped)
                    continue
                if left != group and not _has_checkpoint(run, group):
                    group = left  # never train a finished repetition again
                log(f"{tag} training repetitions {group}" +
                    (f" (writing {left})" if left != group else ""))
                emit({"event": "group_start", "worker": index, "reps": group})
                try:
                    train_group(run, config, group, train, valid, worker=index,
                                verbose=verbose, log=log, save=left,
                                checkpoint_every=checkpoint_every, claims=held, events=events,
                                callbacks=callbacks, worker_cache=worker_cache)
                except (NonFiniteLossError, ClaimLost) as e:
                    for r in left:
                        report.failed[r] = str(e)
                    log(f"{tag} repetitions {group} FAILED: {e}")
                    emit({"event": "group_failed", "worker": index, "reps": left,
                          "error": str(e)})
                    continue
            report.trained.extend(left)
            log(f"{tag} repetitions {left} complete")
        pending = deferred
        if pending:
            time.sleep(max(0.2, min(10.0, lease / 8.0)))
    report.trained.sort()
    report.skipped.sort()
    report.seconds = time.time() - t0
    report.cpu_seconds = time.process_time() - cpu0
    emit({"event": "end", "worker": index, "report": report.to_dict()})
    return report


def _has_checkpoint(run: str, group: Sequence[int]) -> bool:
    return GroupCheckpoint(rundir.checkpoint_dir(run, group)).state() is not None


def plan_groups(run: str, mine: Sequence[int], todo: Sequence[int],
                group_size: int) -> list[list[int]]:
    """This worker's groups: first the interrupted groups it can resume (a checkpoint in
    ``RUN/work/`` whose repetitions are all this worker's, e.g. from a rerun with another
    number of workers), then the rest of ``todo`` in chunks of ``group_size``."""
    mine_set, todo_set, taken = set(mine), set(todo), set()
    groups = []
    for reps in rundir.groups_in_progress(run):
        if set(reps) <= mine_set and set(reps) & todo_set and not set(reps) & taken and \
                _has_checkpoint(run, reps):
            groups.append(reps)
            taken |= set(reps)
    rest = [r for r in todo if r not in taken]
    groups += [rest[i:i + group_size] for i in range(0, len(rest), group_size)]
    return groups
