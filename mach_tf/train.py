"""Training: each worker trains its share of the R repetitions, alone.

Worker ``i`` of ``N`` owns the repetitions ``r`` with ``r % N == i``. It trains them in
groups of ``config.group_size`` (one Keras model per group, weights separate per
repetition) with ``model.fit`` on one device and no distribution strategy, and writes each
finished repetition to the run directory with its completion marker. Workers never
communicate: the run directory is their only meeting point, so they can run as local
processes (:func:`train`), Ray tasks, Kubernetes indexed jobs or Slurm array tasks.
A rerun skips repetitions already complete and resumes unfinished groups from their last
step checkpoint (:mod:`mach_tf.checkpoint`); a claim (:mod:`mach_tf.claims`) keeps two
live workers from training the same repetition. The Ray launcher is
:mod:`mach_tf.launch_ray`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

import numpy as np

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.version import __version__

Log = Callable[[str], None]
Events = Callable[[dict], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- worker identity -----------------------------------------------------------------------
def worker_identity(worker_index: int | None = None, num_workers: int | None = None,
                    env=None) -> tuple[int, int]:
    """``(index, count)`` of this worker, from arguments or the scheduler's environment.

    Looked up in order: explicit arguments; ``TF_CONFIG`` or Vertex AI's ``CLUSTER_SPEC``
    (the chief, ``chief``/``master``/``workerpool0``, is worker 0 and the workers,
    ``worker``/``workerpool1``, follow it); Kubernetes Indexed Jobs
    (``JOB_COMPLETION_INDEX``, count from ``num_workers`` or ``MACH_TF_NUM_WORKERS``); Slurm
    arrays (``SLURM_ARRAY_TASK_ID`` minus ``SLURM_ARRAY_TASK_MIN``, count
    ``SLURM_ARRAY_TASK_COUNT``). Default ``(0, 1)``.

    Raises:
        ValueError: for an index outside ``[0, count)``, an unreadable ``TF_CONFIG`` /
            ``CLUSTER_SPEC``, or a parameter-server or evaluator task (nothing to train).
    """
    env = os.environ if env is None else env
    index, count = worker_index, num_workers
    for var, pools in (("TF_CONFIG", (("chief", "master"), ("worker",))),
                       ("CLUSTER_SPEC", (("workerpool0",), ("workerpool1",)))):
        if index is not None or not env.get(var):
            continue
        try:
            spec = json.loads(env[var])
            task = spec.get("task", {})
            cluster = spec.get("cluster", {})
            kind = task.get("type", "worker")
            order = [t for group in pools for t in group]
            if kind not in order:
                raise ValueError(f"{var}: a {kind!r} task has no repetitions to train; "
                                 f"run mach-tf train only on {' and '.join(order)} tasks")
            # workers after the chief: global index = tasks of the earlier types + index
            index = int(task.get("index", 0)) + sum(
                len(cluster.get(t, [])) for t in order[:order.index(kind)])
            if count is None:
                count = sum(len(cluster.get(t, [])) for t in order) or None
        except (TypeError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"{var} is not valid JSON of the form "
                             f"{{'cluster': {{'worker': [...]}}, 'task': {{'type': t, "
                             f"'index': i}}}}: {e}")
    if index is None and env.get("JOB_COMPLETION_INDEX"):
        index = int(env["JOB_COMPLETION_INDEX"])
        if count is None and env.get("MACH_TF_NUM_WORKERS"):
            count = int(env["MACH_TF_NUM_WORKERS"])
    if index is None and env.get("SLURM_ARRAY_TASK_ID"):
        index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        if count is None and env.get("SLURM_ARRAY_TASK_COUNT"):
            count = int(env["SLURM_ARRAY_TASK_COUNT"])
    index = 0 if index is None else int(index)
    count = 1 if count is None else int(count)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"worker index {index} is outside [0, {count})")
    return index, count


def assigned_repetitions(num_repetitions: int, index: int, count: int) -> list[int]:
    """The repetitions worker ``index`` of ``count`` owns: ``r % count == index``."""
    return [r for r in range(num_repetitions) if r % count == index]


_THREADS: int | None = None  # this process's thread budget, once configure_threads set it


def configure_threads(threads: int | None) -> None:
    """Sizes TensorFlow's thread pools (call before any TensorFlow op runs).

    The training input pipeline's tf.data thread pool gets the same size (see
    :func:`epochs_dataset`), so a worker given ``threads`` cores stays within them.
    """
    global _THREADS
    if not threads:
        return
    _THREADS = int(threads)
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, int(threads))))
    except RuntimeError:
        pass  # already initialised: keep TensorFlow's pools


# -- run preparation -----------------------------------------------------------------------
def count_labels(data, num_classes: int, num_features: int | None = None
                 ) -> tuple[np.ndarray, int]:
    """``(counts [K], num_examples)``: training frequency of every label.

    This is the one full pass over the training data before training, so it also checks
    what the manifest cannot promise: every label below ``num_classes`` and every feature
    id below ``num_features`` (nothing is clipped), and as many records as the manifest
    says. A corrupt shard is named
    (:func:`tfrecords_tools.verification.located_read_errors`).

    Raises:
        tfrecords_tools.ShardError: naming the shard at fault.
    """
    from tfrecords_tools.dataset import make_dataset
    from tfrecords_tools.manifest import Manifest
    from tfrecords_tools.verification import located_read_errors, locate

    m = Manifest.load(data)
    counts = np.zeros(num_classes, dtype=np.int64)
    n = 0
    with located_read_errors(m):
        for batch in make_dataset(m, 8192, shuffle=False):
            labels = batch["labels"].flat_values.numpy()
            ids = batch["feature_ids"].flat_values.numpy()
            if (labels.size and (labels.min() < 0 or labels.max() >= num_classes)) or (
                    num_features is not None and ids.size
                    and (ids.min() < 0 or ids.max() >= num_features)):
                raise locate(m)
            counts += np.bincount(labels, minlength=num_classes)
            n += int(batch["labels"].nrows())
    if n != m.num_examples:
        raise locate(m)
    return counts, n


def config_for_data(train: str, **overrides) -> MachConfig:
    """A config sized to the training data's manifest (K, D, N), with ``overrides``."""
    from tfrecords_tools.manifest import Manifest

    from mach_tf.text_config import data_config_overrides

    m = Manifest.load(train)
    num_features, overrides = data_config_overrides(m, overrides)  # text: D and featuriser
    return MachConfig.from_data(m.num_labels, num_features, m.num_examples, **overrides)


