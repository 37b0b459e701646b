"""From parsed TFRecord batches to model inputs and bucket targets."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.hashing import buckets_tf
from tfrecords_tools.dataset import make_dataset


def to_model_inputs(batch: dict) -> dict:
    """Ragged ``feature_ids``/``feature_values`` -> padded dense (ids padded with -1)."""
    ids = batch["feature_ids"]
    vals = batch["feature_values"]
    if isinstance(ids, tf.RaggedTensor):
        ids = ids.to_tensor(default_value=-1)
        vals = vals.to_tensor(default_value=0.0)
    return {"feature_ids": tf.cast(ids, tf.int64), "feature_values": tf.cast(vals, tf.float32)}


def bucket_targets(labels: tf.RaggedTensor, config: MachConfig,
                   repetitions: Sequence[int]) -> tf.Tensor:
    """The label buckets of each repetition: int32 ``[batch, G, L]``, padded with -1.

    Args:
        labels: Ragged int64 ``[batch, None]`` class ids.
        config: The run's config (its persisted hash family).
        repetitions: The G repetitions of the group, in group order.
    """
    family = config.hash_family.subset(repetitions)
    flat = labels.flat_values
    b = buckets_tf(flat, tf.constant(family.a, tf.int64), tf.constant(family.b, tf.int64),
                   family.num_buckets, family.prime)  # [G, nnz]
    rag = tf.RaggedTensor.from_row_splits(tf.transpose(b), labels.row_splits)  # [batch,None,G]
    dense = rag.to_tensor(default_value=-1)  # [batch, L, G]
    return tf.cast(tf.transpose(dense, [0, 2, 1]), tf.int32)


def _inputs(featurizer):
    """Model inputs of a parsed batch: its sparse features, or its text featurised by
    ``featurizer`` (a :class:`mach_tf.text.TextFeaturizer`) for text datasets."""
    if featurizer is None:
        return to_model_inputs
    return lambda b: featurizer(b["text"])


def training_dataset(data, config: MachConfig, repetitions: Sequence[int], *,
                     shuffle: bool = True, seed: int | None = None,
                     batch_size: int | None = None, repeat: bool = False,
                     featurizer=None, record_filter=None) -> tf.data.Dataset:
    """``(inputs, targets)`` batches for training the given repetitions (text datasets
    featurised by ``featurizer`` in the pipeline).

    ``record_filter`` keeps only some serialized records (see
    :func:`tfrecords_tools.dataset.make_dataset`), e.g. the training side of a split.
    """
    ds = make_dataset(data, batch_size or config.batch_size, shuffle=shuffle,
                      seed=config.seed if seed is None else seed, repeat=repeat,
                      with_text=featurizer is not None, record_filter=record_filter)
    reps = list(repetitions)
    inputs = _inputs(featurizer)
    return ds.map(lambda b: (inputs(b), bucket_targets(b["labels"], config, reps)),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def evaluation_dataset(data, batch_size: int, featurizer=None, raw_text: bool = False,
                       record_filter=None) -> tf.data.Dataset:
    """``(inputs, labels)`` batches in file order; labels stay ragged. Text datasets are
    featurised by ``featurizer``, or with ``raw_text`` give their strings as inputs;
    ``record_filter`` keeps only some serialized records."""
    ds = make_dataset(data, batch_size, shuffle=False,
                      with_text=featurizer is not None or raw_text, record_filter=record_filter)
    inputs = (lambda b: b["text"]) if raw_text else _inputs(featurizer)
    return ds.map(lambda b: (inputs(b), b["labels"]),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
