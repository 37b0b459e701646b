"""Which worker this process is, from arguments or the scheduler that started it, and
which repetitions it owns.

Worker ``i`` of ``N`` owns the repetitions ``r`` with ``r % N == i``; claims
(:mod:`mach_tf.launch.claims`) keep two processes from training the same one when a
scheduler starts a worker twice.
"""

from __future__ import annotations

import json
import os


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