def check_data(config: MachConfig, data: str, role: str) -> None:
    """Refuses data the run's config cannot take, before training or evaluation starts.

    The manifest's dimensions are declared ones (the converter refuses any id beyond
    them), so data whose dimensions fit the config holds only ids the model knows.

    Raises:
        mach_tf.rundir.RunDirError: naming the data, the field and both values.
    """
    from tfrecords_tools.manifest import Manifest

    m = Manifest.load(data)
    from mach_tf.text_config import check_data_kind

    check_data_kind(config, m, role)
    beyond = [f"{field}={have}, beyond the run's config ({mine}={want})"
              for field, have, mine, want in (
                  ("num_features", m.num_features, "num_features", config.num_features),
                  ("num_labels", m.num_labels, "num_classes", config.num_classes))
              if have > want]
    if beyond:
        raise rundir.RunDirError(
            f"{m.path}: {role} data has " + "; ".join(beyond) + " (its ids may lie "
            "beyond what the model knows); convert it with the run's dimensions or train a "
            "new run sized to it")
    if role == "training" and m.num_examples == 0:
        raise rundir.RunDirError(f"{m.path}: training data has no examples")


def prepare_run(run: str, config: MachConfig, train: str, valid: str | None = None) -> MachConfig:
    """Writes (or checks) the run's config and training-data facts."""
    from tfrecords_tools.manifest import Manifest

    if config.text is not None:  # count the text's document frequencies, once
        from mach_tf.text import adapt_run

        check_data(config, train, "training")
        config = adapt_run(run, config, train)
    config = rundir.ensure_config(run, config)
    check_data(config, train, "training")
    if valid:
        check_data(config, valid, "validation")
    path = os.path.join(run, rundir.TRAIN_DATA)
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        m = Manifest.load(train)
        counts, n = count_labels(train, config.num_classes, config.num_features)
        rundir.save_label_counts(run, counts, n)
        rundir.write_json_atomic(path, {
            "train": os.path.abspath(train) if "://" not in train else train,
            "valid": (os.path.abspath(valid) if valid and "://" not in valid else valid),
            "num_examples": m.num_examples, "num_features": m.num_features,
            "num_labels": m.num_labels})
    return config


