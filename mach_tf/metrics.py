"""Merged-average ranking metrics of :class:`mach_tf.layers.MachHead` logits, in
``keras.ops``, for ``model.compile(metrics=[...])``.

Both rank all K classes by the merged score (:func:`mach_tf.layers.merged_topk`) and score
the top k against the class ids ``y_true`` (``[batch, max_labels]`` padded with -1) with the
definitions of :mod:`mach_tf.inference.ranking` (the Extreme Classification Repository's):

* ``P@k = |top_k ∩ y| / k``, divided by k even when ``|y| < k``;
* ``nDCG@k = DCG@k / IDCG@k`` with ``IDCG@k`` summed over ``min(k, |y|)`` positions;

averaged over every example seen since the last reset, an example without labels
counting 0.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mach_tf.layers import bucket_table, merged_topk


class _MergedRankingMetric(keras.metrics.Metric):
    """The state and bookkeeping the merged metrics share: a weighted sum and a count."""

    def __init__(self, k: int, num_classes: int, num_buckets: int, num_repetitions: int,
                 seed: int = 0, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if int(k) < 1:
            raise ValueError(f"{type(self).__name__}: k must be >= 1, got {k}")
        self.k = int(k)
        self.num_classes = int(num_classes)
        self.num_buckets = int(num_buckets)
        self.num_repetitions = int(num_repetitions)
        self.seed = int(seed)
        self.table = bucket_table(self.num_classes, self.num_buckets, self.num_repetitions,
                                  self.seed)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32",
                                       name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32",
                                       name="count")

    def _per_example(self, hits, num_labels):
        """float32 ``[batch]`` from ``hits`` float32 ``[batch, k]`` and ``|y|``."""
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        _, ids = merged_topk(y_pred, self.table, self.k)  # [batch, k]
        y = ops.cast(ops.convert_to_tensor(y_true), "int32")
        if len(y.shape) == 1:
            y = ops.expand_dims(y, -1)
        valid = y >= 0
        # A padded prediction (-1) never matches, since only ids >= 0 are labels.
        hits = ops.any(ops.logical_and(ops.equal(ids[:, :, None], y[:, None, :]),
                                       valid[:, None, :]), axis=-1)
        num_labels = ops.sum(ops.cast(valid, "float32"), axis=-1)
        values = self._per_example(ops.cast(hits, "float32"), num_labels)
        if sample_weight is None:
            weights = ops.ones_like(values)
        else:
            weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            weights = ops.broadcast_to(weights, ops.shape(values))
        self.total.assign_add(ops.sum(values * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def get_config(self):
        config = super().get_config()
        config.update(k=self.k, num_classes=self.num_classes, num_buckets=self.num_buckets,
                      num_repetitions=self.num_repetitions, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="mach_tf")
class MergedPrecisionAtK(_MergedRankingMetric):
    """P@k of the merged top k of all K classes.

    Args:
        k: The cut-off.
        num_classes, num_buckets, num_repetitions, seed: K, B, R and the hash family's seed,
            as for :class:`mach_tf.losses.MachLoss`.
        name: Defaults to ``"p@k"``.
        dtype: Of the result.
    """

    def __init__(self, k: int, num_classes: int, num_buckets: int, num_repetitions: int,
                 seed: int = 0, name=None, dtype=None):
        super().__init__(k, num_classes, num_buckets, num_repetitions, seed,
                         name=name or f"p@{int(k)}", dtype=dtype)

    def _per_example(self, hits, num_labels):
        return ops.sum(hits, axis=-1) / float(self.k)


@keras.saving.register_keras_serializable(package="mach_tf")
class MergedNDCGAtK(_MergedRankingMetric):
    """nDCG@k of the merged top k of all K classes (``IDCG`` over ``min(k, |y|)``
    positions; an example without labels counts 0).

    Args: as :class:`MergedPrecisionAtK`; ``name`` defaults to ``"ndcg@k"``.
    """

    def __init__(self, k: int, num_classes: int, num_buckets: int, num_repetitions: int,
                 seed: int = 0, name=None, dtype=None):
        super().__init__(k, num_classes, num_buckets, num_repetitions, seed,
                         name=name or f"ndcg@{int(k)}", dtype=dtype)
        disc = 1.0 / np.log2(np.arange(2, self.k + 2))
        self._discounts = disc.astype(np.float32)
        # IDCG by the number of labels 0..k (0 labels: 1, any positive value; DCG is 0).
        self._ideal = np.concatenate([[1.0], np.cumsum(disc)]).astype(np.float32)

    def _per_example(self, hits, num_labels):
        dcg = ops.sum(hits * ops.convert_to_tensor(self._discounts), axis=-1)
        n = ops.cast(ops.minimum(num_labels, float(self.k)), "int32")
        return dcg / ops.take(ops.convert_to_tensor(self._ideal), n)
