"""The Ray launcher: ``mach-tf train --launcher ray --num-workers N [--ray-address ADDR]``.

Each of the N workers is one Ray task running :func:`mach_tf.launch.worker.train_worker` for its
index, in a fresh worker process (``max_calls=1``, so TensorFlow's thread pools can be
sized for it). A task asks for one GPU when the cluster has GPUs, otherwise a share of
the cluster's CPUs with TensorFlow's thread pools sized to it. Tasks read the TFRecords
and write the run directory themselves through ``tf.io.gfile``: on a multi-machine
cluster, give paths every node can reach (a shared filesystem or ``gs://``/``s3://``).
Workers exchange nothing with each other or with the driver beyond progress events.

The driver writes (or checks) the run's config before starting any task, so a rerun with
a different config is refused before work starts. It prints per-repetition progress as
workers report it (epochs, completed repetitions, resumptions and takeovers) and returns
a report of what was trained, skipped and failed.

A task whose process dies (SIGKILL, out of memory, node lost) is retried by Ray up to
``max_retries`` times; the retry skips finished repetitions, takes over the dead
process's claims and resumes its group from the last step checkpoint.
"""

from __future__ import annotations

import collections
import json
import os
import time

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.launch.identity import assigned_repetitions
from mach_tf.launch.local import hide_gpus_from_driver
from mach_tf.launch.report import finish_run, merge_reports
from mach_tf.launch.worker import train_worker
from mach_tf.training.group import log_to_stderr
from mach_tf.training.pipeline import configure_threads
from mach_tf.training.prepare import prepare_run
from tfrecords_tools.paths import expand_path


def _encoded_size(obj) -> int:
    """Bytes of ``obj`` as JSON: the size of what crosses between driver and workers (Ray's
    own transport encoding differs by a small constant factor)."""
    return len(json.dumps(obj, default=str).encode())


def _abs(path: str | None) -> str | None:
    """Local paths made absolute: Ray worker processes do not share the driver's cwd."""
    if not path or "://" in path:
        return path
    return os.path.abspath(path)


class ProgressBoard:
    """A Ray actor that collects workers' progress events for the driver to show."""

    def __init__(self):
        self._events = []

    def put(self, event: dict) -> None:
        self._events.append(event)

    def drain(self) -> list[dict]:
        out, self._events = self._events, []
        return out


def _worker_task(run: str, train: str, valid: str | None, index: int, count: int,
                 threads: int, use_gpu: bool, checkpoint_every: int,
                 claim_lease: float | None, board) -> dict:
    """One worker, inside a Ray task (fresh process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not use_gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    configure_threads(threads)

    def events(e: dict) -> None:
        board.put.remote(e)

    def log(msg: str) -> None:
        events({"event": "log", "worker": index, "message": msg})

    report = train_worker(run, train, valid, None, index, count, verbose=0, log=log,
                          checkpoint_every=checkpoint_every, claim_lease=claim_lease,
                          events=events)
    return report.to_dict()


class _Display:
    """Turns workers' events into progress lines."""

    def __init__(self, log, num_repetitions: int, complete: set[int], num_workers: int):
        self.log = log
        self.total = num_repetitions
        self.complete = set(complete)
        self.n = num_workers
        self.attempts = collections.defaultdict(list)  # worker -> pids seen

    def show(self, events: list[dict]) -> None:
        for e in events:
            kind, w = e.get("event"), e.get("worker")
            if kind == "start":
                self.attempts[w].append(e.get("pid"))
                again = len(self.attempts[w])
                self.log(f"[worker {w}/{self.n}] started (pid {e.get('pid')}"
                         f"{f', attempt {again}' if again > 1 else ''}): repetitions "
                         f"{e.get('reps')}")
            elif kind == "log":
                self.log(e.get("message", ""))
            elif kind == "epoch":
                self.log(f"[worker {w}/{self.n}] repetitions {e['reps']}: epoch "
                         f"{e['epoch']}/{e['epochs']} loss {e['loss']:.4f} bucket_acc "
                         f"{e['bucket_acc']:.3f}")
            elif kind == "rep_complete":
                self.complete.add(e["rep"])
                self.log(f"[worker {w}/{self.n}] repetition {e['rep']} written "
                         f"({len(self.complete)}/{self.total} complete)")