# -- one worker ----------------------------------------------------------------------------
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


class NonFiniteLossError(RuntimeError):
    """Training of a group diverged (its loss became NaN or infinite)."""


def _nan_guard(learning_rate: float):
    import keras

    class StopOnNonFiniteLoss(keras.callbacks.Callback):
        """Stops a group whose loss turns NaN/Inf, so no completion marker is written."""

        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.model.stop_training = True
                raise NonFiniteLossError(
                    f"training loss became {float(loss)} at epoch {self.epoch + 1}, batch "
                    f"{batch + 1}: training diverged (lower the learning rate, now "
                    f"{learning_rate:g}, or look for extreme feature values)")

    return StopOnNonFiniteLoss()


def group_name(group: Sequence[int]) -> str:
    return "group-" + "_".join(f"{r:03d}" for r in group)


def train_group(run: str, config: MachConfig, group: Sequence[int], train: str,
                valid: str | None = None, worker: int = 0, verbose: int = 2,
                log: Log = _stderr, *, save: Sequence[int] | None = None,
                checkpoint_every: int = 0, claims=None, events: Events | None = None,
                callbacks: Sequence = (), worker_cache: dict | None = None) -> dict:
    """Trains one group of repetitions with ``model.fit`` and saves each repetition.

    The group resumes from its step checkpoint in ``RUN/work/group-.../checkpoint`` when
    one exists (see :mod:`mach_tf.checkpoint`).

    Args:
        save: The repetitions to write (default: all of ``group``); the others are
            complete already.
        checkpoint_every: Also checkpoint every this many steps (0: at epoch ends and
            every 5 minutes).
        claims: The :class:`mach_tf.claims.ClaimSet` held on the group; checked before
            every checkpoint and before the repetitions are written.
        events: Receives progress events (dicts).
        callbacks: More Keras callbacks for the group's ``fit``, run after the reporting
            ones (e.g. a step timer; see ``benchmarks/train_speed.py``).
        worker_cache: Kept by the worker across its groups: the validation sample and
            the run's complete repetitions' scores on it (see
            :func:`mach_tf.group_training.setup_group`).

    Returns:
        The per-epoch history of the group.
    """
    import keras

    import tensorflow as tf

    from mach_tf.checkpoint import GroupCheckpoint, UnreadableCheckpointError, fit_resumable
    from mach_tf.group_training import best_epoch_summary, setup_group
    from mach_tf.model import build_model, compile_model, split

    group = list(group)
    save = group if save is None else [r for r in group if r in set(save)]
    name = group_name(group)
    work = os.path.join(run, "work", name)
    ckpt_dir = os.path.join(work, "checkpoint")
    keras.utils.set_random_seed(config.seed + 1000 * group[0])
    model = build_model(config, group)
    featurizer = None
    if config.text is not None:  # text runs featurise in the tf.data pipeline
        from mach_tf.text import load_featurizer

        featurizer = load_featurizer(run, config)
    # Data split, feature weights, merged validation and early stopping: group_training.
    from tfrecords_tools.verification import located_read_errors

    with located_read_errors(train, valid):  # reads the validation sample (and idf)
        setup = setup_group(model, config, group, train, valid, run=run,
                            featurizer=featurizer, worker_cache=worker_cache)
    steps = setup.steps
    compile_model(model, config, steps)
    emit = events or (lambda e: None)
    fit_callbacks = [_nan_guard(config.learning_rate), *setup.callbacks]
    from mach_tf.summaries import reporting_callbacks

    reporting = [keras.callbacks.TensorBoard(os.path.join(run, "logs", name),
                                             write_graph=False, profile_batch=0),
                 *reporting_callbacks(run, config, group, setup.sample)]
    if events is not None:
        reporting.append(_progress_callback(emit, worker, group, config.epochs))
    reporting.extend(callbacks)
    state = GroupCheckpoint(ckpt_dir).state()
    if state is not None:
        emit({"event": "resume", "worker": worker, "reps": group, "epoch": state["epoch"],
              "step": state["step"], "finished": state.get("finished", False)})
        log(f"[worker {worker}] repetitions {group}: resuming at epoch {state['epoch']}, "
            f"step {state['step']} of {steps} (global step {state['global_step']})")
    check = claims.check if claims is not None else None
    t0 = time.time()
    try:
        with located_read_errors(train, valid):
            hist, info = fit_resumable(
                model,
                lambda first, skip: epochs_dataset(train, config, group, first, skip, steps,
                                                   featurizer, setup.split.train_filter()),
                steps_per_epoch=steps, epochs=config.epochs, checkpoint_dir=ckpt_dir,
                callbacks=fit_callbacks, after_checkpoint=reporting, verbose=verbose,
                every_steps=checkpoint_every, before_save=check)
    except UnreadableCheckpointError as e:
        # A torn checkpoint must not fail every rerun: report it and start the group over.
        log(f"[worker {worker}] repetitions {group}: {e}; training them from the start")
        tf.io.gfile.rmtree(ckpt_dir)
        return train_group(run, config, group, train, valid, worker=worker, verbose=verbose,
                           log=log, save=save, checkpoint_every=checkpoint_every,
                           claims=claims, events=events, callbacks=callbacks,
                           worker_cache=worker_cache)
    seconds = time.time() - t0
    if info.get("lost_best_weights"):
        log(f"[worker {worker}] repetitions {group}: the best epoch's checkpoint was "
            f"unreadable; early stopping kept the best of the epochs after the restart")
    if check is not None:
        check()
    for g, (r, single) in enumerate(zip(group, split(model))):
        if r not in save:
            continue
        marker = {
            "repetition": r, "group": group, "worker": worker, "epochs": len(hist.get(
                "loss", [])), "train_seconds": seconds,
            "final_loss": hist.get("loss", [None])[-1],
            "bucket_acc": hist.get(f"rep_{r:03d}_acc", hist.get("bucket_acc", [None]))[-1],
            "hashing": config.hash_family.subset([r]).to_dict(),
            **best_epoch_summary(hist, config),
            "steps_per_epoch": steps, "resumed_from": info["resumed_from"],
            "steps_run": info["steps_run"],
            "optimizer_iterations": info["optimizer_iterations"],
            "mach_tf_version": __version__, "finished_at": time.time()}
        rundir.save_repetition(run, r, single, marker)
        emit({"event": "rep_complete", "worker": worker, "rep": r})
    if tf.io.gfile.exists(work):
        tf.io.gfile.rmtree(work)
    return hist


