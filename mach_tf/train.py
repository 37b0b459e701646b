"""Training: each worker trains its share of the R repetitions, alone.

Worker ``i`` of ``N`` owns the repetitions ``r`` with ``r % N == i``. It trains them in
groups of ``config.group_size`` (one Keras model per group, weights separate per
repetition) with ``model.fit`` on one device and no distribution strategy, and writes each
finished repetition to the run directory with its completion marker. Workers never
communicate: the run directory is their only meeting point, so they can run as local
processes (:func:`train`), Ray tasks, Kubernetes indexed jobs or Slurm array tasks.
A rerun skips repetitions already complete and resumes unfinished groups from their last
backup.
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


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- worker identity -----------------------------------------------------------------------
def worker_identity(worker_index: int | None = None, num_workers: int | None = None,
                    env=None) -> tuple[int, int]:
    """``(index, count)`` of this worker, from arguments or the scheduler's environment.

    Looked up in order: explicit arguments; ``TF_CONFIG`` (``task.index`` among
    ``cluster.worker``); Kubernetes Indexed Jobs (``JOB_COMPLETION_INDEX``, count from
    ``num_workers`` or ``MACH_TF_NUM_WORKERS``); Slurm arrays (``SLURM_ARRAY_TASK_ID`` minus
    ``SLURM_ARRAY_TASK_MIN``, count ``SLURM_ARRAY_TASK_COUNT``). Default ``(0, 1)``.

    Raises:
        ValueError: for an index outside ``[0, count)`` or an unreadable ``TF_CONFIG``.
    """
    env = os.environ if env is None else env
    index, count = worker_index, num_workers
    if index is None and env.get("TF_CONFIG"):
        try:
            tf_config = json.loads(env["TF_CONFIG"])
            task = tf_config.get("task", {})
            cluster = tf_config.get("cluster", {})
            index = int(task.get("index", 0))
            if count is None:
                count = len(cluster.get(task.get("type", "worker"), [])) or None
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"TF_CONFIG is not valid JSON of the form "
                             f"{{'cluster': {{'worker': [...]}}, 'task': {{'index': i}}}}: {e}")
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


def configure_threads(threads: int | None) -> None:
    """Sizes TensorFlow's thread pools (call before any TensorFlow op runs)."""
    if not threads:
        return
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
    """A config sized to the training data's manifest (K, D), with ``overrides``."""
    from tfrecords_tools.manifest import Manifest

    m = Manifest.load(train)
    return MachConfig.from_data(m.num_labels, m.num_features, **overrides)


def check_data(config: MachConfig, data: str, role: str) -> None:
    """Refuses data the run's config cannot take, before training or evaluation starts.

    The manifest's dimensions are declared ones (the converter refuses any id beyond
    them), so data whose dimensions fit the config holds only ids the model knows.

    Raises:
        mach_tf.rundir.RunDirError: naming the data, the field and both values.
    """
    from tfrecords_tools.manifest import Manifest

    m = Manifest.load(data)
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


class UnreadableBackupError(RuntimeError):
    """A group's BackupAndRestore state that cannot be resumed from."""


def _backup(path: str):
    import keras

    class Backup(keras.callbacks.BackupAndRestore):
        """Keras rewrites its backup files in place, so a crash while it saves can leave
        them cut short; such a backup is reported instead of failing every rerun."""

        def on_train_begin(self, logs=None):
            try:
                super().on_train_begin(logs)
            except (OSError, ValueError, KeyError) as e:
                raise UnreadableBackupError(f"{path}: {type(e).__name__}: {e}") from e

    return Backup(path, save_freq="epoch", double_checkpoint=True)


