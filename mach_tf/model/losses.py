"""MACH's training objective over bucket targets, and the step cache its metrics share.

``y_true`` is int ``[batch, G, L]``: the buckets of the example's labels under each of the
group's G repetitions (:func:`mach_tf.data.bucket_targets`), padded with -1; ``y_pred`` is
the group's logits ``[batch, G, B]``.
"""

from __future__ import annotations

import collections

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mach_tf")
class BucketLoss(keras.losses.Loss):
    """MACH's training loss over bucket targets, summed over the group's repetitions.

    ``y_true`` is int ``[batch, G, L]``: the buckets of the example's labels under each
    repetition's hash, padded with -1. ``y_pred`` is logits ``[batch, G, B]``.

    * ``kind="softmax"``: cross-entropy between softmax(logits) and the label buckets as a
      distribution, each label carrying 1/|y| of the mass (for one label per example this is
      the paper's multi-class loss). Computed as ``logsumexp(z) - sum_j z[b_j] / |y|`` so no
      dense ``[batch, G, B]`` target is ever built.
    * ``kind="sigmoid"``: binary cross-entropy of every bucket against the multi-hot set of
      label buckets, summed over buckets.

    Examples without labels contribute zero.
    """

    def __init__(self, kind="softmax", name="bucket_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.kind = kind
        self.step_cache = None  # set by compile_model: shares the per-repetition losses

    def call(self, y_true, y_pred):
        return tf.reduce_sum(cached(self.step_cache, y_pred, "loss", lambda: (
            repetition_losses(y_true, y_pred, self.kind))), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(kind=self.kind)
        return config


class StepCache:
    """What one training step's loss and metrics share, computed once per step.

    A group model's loss, its per-repetition losses and its bucket accuracies all read
    the same ``[batch, G, B]`` logits; computed separately they re-read them about three
    times (log-sum-exp per repetition, arg-max per repetition and overall). The loss and
    the metrics :func:`compile_model` creates share one cache: the first to see a step's
    logits tensor computes a value, the others reuse it. Keyed by the logits tensor's
    identity, so a new step (or a new trace) recomputes.
    """

    def __init__(self):
        self._key = None
        self._values = {}
        self.requested = collections.Counter()  # by name: values asked for ...
        self.computed = collections.Counter()  # ... and those computed (not reused)

    def get(self, logits, name, compute):
        self.requested[name] += 1
        key = logits.ref() if hasattr(logits, "ref") else None
        if key is None or key != self._key:
            self._key, self._values = key, {}
        if name not in self._values:
            self._values[name] = compute()
            self.computed[name] += 1
        return self._values[name]


def cached(cache, logits, name, compute):
    return compute() if cache is None else cache.get(logits, name, compute)


def repetition_losses(y_true, logits, kind="softmax"):
    """Per-example, per-repetition loss ``[batch, G]`` (see :class:`BucketLoss`)."""
    y_true = tf.cast(y_true, tf.int32)
    logits = tf.cast(logits, tf.float32)
    valid = y_true >= 0
    validf = tf.cast(valid, tf.float32)
    safe = tf.where(valid, y_true, 0)
    picked = tf.gather(logits, safe, axis=2, batch_dims=2)  # [batch, G, L]
    count = tf.reduce_sum(validf, axis=-1)  # [batch, G]
    if kind == "softmax":
        lse = tf.reduce_logsumexp(logits, axis=-1)
        mean_picked = tf.math.divide_no_nan(tf.reduce_sum(picked * validf, -1), count)
        per = tf.where(count > 0, lse - mean_picked, 0.0)
    elif kind == "sigmoid":
        num_b = tf.shape(logits)[-1]
        multi_hot = tf.reduce_max(
            tf.one_hot(safe, num_b, dtype=tf.float32) * validf[..., None], axis=-2)
        per = tf.reduce_sum(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=multi_hot, logits=logits), -1)
    else:
        raise ValueError(f"unknown loss kind {kind!r}")
    return per


def bucket_loss(y_true, logits, kind="softmax"):
    """Per-example loss ``[batch]``, summed over the group (see :class:`BucketLoss`)."""
    return tf.reduce_sum(repetition_losses(y_true, logits, kind), axis=-1)