def epochs_dataset(train: str, config: MachConfig, group: Sequence[int], first: int,
                   skip: int, steps: int, featurizer=None, record_filter=None):
    """The training batches of epochs ``first..config.epochs-1``, ``skip`` batches of the
    first left out. Epoch ``e`` is shuffled with seed ``config.seed + e`` alone, so a
    resumed group sees exactly the batches an uninterrupted one would.

    Each epoch is exactly ``steps`` batches of its own repeated stream: with a carved
    validation split (``record_filter``) the number of training records is only
    estimated, and an epoch must never run out of data."""
    from mach_tf.data import training_dataset

    out = None
    for e in range(first, config.epochs):
        ds = training_dataset(train, config, group, shuffle=True, seed=config.seed + e,
                              repeat=True, featurizer=featurizer, record_filter=record_filter)
        ds = ds.take(steps)
        if e == first and skip:
            ds = ds.skip(skip)  # reads, but does not train on, the batches already done
        out = ds if out is None else out.concatenate(ds)
    if _THREADS:
        import tensorflow as tf

        options = tf.data.Options()
        options.threading.private_threadpool_size = _THREADS
        out = out.with_options(options)
    return out


def _progress_callback(emit: Events, worker: int, group: list[int], epochs: int):
    import keras

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            emit({"event": "epoch", "worker": worker, "reps": group, "epoch": epoch + 1,
                  "epochs": epochs, "loss": float(logs.get("loss", float("nan"))),
                  "bucket_acc": float(logs.get("bucket_acc", float("nan")))})

    return Progress()


