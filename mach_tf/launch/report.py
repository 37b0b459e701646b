"""The reports of a run: what each worker did, merged into one; and, once every
repetition is complete, the run's final TensorBoard summary, written once.

A report is a plain dict (``mach-tf train --json`` prints it); TensorBoard summaries are
:mod:`mach_tf.training.tensorboard`'s.
"""

from __future__ import annotations

import time

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.launch.claims import Owner
from mach_tf.training.group import Log, log_to_stderr
from mach_tf.training.tensorboard import write_run_summary
from tfrecords_tools import atomic


def finish_run(run: str, config: MachConfig, reports: list[dict], seconds: float,
               log: Log = log_to_stderr) -> dict:
    """The run's report (:func:`merge_reports`), after writing its final merged validation
    and HParams session for TensorBoard
    (:func:`mach_tf.training.tensorboard.write_run_summary`)."""
    out = merge_reports(run, config, reports, seconds)
    try:
        written = write_run_summary(run, config, {"train_seconds": out["seconds"]})
    except Exception as e:  # noqa: BLE001 - the models are trained; report, do not fail
        log(f"TensorBoard: final summary not written ({type(e).__name__}: {e})")
        return out
    if written["final"]:
        out["final_validation"] = {k: round(v, 4) for k, v in written["final"].items()}
    return out


def summarize_if_complete(run: str, config: MachConfig, worker: int,
                          log: Log = log_to_stderr) -> dict | None:
    """Scheduler mode, where no driver outlives the workers: the first worker to find
    every repetition complete writes the run's final merged validation and HParams
    session (:func:`mach_tf.training.tensorboard.write_run_summary`), once per run: the
    first creates ``RUN/logs/merged/summary-writer.json`` exclusively.

    Returns:
        What was written, or ``None`` (run not complete, or another worker writes it).
    """
    if not all(rundir.is_complete(run, r) for r in range(config.num_repetitions)):
        return None
    owner = Owner.this_process(worker)
    marker = {"worker": worker, "owner": vars(owner), "at": time.time()}
    if not atomic.create_exclusive(rundir.summary_marker_path(run), atomic.dumps(marker)):
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


def merge_reports(run: str, config: MachConfig, reports: list[dict], seconds: float) -> dict:
    """One report of a run from its workers' (:class:`mach_tf.launch.worker.WorkerReport`
    dicts): the repetitions ``trained``, ``skipped`` and ``failed`` (with the reason), how
    many are ``complete`` in the run directory, ``seconds`` and ``workers``."""
    trained = sorted(r for rep in reports for r in rep.get("trained", []))
    skipped = sorted(r for rep in reports for r in rep.get("skipped", []))
    failed = {int(r): why for rep in reports for r, why in rep.get("failed", {}).items()}
    complete = [r for r in range(config.num_repetitions) if rundir.is_complete(run, r)]
    return {"model_dir": run, "repetitions": config.num_repetitions, "trained": trained,
            "skipped": skipped, "failed": failed, "complete": len(complete),
            "seconds": round(seconds, 3), "workers": len(reports)}