def train_ray(run: str, train: str, valid: str | None = None,
              config: MachConfig | None = None, num_workers: int = 1,
              address: str | None = None, threads: int | None = None, max_retries: int = 3,
              checkpoint_every: int = 0, claim_lease: float | None = None,
              log=log_to_stderr, poll_seconds: float = 0.5) -> dict:
    """Trains every repetition with ``num_workers`` Ray tasks.

    Uses the Ray runtime this process is already connected to, else connects to
    ``address`` (or ``RAY_ADDRESS``), else starts a local one of its own (shut down again
    at the end).

    Args:
        run: The run directory (a path every Ray node can reach).
        train: Training data prefix (same).
        valid: Optional validation data prefix.
        config: The config; ``None`` reads the run's ``config.json``.
        num_workers: Ray tasks; worker ``i`` trains the repetitions ``r % N == i``.
        address: A Ray cluster address (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``).
        threads: TensorFlow threads (and Ray CPUs) per task; default: the cluster's CPUs
            divided by ``num_workers``.
        max_retries: Times Ray reruns a task whose process died (or raised ``OSError``).
        checkpoint_every: Also checkpoint every this many steps.
        claim_lease: Claim lease in seconds (see :mod:`mach_tf.launch.claims`).
        log: Where progress lines go.
        poll_seconds: How often the driver collects progress.

    Returns:
        A report like :func:`mach_tf.launch.local.train`'s (``trained``, ``skipped``,
        ``failed``, ``complete``, ``seconds``, ``workers``) plus ``launcher``, ``attempts`` (worker
        processes each worker index took; 0 when all its repetitions were complete and
        no task was started), ``threads_per_worker``, ``gpus_per_worker`` and
        ``driver_worker_bytes`` (JSON-encoded size of the task arguments, progress events and
        reports exchanged with the driver; workers have no channel to each other).

    Raises:
        RuntimeError: when Ray is not installed.
        rundir.RunDirError: for a run directory holding a different config.
    """
    run, train, valid = expand_path(run), expand_path(train), expand_path(valid)
    try:
        import ray
    except ImportError:
        raise RuntimeError("the Ray launcher needs Ray: pip install 'mach-tf[ray]'") from None
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    t0 = time.time()
    run, train, valid = _abs(run), _abs(train), _abs(valid)
    hide_gpus_from_driver()
    if config is None:
        config = rundir.load_config(run)
    config = prepare_run(run, config, train, valid)
    complete_before = {r for r in range(config.num_repetitions) if rundir.is_complete(run, r)}
    if len(complete_before) == config.num_repetitions:
        log(f"all {config.num_repetitions} repetitions are complete: nothing to train")
        report = merge_reports(run, config, [{
            "worker_index": i, "num_workers": num_workers, "trained": [], "failed": {},
            "skipped": assigned_repetitions(config.num_repetitions, i, num_workers)}
            for i in range(num_workers)], time.time() - t0)
        report.update(launcher="ray", attempts={str(i): 0 for i in range(num_workers)},
                      driver_worker_bytes={"task_args": 0, "events": 0, "results": 0})
        return report
    started_here = not ray.is_initialized()
    if started_here:
        # "local": a new runtime of our own, never one another user started on this host
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local",
                 include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        resources = ray.cluster_resources()
        use_gpu = resources.get("GPU", 0) >= 1
        threads = int(threads or max(1, int(resources.get("CPU", 1)) // num_workers))
        if threads > resources.get("CPU", 0):
            raise ValueError(f"--threads {threads} is more than the Ray cluster's "
                             f"{resources.get('CPU', 0):g} CPUs: no worker could start")
        board = ray.remote(num_cpus=0)(ProgressBoard).remote()
        task = ray.remote(max_calls=1)(_worker_task)
        options = dict(num_cpus=threads, num_gpus=1 if use_gpu else 0,
                       max_retries=max_retries, retry_exceptions=[OSError])
        display = _Display(log, config.num_repetitions, complete_before, num_workers)
        log(f"ray: {num_workers} workers, {threads} CPU thread(s)"
            f"{' and 1 GPU' if use_gpu else ''} each, {config.num_repetitions} repetitions "
            f"({len(complete_before)} complete), max {max_retries} retries per worker")
        traffic = {"task_args": 0, "events": 0, "results": 0}
        refs = {}
        reports = {}
        for i in range(num_workers):
            mine = assigned_repetitions(config.num_repetitions, i, num_workers)
            if all(r in complete_before for r in mine):  # nothing to do: start no process
                reports[i] = {"worker_index": i, "num_workers": num_workers, "trained": [],
                              "skipped": mine, "failed": {}, "seconds": 0.0,
                              "cpu_seconds": 0.0}
                log(f"[worker {i}/{num_workers}] repetitions {mine} already complete: "
                    f"not started")
                continue
            args = (run, train, valid, i, num_workers, threads, use_gpu, checkpoint_every,
                    claim_lease)
            traffic["task_args"] += _encoded_size(args)
            refs[task.options(name=f"mach-tf-worker-{i}", **options).remote(*args, board)] = i
        pending = list(refs)

        def show_progress():
            events = ray.get(board.drain.remote())
            traffic["events"] += sum(_encoded_size(e) for e in events)
            display.show(events)

        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_seconds)
            show_progress()
            for ref in done:
                i = refs[ref]
                try:
                    reports[i] = ray.get(ref)
                    traffic["results"] += _encoded_size(reports[i])
                except Exception as e:  # noqa: BLE001 - any task failure is reported
                    why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    mine = assigned_repetitions(config.num_repetitions, i, num_workers)
                    reports[i] = {"worker_index": i, "num_workers": num_workers,
                                  "trained": [], "skipped": [],
                                  "failed": {str(r): f"worker {i} failed (after "
                                                     f"{max_retries} retries): {why}"
                                             for r in mine if not rundir.is_complete(run, r)}}
                    log(f"[worker {i}/{num_workers}] FAILED: {why}")
        show_progress()
        report = finish_run(run, config, [reports[i] for i in sorted(reports)],
                            time.time() - t0, log)
        report.update(launcher="ray", threads_per_worker=threads,
                      gpus_per_worker=1 if use_gpu else 0,
                      attempts={str(i): len(display.attempts.get(i, []))
                                for i in range(num_workers)},
                      driver_worker_bytes=traffic,
                      worker_seconds={str(i): reports[i].get("seconds")
                                      for i in sorted(reports)},
                      worker_cpu_seconds={str(i): reports[i].get("cpu_seconds")
                                          for i in sorted(reports)})
        return report
    finally:
        if started_here:
            ray.shutdown()