def train_worker(run: str, train: str, valid: str | None = None,
                 config: MachConfig | None = None, worker_index: int | None = None,
                 num_workers: int | None = None, verbose: int = 2,
                 log: Log = _stderr, *, checkpoint_every: int = 0,
                 claim_lease: float | None = None, events: Events | None = None,
                 callbacks: Sequence = ()) -> WorkerReport:
    """Trains this worker's unfinished repetitions (see module docstring).

    Each group is claimed before it is trained (:mod:`mach_tf.claims`): a group another
    live worker holds is left to it and waited for after this worker's other groups; it is
    taken over if that worker's claim expires. Groups resume from their step checkpoints.

    Args:
        run: The run directory.
        train: Training data prefix.
        valid: Optional validation data prefix.
        config: The config; ``None`` reads the run's ``config.json``.
        worker_index, num_workers: This worker's place (see :func:`worker_identity`).
        verbose: Keras fit verbosity.
        log: Where progress lines go.
        checkpoint_every: Also checkpoint every this many steps (0: epoch ends and every
            5 minutes).
        claim_lease: Seconds without a heartbeat after which a claim is taken over
            (default ``MACH_TF_CLAIM_LEASE_S`` or 120).
        events: Receives progress events (dicts), e.g. for a launcher's display.
        callbacks: More Keras callbacks for every group's ``fit`` (see
            :func:`train_group`).

    Returns:
        A :class:`WorkerReport`. Repetitions whose training failed are listed in
        ``failed`` (with the reason); the others are unaffected.
    """
    from mach_tf import claims as claims_lib

    index, count = worker_identity(worker_index, num_workers)
    cpu0 = time.process_time()
    if config is None:
        config = rundir.load_config(run)
    config = prepare_run(run, config, train, valid)
    lease = float(claim_lease or os.environ.get("MACH_TF_CLAIM_LEASE_S")
                  or claims_lib.DEFAULT_LEASE_S)
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
    owner = claims_lib.Owner.this_process(index)
    pending = plan_groups(run, mine, todo, config.group_size)
    worker_cache: dict = {}  # validation sample and complete repetitions' scores
    waiting: set = set()  # groups whose holders were already named in the log
    while pending:
        deferred = []
        for group in pending:
            left = [r for r in group if not rundir.is_complete(run, r)]
            if not left:
                report.skipped.extend(r for r in group if r not in report.skipped)
                log(f"{tag} repetitions {group} were completed by another worker")
                continue
            held = claims_lib.ClaimSet.acquire([rundir.rep_dir(run, r) for r in left], owner,
                                               lease, log=lambda m: log(f"{tag} {m}"))
            if held is None:
                deferred.append(group)
                if tuple(group) not in waiting:
                    waiting.add(tuple(group))
                    holders = {r: claims_lib.current_holder(rundir.rep_dir(run, r))
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
                except (NonFiniteLossError, claims_lib.ClaimLost) as e:
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
    from mach_tf.checkpoint import GroupCheckpoint

    return GroupCheckpoint(os.path.join(run, "work", group_name(group), "checkpoint")
                           ).state() is not None


def plan_groups(run: str, mine: Sequence[int], todo: Sequence[int],
                group_size: int) -> list[list[int]]:
    """This worker's groups: first the interrupted groups it can resume (a checkpoint in
    ``RUN/work/`` whose repetitions are all this worker's, e.g. from a rerun with another
    number of workers), then the rest of ``todo`` in chunks of ``group_size``."""
    import tensorflow as tf

    from mach_tf.checkpoint import GroupCheckpoint

    mine_set, todo_set, taken = set(mine), set(todo), set()
    groups = []
    work = os.path.join(run, "work")
    names = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(work)) \
        if tf.io.gfile.isdir(work) else []
    for n in names:
        try:
            reps = [int(x) for x in n[len("group-"):].split("_")] if n.startswith(
                "group-") else []
        except ValueError:
            continue
        if reps and set(reps) <= mine_set and set(reps) & todo_set and \
                not set(reps) & taken and \
                GroupCheckpoint(os.path.join(work, n, "checkpoint")).state() is not None:
            groups.append(reps)
            taken |= set(reps)
    rest = [r for r in todo if r not in taken]
    groups += [rest[i:i + group_size] for i in range(0, len(rest), group_size)]
    return groups


