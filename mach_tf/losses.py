"""MACH's training loss for :class:`mach_tf.layers.MachHead`, from class ids, in ``keras.ops``.

The bucket targets are made in the graph from the label ids with the class -> bucket table
of :func:`mach_tf.layers.bucket_table` (the family a run directory with the same seed
persists), so a Keras pipeline feeds labels, not buckets.
"""

from __future__ import annotations

import keras
from keras import ops

from mach_tf.layers import bucket_table

REDUCTIONS = ("sum_over_batch_size", "sum", "mean_with_sample_weight", "none", None)


def reduce_losses(losses, sample_weight=None, reduction="sum_over_batch_size"):
    """Per-example ``losses`` ``[batch]`` weighted and reduced as Keras losses do:
    ``sum_over_batch_size`` (the weighted sum over the batch size), ``sum``,
    ``mean_with_sample_weight`` (over the sum of the weights) or ``none``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    weights = None
    if sample_weight is not None:
        weights = ops.reshape(ops.cast(sample_weight, losses.dtype), (-1,))
        losses = losses * weights
    if reduction in ("none", None):
        return losses
    total = ops.sum(losses)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and weights is not None:
        return total / ops.maximum(ops.sum(weights), 1e-12)
    return total / ops.cast(ops.maximum(ops.shape(losses)[0], 1), losses.dtype)


def label_buckets(y_true, table):
    """The buckets of every label under every repetition.

    Args:
        y_true: int ``[batch, L]`` class ids padded with -1 (or ``[batch]``: one class each).
        table: int ``[R, K]``.

    Returns:
        ``(buckets int32 [batch, R, L], valid bool [batch, L])``; padded entries hold
        bucket 0 and ``valid`` False.
    """
    y = ops.cast(y_true, "int32")
    if len(y.shape) == 1:
        y = ops.expand_dims(y, -1)
    valid = y >= 0
    safe = ops.where(valid, y, 0)
    buckets = ops.take(ops.convert_to_tensor(table, dtype="int32"), safe, axis=1)  # [R, b, L]
    return ops.transpose(buckets, (1, 0, 2)), valid


def mach_softmax_loss(y_true, logits, table):
    """Per-example loss ``[batch]``: the softmax loss of every repetition, averaged over R.

    For repetition r, the cross-entropy between ``softmax(logits_r)`` and the example's
    label buckets as a distribution, each label carrying ``1/|y|`` of the mass (labels
    that share a bucket add up), i.e. ``logsumexp(z_r) - (1/|y|) sum_{c in y} z_r[h_r(c)]``.
    This is ``kind="softmax"`` of :class:`mach_tf.model.losses.BucketLoss`, which training a
    run uses (that one sums a group's repetitions; this one averages all R, so the loss
    reads on the scale of one classifier whatever R is). Examples without labels give 0.
    """
    logits = ops.cast(logits, "float32")
    buckets, valid = label_buckets(y_true, table)
    validf = ops.cast(valid, "float32")[:, None, :]  # [batch, 1, L]
    picked = ops.take_along_axis(logits, buckets, axis=-1)  # [batch, R, L]
    count = ops.sum(validf, axis=-1)  # [batch, 1]
    mean_picked = ops.sum(picked * validf, axis=-1) / ops.maximum(count, 1.0)
    per = ops.where(count > 0, ops.logsumexp(logits, axis=-1) - mean_picked, 0.0)
    return ops.mean(per, axis=-1)


@keras.saving.register_keras_serializable(package="mach_tf")
class MachLoss(keras.losses.Loss):
    """The MACH softmax loss of bucket logits against class ids.

    Args:
        num_classes: K.
        num_buckets: B.
        num_repetitions: R.
        seed: Seed of the hash family (:meth:`mach_tf.hashing.HashFamily.from_seed`), the
            same as ``MachConfig.seed`` of a run whose hashing is drawn from its seed.
        reduction, name, dtype: As for any ``keras.losses.Loss``.

    ``y_true`` is int ``[batch, max_labels]`` class ids padded with -1 (one column for
    multi-class data); ``y_pred`` the head's logits ``[batch, R, B]``. See
    :func:`mach_softmax_loss` for the definition.
    """

    def __init__(self, num_classes: int, num_buckets: int, num_repetitions: int, seed: int = 0,
                 reduction="sum_over_batch_size", name="mach_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.num_classes = int(num_classes)
        self.num_buckets = int(num_buckets)
        self.num_repetitions = int(num_repetitions)
        self.seed = int(seed)
        self.table = bucket_table(self.num_classes, self.num_buckets, self.num_repetitions,
                                  self.seed)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras' Loss.__call__ casts y_true to the loss dtype; float32 rounds class ids
        # above 2**24, so the ids go to the loss as integers and the reduction is ours.
        with keras.name_scope(self.name):
            losses = self.call(ops.convert_to_tensor(y_true), y_pred)
            return reduce_losses(losses, sample_weight, self.reduction)

    def call(self, y_true, y_pred):
        return mach_softmax_loss(y_true, ops.convert_to_tensor(y_pred, dtype=self.dtype),
                                 self.table)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, num_buckets=self.num_buckets,
                      num_repetitions=self.num_repetitions, seed=self.seed)
        return config
