"""The local launcher: ``mach-tf train --workers N`` on one machine.

Each worker is a separate ``python -m mach_tf train --worker-index i`` process with its own
device (one GPU per worker, round robin, when GPUs exist) and a share of the CPU threads;
with one worker, training runs in this process. The launcher relays the workers' output,
prints every worker's epochs and the run's progress from the progress records and
completion markers in the run directory, and ends with the run's report and
TensorBoard summary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Sequence

import tensorflow as tf

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.launch.identity import assigned_repetitions
from mach_tf.launch.progress import RepetitionProgress
from mach_tf.launch.report import finish_run
from mach_tf.launch.worker import train_worker
from mach_tf.training.group import Log, log_to_stderr
from mach_tf.training.pipeline import configure_threads
from mach_tf.training.prepare import prepare_run
from tfrecords_tools.paths import expand_path


def _gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        return 0


def hide_gpus_from_driver() -> None:
    """The driver only reads data; its GPUs belong to the workers it starts."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        pass


# TensorFlow's C++ start-up chatter (absl ignores TF_CPP_MIN_LOG_LEVEL for these lines).
_NOISE = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ")


def _pump(stream, prefix: str, sink, reports: list | None = None) -> None:
    """Relays a worker's output lines to ``sink``; with ``reports``, its JSON lines (the
    worker's report) go there instead."""
    for line in iter(stream.readline, ""):
        if line.startswith(_NOISE) or "oneDNN supports DT_INT64" in line:
            continue
        if reports is not None and line.startswith("{"):
            reports.append(line)
            continue
        sink.write(f"{prefix}{line}")
        sink.flush()


def train(run: str, train: str, valid: str | None = None, config: MachConfig | None = None,
          workers: int = 1, threads: int | None = None, verbose: int = 2,
          log: Log = log_to_stderr, *, checkpoint_every: int = 0,
          claim_lease: float | None = None, callbacks: Sequence = ()) -> dict:
    """Trains every repetition of a run with ``workers`` local worker processes
    (``mach_tf.train``; ``mach-tf train``).

    Each worker is a separate ``python -m mach_tf train --worker-index i`` process with its
    own device (``CUDA_VISIBLE_DEVICES`` = one GPU per worker, round robin, when GPUs
    exist) and a share of the CPU threads. With ``workers=1`` training runs in this process.
    A rerun with the same run directory skips finished repetitions and resumes the others.

    Args:
        run: The run directory.
        train: Training data prefix (``PREFIX`` of ``PREFIX.manifest.json``).
        valid: Separate validation data; default: held out from ``train``.
        config: The config; ``None`` reads the run's ``config.json``.
        workers: Local worker processes.
        threads: TensorFlow threads per worker (default: the cores divided among them).
        verbose: Keras ``fit`` verbosity (workers' Keras lines are relayed to stderr).
        log: Where progress lines go: each worker's epochs, and the run's progress with an
            estimate of the time left (:mod:`mach_tf.launch.progress`), from the first
            epoch.
        checkpoint_every: Also checkpoint every this many steps.
        claim_lease: Seconds without a heartbeat after which a claim is taken over.
        callbacks: More Keras callbacks for every group's ``fit`` (``workers=1`` only: they
            run in this process).

    Raises:
        ValueError: for ``callbacks`` with ``workers > 1`` (they cannot reach the workers'
            processes).

    Returns:
        A report (:func:`mach_tf.launch.report.finish_run`): ``trained``, ``skipped``,
        ``failed`` repetitions, ``complete``, ``seconds``, ``workers`` and, with validation,
        ``final_validation``.
    """
    run, train, valid = expand_path(run), expand_path(train), expand_path(valid)
    t0 = time.time()
    if callbacks and workers > 1:
        raise ValueError("callbacks run in this process: pass them only with workers=1")
    if workers > 1:
        hide_gpus_from_driver()
    if config is None:
        config = rundir.load_config(run)
    config = prepare_run(run, config, train, valid)
    if workers <= 1:
        configure_threads(threads)
        with RepetitionProgress(run, config.num_repetitions, log, epochs=config.epochs):
            rep = train_worker(run, train, valid, config, 0, 1, verbose=verbose, log=log,
                               checkpoint_every=checkpoint_every, claim_lease=claim_lease,
                               callbacks=callbacks)
        return finish_run(run, config, [rep.to_dict()], time.time() - t0, log)
    with RepetitionProgress(run, config.num_repetitions, log, epochs=config.epochs,
                            num_workers=workers):
        reports = _run_local_workers(run, train, valid, config, workers, threads, verbose,
                                     checkpoint_every, claim_lease)
    return finish_run(run, config, reports, time.time() - t0, log)


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
        # stdout: the worker's report (JSON), and Keras' own lines with verbose fits.
        out: list = []
        pumps = [threading.Thread(target=_pump, args=(stream, f"[w{i}] ", sys.stderr, keep),
                                  daemon=True)
                 for stream, keep in ((p.stderr, None), (p.stdout, out))]
        for t in pumps:
            t.start()
        procs.append((p, pumps, out))
    reports = []
    for i, (p, pumps, out) in enumerate(procs):
        p.wait()
        for t in pumps:
            t.join()
        last = [ln for ln in out if ln.startswith("{")]
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