# -- local launcher ------------------------------------------------------------------------
def _gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        return 0


def _hide_gpus_from_driver() -> None:
    """The driver only reads data; its GPUs belong to the workers it starts."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        pass


# TensorFlow's C++ start-up chatter (absl ignores TF_CPP_MIN_LOG_LEVEL for these lines).
_NOISE = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ")


def _pump(stream, prefix: str, sink) -> None:
    for line in iter(stream.readline, ""):
        if line.startswith(_NOISE) or "oneDNN supports DT_INT64" in line:
            continue
        sink.write(f"{prefix}{line}")
        sink.flush()


def train(run: str, train: str, valid: str | None = None, config: MachConfig | None = None,
          workers: int = 1, threads: int | None = None, verbose: int = 2,
          log: Log = _stderr, *, checkpoint_every: int = 0,
          claim_lease: float | None = None, callbacks: Sequence = ()) -> dict:
    """Trains every repetition with ``workers`` local worker processes.

    Each worker is a separate ``python -m mach_tf train --worker-index i`` process with its
    own device (``CUDA_VISIBLE_DEVICES`` = one GPU per worker, round robin, when GPUs
    exist) and a share of the CPU threads. With ``workers=1`` training runs in this process,
    and ``callbacks`` (more Keras callbacks for every group's ``fit``) run in it.

    Raises:
        ValueError: for ``callbacks`` with ``workers > 1`` (they cannot reach the workers'
            processes).

    Returns:
        A summary: ``trained``, ``skipped``, ``failed`` repetitions and ``seconds``.
    """
    t0 = time.time()
    if callbacks and workers > 1:
        raise ValueError("callbacks run in this process: pass them only with workers=1")
    if workers > 1:
        _hide_gpus_from_driver()
    if config is None:
        config = rundir.load_config(run)
    config = prepare_run(run, config, train, valid)
    from mach_tf.progress import RepetitionProgress

    if workers <= 1:
        configure_threads(threads)
        with RepetitionProgress(run, config.num_repetitions, log):
            rep = train_worker(run, train, valid, config, 0, 1, verbose=verbose, log=log,
                               checkpoint_every=checkpoint_every, claim_lease=claim_lease,
                               callbacks=callbacks)
        return run_summary(run, config, [rep.to_dict()], time.time() - t0, log)
    with RepetitionProgress(run, config.num_repetitions, log):
        reports = _run_local_workers(run, train, valid, config, workers, threads, verbose,
                                     checkpoint_every, claim_lease)
    return run_summary(run, config, reports, time.time() - t0, log)


def _run_local_workers(run, train, valid, config, workers, threads, verbose,
                       checkpoint_every, claim_lease) -> list[dict]:
    """Starts ``workers`` worker processes, relays their output, returns their reports."""
    ngpu = _gpu_count()
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    procs = []
    for i in range(workers):
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = str(i % ngpu) if ngpu else ""
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        cmd = [sys.executable, "-m", "mach_tf", "train", "--model-dir", run, "--train", train,
               "--worker-index", str(i), "--num-workers", str(workers), "--threads",
               str(threads), "--report-json", "--verbose-fit", str(verbose)]
        if valid:
            cmd += ["--valid", valid]
        if checkpoint_every:
            cmd += ["--checkpoint-every", str(checkpoint_every)]
        if claim_lease:
            cmd += ["--claim-lease", str(claim_lease)]
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        t = threading.Thread(target=_pump, args=(p.stderr, f"[w{i}] ", sys.stderr),
                             daemon=True)
        t.start()
        procs.append((p, t))
    reports = []
    for i, (p, t) in enumerate(procs):
        out = p.stdout.read()
        p.wait()
        t.join()
        last = [ln for ln in out.splitlines() if ln.startswith("{")]
        if p.returncode == 0 and last:
            reports.append(json.loads(last[-1]))
        else:
            mine = assigned_repetitions(config.num_repetitions, i, workers)
            reports.append({"worker_index": i, "num_workers": workers, "trained": [],
                            "skipped": [], "failed": {str(r): f"worker {i} exited with "
                                                              f"code {p.returncode}"
                                                      for r in mine
                                                      if not rundir.is_complete(run, r)}})
    return reports


def run_summary(run: str, config: MachConfig, reports: list[dict], seconds: float,
                log: Log = _stderr) -> dict:
    """:func:`_summary`, after writing the run's final merged validation and HParams
    session for TensorBoard (:func:`mach_tf.summaries.write_run_summary`)."""
    from mach_tf.summaries import write_run_summary

    out = _summary(run, config, reports, seconds)
    try:
        written = write_run_summary(run, config, {"train_seconds": out["seconds"]})
    except Exception as e:  # noqa: BLE001 - the models are trained; report, do not fail
        log(f"TensorBoard: final summary not written ({type(e).__name__}: {e})")
        return out
    if written["final"]:
        out["final_validation"] = {k: round(v, 4) for k, v in written["final"].items()}
    return out


#: Created (exclusively) by the one scheduler-started worker that writes the run summary.
SUMMARY_MARKER = "summary-writer.json"


def summarize_if_complete(run: str, config: MachConfig, worker: int,
                          log: Log = _stderr) -> dict | None:
    """Scheduler mode, where no driver outlives the workers: the first worker to find
    every repetition complete writes the run's final merged validation and HParams
    session (:func:`mach_tf.summaries.write_run_summary`), once per run.

    Returns:
        What was written, or ``None`` (run not complete, or another worker writes it).
    """
    from mach_tf import claims as claims_lib
    from mach_tf.summaries import merged_logdir, write_run_summary

    if not all(rundir.is_complete(run, r) for r in range(config.num_repetitions)):
        return None
    owner = claims_lib.Owner.this_process(worker)
    marker = os.path.join(merged_logdir(run), SUMMARY_MARKER)
    if not claims_lib.create_exclusive(marker, {"worker": worker, "owner": vars(owner),
                                                "at": time.time()}):
        return None
    try:
        written = write_run_summary(run, config)
    except Exception as e:  # noqa: BLE001 - the models are trained; report, do not fail
        log(f"[worker {worker}] TensorBoard: final summary not written "
            f"({type(e).__name__}: {e})")
        return None
    log(f"[worker {worker}] every repetition is complete: wrote the run's final merged "
        f"validation and HParams session to {written['logdir']}")
    return written


def _summary(run: str, config: MachConfig, reports: list[dict], seconds: float) -> dict:
    trained = sorted(r for rep in reports for r in rep.get("trained", []))
    skipped = sorted(r for rep in reports for r in rep.get("skipped", []))
    failed = {int(r): why for rep in reports for r, why in rep.get("failed", {}).items()}
    complete = [r for r in range(config.num_repetitions) if rundir.is_complete(run, r)]
    return {"model_dir": run, "repetitions": config.num_repetitions, "trained": trained,
            "skipped": skipped, "failed": failed, "complete": len(complete),
            "seconds": round(seconds, 3), "workers": len(reports)}
