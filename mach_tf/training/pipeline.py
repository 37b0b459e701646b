"""The training input of a worker: its thread budget and each group's epochs of batches.

Epoch ``e`` of a group is a fixed function of ``(config.seed, e)``, so a group resumed
from a step checkpoint sees exactly the batches an uninterrupted one would, and a tuner
trial sees the batches ``mach-tf train`` gives the same group.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.data import label_buckets, model_inputs, padded_targets, training_batches
from tfrecords_tools.dataset import graph_only, make_record_dataset, parse_batch
from tfrecords_tools.manifest import Manifest

#: Training data of at most this many bytes on disk (four times that when gzipped) is read
#: and parsed once (per worker, given its cache) and kept in memory, each epoch's batches
#: gathered from there in a shuffled order; larger data is streamed from the files each
#: epoch.
CACHE_MAX_BYTES = 256 << 20

#: Records parsed per call when training data is read into memory.
_PARSE_CHUNK = 1 << 16

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
                   skip: int, steps: int, featurizer=None, record_filter=None,
                   kept: dict | None = None, kept_key: str = ""):
    """The training batches of epochs ``first..config.epochs-1``, ``skip`` batches of the
    first left out. Epoch ``e`` is shuffled with seed ``config.seed + e`` alone, so a
    resumed group sees exactly the batches an uninterrupted one would.

    Each epoch is exactly ``steps`` batches of its own repeated stream: with a carved
    validation split (``record_filter``) the number of training records is only
    estimated, and an epoch must never run out of data.

    ``kept``: a dict a worker keeps across its groups. Training data held in memory is
    then parsed once per worker, not once per group: it is kept there under the training
    prefix and ``kept_key``, which must name the ``record_filter`` (the split)."""
    # Each epoch is a fixed number of records of its own shuffled stream, so batching the
    # concatenation gives exactly its ``steps`` batches; batching, parsing and the bucket
    # targets are then traced once, not once per epoch (seconds each on a 60-epoch cap).
    manifest = Manifest.load(train)
    if in_memory(manifest):
        # Read, split by ``record_filter`` and parsed once (per worker, given ``kept``),
        # hashed into the group's buckets once per group: each epoch shuffles the record
        # numbers and gathers its batches from memory.
        # The files are not read again, no epoch waits for a shuffle buffer filled from
        # them, and no step competes with parsing for the cores.
        key = (train, kept_key, featurizer is not None, config.input_format)
        parsed = None if kept is None else kept.get("parsed")
        if parsed is None or parsed[0] != key:
            parsed = (key, parse_records(manifest, config, featurizer is not None,
                                         record_filter))
            if kept is not None:
                kept["parsed"] = parsed  # one entry: a worker trains on one split
        table = ParsedRecords(parsed[1], config, group, featurizer)
        out = _epochs(tf.data.Dataset.range(table.size), manifest, config, first, skip,
                      steps)
        out = out.batch(config.batch_size).map(graph_only(table.batch),
                                               num_parallel_calls=tf.data.AUTOTUNE,
                                               deterministic=True)
        out = out.prefetch(tf.data.AUTOTUNE)
    else:
        out = training_batches(
            _epochs(None, manifest, config, first, skip, steps, record_filter), config,
            group, featurizer=featurizer)
    options = tf.data.Options()
    # No autotuning thread: the training iterator ends with its group's last epoch, and
    # destroying it waits for that thread's current sleep between optimisations, which
    # grows with the iterator's age (3 to 70 s at group ends, measured). The map and
    # prefetch then run at fixed sizes: the thread budget (or all cores) and a buffer.
    options.autotune.enabled = False
    if _THREADS:
        options.threading.private_threadpool_size = _THREADS
    return out.with_options(options)


def _epochs(numbers, manifest: Manifest, config: MachConfig, first: int, skip: int,
            steps: int, record_filter=None) -> tf.data.Dataset:
    """The concatenated shuffled streams of epochs ``first..``, ``steps`` batches each:
    of ``numbers`` (the numbers of the records held in memory) shuffled in full, or of the
    records read from the files again."""
    size = steps * config.batch_size
    streams = []
    for e in range(first, config.epochs):
        if numbers is not None:
            # The shuffle of the whole training file's size, as when the records
            # themselves were kept: the same seed gives the same order.
            stream = numbers.shuffle(max(1, manifest.num_examples), seed=config.seed + e,
                                  reshuffle_each_iteration=True).repeat()
        else:
            stream = make_record_dataset(manifest, shuffle=True, seed=config.seed + e,
                                         repeat=True, record_filter=record_filter)
        stream = stream.take(size)
        if e == first and skip:
            stream = stream.skip(skip * config.batch_size)  # the batches already done
        streams.append(stream)
    if not streams:
        raise ValueError(f"no epoch left to train: first epoch {first}, "
                         f"epochs {config.epochs}")
    return _concatenate(streams)


def _concatenate(streams: list) -> tf.data.Dataset:
    """``streams[0]``, then ``streams[1]``, ... as one dataset, concatenated as a balanced
    tree: a chain ``((s0 + s1) + s2) + ...`` passes each element of the first epochs
    through as many concatenation layers as there are epochs after it (on delicious' 50
    steps an epoch, 0.14 s of its pipeline's 0.15 s at a 60-epoch cap)."""
    while len(streams) > 1:
        paired = [a.concatenate(b) for a, b in zip(streams[::2], streams[1::2])]
        streams = paired + streams[len(paired) * 2:]
    return streams[0]


def parse_records(manifest: Manifest, config: MachConfig, with_text: bool = False,
                  record_filter=None) -> dict:
    """The training records kept by ``record_filter``, read and parsed into one batch:
    ragged ``labels`` and the columns of the model's input (``feature_ids`` and
    ``feature_values``, ``embedding`` for dense data, ``text`` with ``with_text``)."""
    embedding_dim = config.num_features if config.input_format == "dense" else None
    chunks = make_record_dataset(manifest, record_filter=record_filter).batch(
        _PARSE_CHUNK).map(graph_only(lambda s: parse_batch(s, with_text, embedding_dim)))
    columns: dict = {}
    for chunk in chunks:
        for key, value in chunk.items():
            columns.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else tf.concat(v, axis=0) for k, v in columns.items()}


class ParsedRecords:
    """A group's training records parsed (:func:`parse_records`) and kept as tensors, with
    each label's bucket in the group's repetitions; :meth:`batch` gathers a batch of them
    by record number, the same ``(inputs, targets)`` that parsing those records would
    give."""

    def __init__(self, parsed: dict, config: MachConfig, group: Sequence[int],
                 featurizer=None):
        columns = dict(parsed)
        labels = columns.pop("labels", None)
        #: How many records were kept (after the split's filter).
        self.size = 0 if labels is None else int(labels.nrows())
        self._columns = columns
        self._targets = None if labels is None else label_buckets(labels, config, list(group))
        self._inputs = model_inputs(featurizer)

    def batch(self, numbers: tf.Tensor):
        """``(inputs, targets)`` of the records numbered ``numbers`` (int64 ``[batch]``)."""
        parsed = {k: tf.gather(v, numbers) for k, v in self._columns.items()}
        return self._inputs(parsed), padded_targets(tf.gather(self._targets, numbers))
