"""A fast tf.data reader for converted datasets.

The pipeline follows the shape that keeps parsing off the critical path: list the shards,
interleave their records, shuffle, batch the *serialized* records, parse each batch with
one vectorised ``tf.io.parse_example`` call, prefetch.
"""

from __future__ import annotations

import tensorflow as tf

from tfrecords_tools.manifest import Manifest


#: Marks a function for tf.data (or ``tf.function``) to trace as it is written, without
#: AutoGraph's source conversion: the package's functions have no Python control flow on
#: tensors, and converting them took about 0.8 s of every training process's start.
graph_only = tf.autograph.experimental.do_not_convert


def feature_spec(with_text: bool = False, embedding_dim: int | None = None) -> dict:
    """The parsing spec of the package's TFRecord schema (ragged lists); with
    ``embedding_dim`` d, that of dense records (``embedding`` float32 ``[d]``, ragged
    ``labels``)."""
    if embedding_dim is not None:
        return {"embedding": tf.io.FixedLenFeature([embedding_dim], tf.float32),
                "labels": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)}
    spec = {
        "feature_ids": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64),
        "feature_values": tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int64),
        "labels": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64),
    }
    if with_text:
        spec["text"] = tf.io.FixedLenFeature([], tf.string, default_value="")
    return spec


def parse_batch(serialized: tf.Tensor, with_text: bool = False,
                embedding_dim: int | None = None) -> dict:
    """Parses a batch of serialized examples into ragged ``feature_ids``,
    ``feature_values`` and ``labels`` (and dense ``text`` when asked); with
    ``embedding_dim`` d, into ``embedding`` float32 ``[batch, d]`` and ragged ``labels``."""
    return tf.io.parse_example(serialized, feature_spec(with_text, embedding_dim))


def make_dataset(data, batch_size: int, *, shuffle: bool = False, seed: int | None = None,
                 repeat: bool = False, drop_remainder: bool = False,
                 shuffle_buffer: int = 16384, with_text: bool = False,
                 num_parallel_reads: int | None = None,
                 record_filter=None) -> tf.data.Dataset:
    """Batches of parsed examples from a converted dataset.

    Args:
        data: A dataset prefix (``PREFIX`` of ``PREFIX.manifest.json``) or a loaded
            :class:`Manifest`.
        batch_size: Examples per batch.
        shuffle: Shuffle shard order and records (seeded by ``seed``).
        seed: Seed of the shuffles; with a seed the order is reproducible.
        repeat: Repeat forever.
        drop_remainder: Drop a last partial batch.
        shuffle_buffer: Records held by the record-level shuffle.
        with_text: Also parse the ``text`` feature.
        num_parallel_reads: Shards read concurrently (default: all, up to 8).
        record_filter: Optional function of one serialized record (a scalar string tensor)
            returning a boolean tensor: only records for which it is true are kept (e.g. a
            train/validation split by a hash of the record).

    Returns:
        A ``tf.data.Dataset`` of dicts with ragged ``feature_ids`` (int64),
        ``feature_values`` (float32) and ``labels`` (int64), each ``[batch, None]``; for
        dense data (the manifest's ``embedding_dim`` d), ``embedding`` float32
        ``[batch, d]`` and ragged ``labels``.
        tf.data reports a damaged record as a ``DataLossError`` without the file: iterate
        inside :func:`tfrecords_tools.verification.located_read_errors` to have the shard
        named.
    """
    manifest = data if isinstance(data, Manifest) else Manifest.load(data)
    records = make_record_dataset(manifest, shuffle=shuffle, seed=seed, repeat=repeat,
                                  shuffle_buffer=shuffle_buffer,
                                  num_parallel_reads=num_parallel_reads,
                                  record_filter=record_filter)
    return batch_and_parse(records, batch_size, drop_remainder=drop_remainder,
                           with_text=with_text, embedding_dim=manifest.embedding_dim)


def make_record_dataset(data, *, shuffle: bool = False, seed: int | None = None,
                        repeat: bool = False, shuffle_buffer: int = 16384,
                        num_parallel_reads: int | None = None,
                        record_filter=None) -> tf.data.Dataset:
    """The serialized records of a converted dataset, before batching and parsing (the
    arguments are :func:`make_dataset`'s)."""
    manifest = data if isinstance(data, Manifest) else Manifest.load(data)
    files = manifest.shard_paths
    compression = "GZIP" if manifest.compression == "GZIP" else ""
    cycle = num_parallel_reads or min(len(files), 8)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        graph_only(lambda f: tf.data.TFRecordDataset(f, compression_type=compression,
                                                      buffer_size=1 << 20)),
        cycle_length=cycle, block_length=16,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=seed is not None or not shuffle)
    if record_filter is not None:
        ds = ds.filter(record_filter)
    if shuffle:
        ds = ds.shuffle(min(shuffle_buffer, max(manifest.num_examples, 1)), seed=seed,
                        reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds


def batch_and_parse(records: tf.data.Dataset, batch_size: int, *,
                    drop_remainder: bool = False, with_text: bool = False,
                    embedding_dim: int | None = None) -> tf.data.Dataset:
    """Batches serialized records and parses each batch with one vectorised call (dense
    records when ``embedding_dim``, the manifest's, is given)."""
    ds = records.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(graph_only(lambda s: parse_batch(s, with_text, embedding_dim)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
