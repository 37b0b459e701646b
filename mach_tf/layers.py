"""MACH as a Keras output head: R independent bucket classifiers over any encoder's output,
and the merged-average top-k over all K classes, in ``keras.ops`` (every Keras backend).

:class:`MachHead` maps an encoding ``[batch, d]`` to bucket logits ``[batch, R, B]``; its
weights are stacked over the R repetitions (a kernel ``[R, d_in, d_out]`` per layer), so
the R classifiers run as one einsum per layer yet never share a weight.
:func:`merged_topk` turns those logits into the top k of the K classes by the merged score
``score(c | x) = (1/R) sum_r softmax(logits_r)[h_r(c)]`` (the paper's estimator;
``merge="prob"`` of :func:`mach_tf.model.network.bucket_scores`), summed over R left to
right as :func:`mach_tf.inference.decoder.exact_scores` and the numpy reference do.
:func:`bucket_table` is the class -> bucket table of the hash family a run with the same
seed persists (:meth:`mach_tf.hashing.HashFamily.from_seed`), which the loss, the metrics
and :class:`mach_tf.MachClassifier` share.

Imports no TensorFlow: :mod:`mach_tf.hashing` is numpy only.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
from keras import ops

from mach_tf.hashing import HashFamily


def bucket_table(num_classes: int, num_buckets: int, num_repetitions: int,
                 seed: int = 0) -> np.ndarray:
    """The class -> bucket table ``[R, K]`` (int32) of the family seeded by ``seed``.

    The same family as ``MachConfig(..., seed=seed).hash_family`` when the config draws its
    coefficients from its seed, so a head trained with this table and a run directory agree
    on every class's buckets.
    """
    family = HashFamily.from_seed(int(num_repetitions), int(num_buckets), int(seed))
    return family.table(int(num_classes))


def merged_scores(logits, table):
    """Merged-average scores of all K classes.

    Args:
        logits: float ``[batch, R, B]`` bucket logits (R static).
        table: int ``[R, K]`` class -> bucket table.

    Returns:
        float32 ``[batch, K]``: the mean over repetitions of each class's bucket
        probability. Summed left to right over R (one ``[batch, K]`` gather each) like the
        TensorFlow decoder, so no ``[batch, R, K]`` temporary is built.
    """
    probs = ops.softmax(ops.cast(logits, "float32"), axis=-1)
    table = ops.convert_to_tensor(table, dtype="int32")
    num_r = probs.shape[1]
    total = None
    for r in range(num_r):
        part = ops.take(probs[:, r, :], table[r], axis=1)
        total = part if total is None else total + part
    return total / float(num_r)


def merged_topk(logits, table, k: int):
    """The k best classes by merged score, best first (ties to the smaller class id on the
    TensorFlow and JAX backends).

    Args:
        logits: float ``[batch, R, B]``.
        table: int ``[R, K]`` class -> bucket table (static K).
        k: How many to return; beyond K, rows are padded with score ``-inf`` and id -1.

    Returns:
        ``(scores float32 [batch, k], ids int32 [batch, k])``.
    """
    scores = merged_scores(logits, table)
    num_k = int(np.shape(table)[1])
    k_eff = min(int(k), num_k)
    values, ids = ops.top_k(scores, k=k_eff, sorted=True)
    ids = ops.cast(ids, "int32")
    if k_eff < k:
        pad = int(k) - k_eff
        values = ops.pad(values, [[0, 0], [0, pad]], constant_values=-np.inf)
        ids = ops.pad(ids, [[0, 0], [0, pad]], constant_values=-1)
    return values, ids


@keras.saving.register_keras_serializable(package="mach_tf")
class MachHead(keras.layers.Layer):
    """R independent MACH bucket classifiers on a shared encoding.

    Repetition r computes ``relu(x W_r1 + b_r1) ... W_rL + b_rL`` with its own weights; all
    R are evaluated together from stacked kernels ``[R, d_in, d_out]`` (one einsum per
    layer). Each kernel is Glorot-uniform for its own ``[d_in, d_out]`` shape.

    Args:
        num_buckets: B, buckets per repetition.
        num_repetitions: R, independent repetitions.
        hidden_units: Widths of hidden layers (ReLU) of every repetition; empty for a linear
            map from the encoding to the bucket logits.
        dropout: Dropout rate after each hidden layer (training only).
        seed: Seeds the weight initialisation and the dropout masks.

    Call with ``[batch, d]``; returns float logits ``[batch, R, B]``.
    """

    def __init__(self, num_buckets: int, num_repetitions: int,
                 hidden_units: Sequence[int] = (), dropout: float = 0.0, seed: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_buckets = int(num_buckets)
        self.num_repetitions = int(num_repetitions)
        self.hidden_units = [int(h) for h in hidden_units]
        self.dropout = float(dropout)
        self.seed = int(seed)
        if self.num_buckets < 2 or self.num_repetitions < 1:
            raise ValueError(f"MachHead: need num_buckets >= 2 and num_repetitions >= 1, got "
                             f"{self.num_buckets} and {self.num_repetitions}")
        if any(h < 1 for h in self.hidden_units) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MachHead: hidden widths must be positive and dropout in "
                             f"[0, 1), got {self.hidden_units} and {self.dropout}")
        self.dropout_layers = [keras.layers.Dropout(self.dropout, seed=self.seed + i)
                               for i in range(len(self.hidden_units))] if self.dropout else []
        self.kernels, self.biases = [], []

    def build(self, input_shape):
        d = input_shape[-1]
        if d is None:
            raise ValueError(f"MachHead: the encoding's last dimension must be known, got "
                             f"shape {input_shape}")
        widths = [int(d)] + self.hidden_units + [self.num_buckets]
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            # Glorot for one repetition's [fan_in, fan_out] kernel (Keras' own Glorot would
            # count R into the fans of a 3-D shape and shrink the weights by sqrt(R)).
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            self.kernels.append(self.add_weight(
                shape=(self.num_repetitions, fan_in, fan_out), name=f"kernel_{i}",
                initializer=keras.initializers.RandomUniform(-limit, limit,
                                                             seed=self.seed * 1009 + i)))
            self.biases.append(self.add_weight(
                shape=(self.num_repetitions, fan_out), name=f"bias_{i}", initializer="zeros"))

    def call(self, inputs, training=None):
        x = ops.einsum("bd,rdh->brh", ops.cast(inputs, self.compute_dtype), self.kernels[0])
        x = x + self.biases[0]
        for i in range(1, len(self.kernels)):
            x = ops.relu(x)
            if self.dropout_layers:
                x = self.dropout_layers[i - 1](x, training=training)
            x = ops.einsum("brh,rhk->brk", x, self.kernels[i]) + self.biases[i]
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_repetitions, self.num_buckets)

    def get_config(self):
        config = super().get_config()
        config.update(num_buckets=self.num_buckets, num_repetitions=self.num_repetitions,
                      hidden_units=list(self.hidden_units), dropout=self.dropout,
                      seed=self.seed)
        return config