def train_group(run: str, config: MachConfig, group: Sequence[int], train: str,
                valid: str | None = None, worker: int = 0, verbose: int = 2,
                log: Log = _stderr) -> dict:
    """Trains one group of repetitions with ``model.fit`` and saves each repetition.

    Returns:
        The Keras history of the group.
    """
    import keras

    from mach_tf.data import training_dataset
    from mach_tf.model import build_model, compile_model, split

    group = list(group)
    name = "group-" + "_".join(f"{r:03d}" for r in group)
    work = os.path.join(run, "work", name)
    keras.utils.set_random_seed(config.seed + 1000 * group[0])
    model = build_model(config, group)
    compile_model(model, config)
    from tfrecords_tools.manifest import Manifest

    steps = max(1, math.ceil(Manifest.load(train).num_examples / config.batch_size))
    ds = training_dataset(train, config, group, shuffle=True, repeat=True)
    val = training_dataset(valid, config, group, shuffle=False) if valid else None
    callbacks = [
        _nan_guard(config.learning_rate),
        _backup(os.path.join(work, "backup")),
        keras.callbacks.TensorBoard(os.path.join(run, "logs", name), write_graph=False,
                                    profile_batch=0),
    ]
    t0 = time.time()
    from tfrecords_tools.verification import located_read_errors

    try:
        with located_read_errors(train, valid):
            history = model.fit(ds, validation_data=val, epochs=config.epochs,
                                steps_per_epoch=steps, verbose=verbose, callbacks=callbacks,
                                shuffle=False)
    except UnreadableBackupError as e:
        log(f"repetitions {group}: backup unreadable ({e}); training them from the start")
        import tensorflow as tf

        tf.io.gfile.rmtree(os.path.join(work, "backup"))
        return train_group(run, config, group, train, valid, worker, verbose, log)
    seconds = time.time() - t0
    hist = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    for g, (r, single) in enumerate(zip(group, split(model))):
        marker = {
            "repetition": r, "group": group, "worker": worker, "epochs": len(hist.get(
                "loss", [])), "train_seconds": seconds,
            "final_loss": hist.get("loss", [None])[-1],
            "bucket_acc": hist.get(f"rep_{r:03d}_acc", hist.get("bucket_acc", [None]))[-1],
            "hashing": config.hash_family.subset([r]).to_dict(),
            "mach_tf_version": __version__, "finished_at": time.time()}
        rundir.save_repetition(run, r, single, marker)
    import tensorflow as tf

    if tf.io.gfile.exists(work):
        tf.io.gfile.rmtree(work)
    return hist


def train_worker(run: str, train: str, valid: str | None = None,
                 config: MachConfig | None = None, worker_index: int | None = None,
                 num_workers: int | None = None, verbose: int = 2,
                 log: Log = _stderr) -> WorkerReport:
    """Trains this worker's unfinished repetitions (see module docstring).

    Args:
        run: The run directory.
        train: Training data prefix.
        valid: Optional validation data prefix.
        config: The config; ``None`` reads the run's ``config.json``.
        worker_index, num_workers: This worker's place (see :func:`worker_identity`).
        verbose: Keras fit verbosity.
        log: Where progress lines go.

    Returns:
        A :class:`WorkerReport`. Repetitions whose training failed are listed in
        ``failed`` (with the reason); the others are unaffected.
    """
    index, count = worker_identity(worker_index, num_workers)
    if config is None:
        config = rundir.load_config(run)
    config = prepare_run(run, config, train, valid)
    report = WorkerReport(index, count)
    t0 = time.time()
    mine = assigned_repetitions(config.num_repetitions, index, count)
    report.skipped = [r for r in mine if rundir.is_complete(run, r)]
    todo = [r for r in mine if r not in report.skipped]
    if report.skipped:
        log(f"[worker {index}/{count}] repetitions {report.skipped} already complete: skipped")
    for start in range(0, len(todo), config.group_size):
        group = todo[start:start + config.group_size]
        log(f"[worker {index}/{count}] training repetitions {group}")
        try:
            train_group(run, config, group, train, valid, worker=index, verbose=verbose,
                        log=log)
        except NonFiniteLossError as e:
            for r in group:
                report.failed[r] = str(e)
            log(f"[worker {index}/{count}] repetitions {group} FAILED: {e}")
            continue
        report.trained.extend(group)
        log(f"[worker {index}/{count}] repetitions {group} complete")
    report.seconds = time.time() - t0
    return report


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
          log: Log = _stderr) -> dict:
    """Trains every repetition with ``workers`` local worker processes.

    Each worker is a separate ``python -m mach_tf train --worker-index i`` process with its
    own device (``CUDA_VISIBLE_DEVICES`` = one GPU per worker, round robin, when GPUs
    exist) and a share of the CPU threads. With ``workers=1`` training runs in this process.

    Returns:
        A summary: ``trained``, ``skipped``, ``failed`` repetitions and ``seconds``.
    """
    t0 = time.time()
    if workers > 1:
        _hide_gpus_from_driver()
    if config is None:
        config = rundir.load_config(run)
    config = prepare_run(run, config, train, valid)
    if workers <= 1:
        configure_threads(threads)
        rep = train_worker(run, train, valid, config, 0, 1, verbose=verbose, log=log)
        return _summary(run, config, [rep.to_dict()], time.time() - t0)
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
    return _summary(run, config, reports, time.time() - t0)


def _summary(run: str, config: MachConfig, reports: list[dict], seconds: float) -> dict:
    trained = sorted(r for rep in reports for r in rep.get("trained", []))
    skipped = sorted(r for rep in reports for r in rep.get("skipped", []))
    failed = {int(r): why for rep in reports for r, why in rep.get("failed", {}).items()}
    complete = [r for r in range(config.num_repetitions) if rundir.is_complete(run, r)]
    return {"model_dir": run, "repetitions": config.num_repetitions, "trained": trained,
            "skipped": skipped, "failed": failed, "complete": len(complete),
            "seconds": round(seconds, 3), "workers": len(reports)}
