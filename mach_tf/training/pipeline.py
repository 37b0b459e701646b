"""The training input of a worker: its thread budget and each group's epochs of batches.

Epoch ``e`` of a group is a fixed function of ``(config.seed, e)``, so a group resumed
from a step checkpoint sees exactly the batches an uninterrupted one would, and a tuner
trial sees the batches ``mach-tf train`` gives the same group.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.data import training_batches
from tfrecords_tools.dataset import make_record_dataset
from tfrecords_tools.manifest import Manifest

#: Training data of at most this many bytes on disk (four times that when gzipped) is read
#: from its files once per group and kept in memory, its records shuffled from there every
#: epoch; larger data is streamed from the files each epoch.
CACHE_MAX_BYTES = 256 << 20

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
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, int(threads))))
    except RuntimeError:
        pass  # already initialised: keep TensorFlow's pools


def in_memory(train) -> bool:
    """Whether a group keeps the training records (a prefix or its :class:`Manifest`) in
    memory (:data:`CACHE_MAX_BYTES`)."""
    m = train if isinstance(train, Manifest) else Manifest.load(train)
    size = sum(m.shard_bytes or []) * (4 if m.compression == "GZIP" else 1)
    return bool(m.shard_bytes) and size <= CACHE_MAX_BYTES


def epochs_dataset(train: str, config: MachConfig, group: Sequence[int], first: int,
                   skip: int, steps: int, featurizer=None, record_filter=None):
    """The training batches of epochs ``first..config.epochs-1``, ``skip`` batches of the
    first left out. Epoch ``e`` is shuffled with seed ``config.seed + e`` alone, so a
    resumed group sees exactly the batches an uninterrupted one would.

    Each epoch is exactly ``steps`` batches of its own repeated stream: with a carved
    validation split (``record_filter``) the number of training records is only
    estimated, and an epoch must never run out of data."""
    # Each epoch is a fixed number of records of its own shuffled stream, so batching the
    # concatenation gives exactly its ``steps`` batches; batching, parsing and the bucket
    # targets are then traced once, not once per epoch (seconds each on a 60-epoch cap).
    size = steps * config.batch_size
    manifest = Manifest.load(train)
    base = None
    if in_memory(manifest):
        # Read (and split by ``record_filter``) once per group and kept: each epoch shuffles
        # it in full from memory. The files are not read again, and no epoch waits for a
        # shuffle buffer filled from them (on small data that wait was half of each step).
        base = make_record_dataset(manifest, record_filter=record_filter).cache()
    out = None
    for e in range(first, config.epochs):
        if base is not None:
            records = base.shuffle(max(1, manifest.num_examples), seed=config.seed + e,
                                   reshuffle_each_iteration=True).repeat()
        else:
            records = make_record_dataset(manifest, shuffle=True, seed=config.seed + e,
                                          repeat=True, record_filter=record_filter)
        records = records.take(size)
        if e == first and skip:
            records = records.skip(skip * config.batch_size)  # the batches already done
        out = records if out is None else out.concatenate(records)
    out = training_batches(out, config, group, featurizer=featurizer)
    if _THREADS:
        options = tf.data.Options()
        options.threading.private_threadpool_size = _THREADS
        out = out.with_options(options)
    return out
