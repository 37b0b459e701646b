"""Who trains what: worker identity from schedulers, the worker's claim loop, the local and
Ray launchers, claims, progress and the run's report.

Modules: :mod:`~mach_tf.launch.identity` (worker index and count from arguments,
``TF_CONFIG``, Kubernetes or Slurm), :mod:`~mach_tf.launch.worker` (one worker: its groups,
claimed, trained, written), :mod:`~mach_tf.launch.claims` (one live worker per
repetition), :mod:`~mach_tf.launch.local` (``mach-tf train --workers N``: :func:`train`),
:mod:`~mach_tf.launch.ray_launcher` (``--launcher ray``; needs the ``ray`` extra),
:mod:`~mach_tf.launch.progress` (the progress line), :mod:`~mach_tf.launch.report` (the
run's report and final summary).
"""

from mach_tf.launch.claims import ClaimSet, Owner, current_holder, try_acquire
from mach_tf.launch.identity import assigned_repetitions, worker_identity
from mach_tf.launch.local import train
from mach_tf.launch.progress import RepetitionProgress
from mach_tf.launch.ray_launcher import train_ray
from mach_tf.launch.report import finish_run, merge_reports, summarize_if_complete
from mach_tf.launch.worker import WorkerReport, plan_groups, train_worker

__all__ = ["ClaimSet", "Owner", "RepetitionProgress", "WorkerReport", "assigned_repetitions",
           "current_holder", "finish_run", "merge_reports", "plan_groups",
           "summarize_if_complete", "train", "train_ray", "train_worker", "try_acquire",
           "worker_identity"]
