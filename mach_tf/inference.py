"""Merged-average inference: R bucket distributions -> class scores -> top k.

``score(c | x) = (1/R) * sum_r s_r(h_r(c) | x)`` where ``s_r`` is repetition r's bucket
score (its probability, or log-probability with ``merge="logprob"``). The returned scores
are this plain mean; the paper's unbiased estimator ``B/(B-1) * (score - 1/B)`` is an
increasing function of it and ranks identically.

Two decoders, both plain TensorFlow ops (so TensorFlow Serving runs them), shared by
``mach-tf evaluate`` and the exported serving graph:

* :func:`exact_topk` scores all K classes through the class -> bucket table.
* :func:`candidate_topk` takes each repetition's top-m buckets, gathers their classes from
  the bucket -> classes inverted index (CSR), de-duplicates, scores only those candidates
  exactly, and returns their top k. Its cost follows ``R * m * K / B``, not K.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from mach_tf.hashing import buckets_tf

#: ``decoder="auto"`` scores exactly up to this many classes, by candidates above.
AUTO_EXACT_MAX_CLASSES = 100_000
DEFAULT_CANDIDATE_BUCKETS = 10


def resolve_decoder(decoder: str, num_classes: int) -> str:
    if decoder == "auto":
        return "exact" if num_classes <= AUTO_EXACT_MAX_CLASSES else "candidates"
    if decoder not in ("exact", "candidates"):
        raise ValueError(f"decoder must be exact, candidates or auto, got {decoder!r}")
    return decoder


def _pad_topk(scores, ids, k):
    """top_k over the last axis, padding with (-inf, -1) when fewer than k columns exist."""
    width = tf.shape(scores)[1]
    pad = tf.maximum(0, k - width)
    scores = tf.pad(scores, [[0, 0], [0, pad]], constant_values=-np.inf)
    ids = tf.pad(ids, [[0, 0], [0, pad]], constant_values=-1)
    top = tf.math.top_k(scores, k=k, sorted=True)
    return top.values, tf.gather(ids, top.indices, batch_dims=1)


def exact_scores(bucket_scores, table):
    """Merged scores of all classes: ``[batch, K]`` from ``[batch, R, B]`` and ``[R, K]``."""
    num_r = bucket_scores.shape[1]
    if num_r is None:
        raise ValueError("the number of repetitions must be static")
    total = None
    for r in range(num_r):
        part = tf.gather(bucket_scores[:, r, :], table[r], axis=1)
        total = part if total is None else total + part
    return total / float(num_r)


def exact_topk(bucket_scores, table, k: int):
    """Top k classes by merged score over all K classes.

    Args:
        bucket_scores: float ``[batch, R, B]`` (R static).
        table: int ``[R, K]`` class -> bucket table.
        k: How many to return.

    Returns:
        ``(scores float32 [batch, k], class_ids int64 [batch, k])``.
    """
    scores = exact_scores(bucket_scores, table)
    k_eff = min(k, table.shape[1]) if table.shape[1] is not None else k
    top = tf.math.top_k(scores, k=k_eff, sorted=True)
    ids = tf.cast(top.indices, tf.int64)
    if k_eff < k:
        return _pad_topk(top.values, ids, k)
    return top.values, ids


def candidate_topk(bucket_scores, offsets, classes, hash_a, hash_b, num_buckets: int,
                   num_classes: int, m: int, k: int, prime: int):
    """Top k among the classes of each repetition's top-m buckets, scored exactly.

    Args:
        bucket_scores: float ``[batch, R, B]`` (R static).
        offsets: int64 ``[R, B + 1]`` CSR offsets of the inverted index.
        classes: int32 ``[R * K]`` CSR class ids (repetition r's block starts at ``r * K``).
        hash_a, hash_b: int64 ``[R]`` hash coefficients.
        num_buckets, num_classes: B and K.
        m: Buckets taken per repetition.
        k: How many to return.
        prime: The hash modulus.

    Returns:
        ``(scores float32 [batch, k], class_ids int64 [batch, k])``; rows with fewer than k
        candidates are padded with score -inf and id -1.
    """
    num_r = bucket_scores.shape[1]
    m = min(m, num_buckets)
    batch = tf.shape(bucket_scores)[0]
    top_b = tf.math.top_k(bucket_scores, k=m, sorted=False).indices  # [batch, R, m]
    top_b = tf.cast(top_b, tf.int64)
    # CSR lookups, laid out [batch, R, m] so that each row's candidates stay contiguous.
    rep = tf.range(num_r, dtype=tf.int64)[None, :, None]
    flat_b = rep * (num_buckets + 1) + top_b
    offsets_flat = tf.reshape(offsets, [-1])
    starts = tf.gather(offsets_flat, flat_b) + rep * num_classes
    ends = tf.gather(offsets_flat, flat_b + 1) + rep * num_classes
    starts = tf.reshape(starts, [-1])
    ends = tf.reshape(ends, [-1])
    positions = tf.ragged.range(starts, ends)  # [batch * R * m, None]
    lengths = positions.row_lengths()
    cand = tf.cast(tf.gather(classes, positions.flat_values), tf.int64)
    row_of_range = tf.repeat(tf.range(tf.cast(batch, tf.int64)), num_r * m)
    rows = tf.repeat(row_of_range, lengths)
    # tf.unique keeps first occurrences in order, so rows stay non-decreasing.
    keys = tf.unique(rows * num_classes + cand).y
    rows_u = keys // num_classes
    cls_u = keys % num_classes
    b = buckets_tf(cls_u, hash_a, hash_b, num_buckets, prime)  # [R, n]
    rr = tf.broadcast_to(tf.range(num_r, dtype=tf.int64)[:, None], tf.shape(b))
    idx = tf.stack([tf.broadcast_to(rows_u[None, :], tf.shape(b)), rr, b], axis=-1)
    s = tf.reduce_mean(tf.gather_nd(bucket_scores, idx), axis=0)  # [n]
    nrows = tf.cast(batch, tf.int64)
    dense_s = tf.RaggedTensor.from_value_rowids(s, rows_u, nrows=nrows).to_tensor(
        default_value=-np.inf)
    dense_c = tf.RaggedTensor.from_value_rowids(cls_u, rows_u, nrows=nrows).to_tensor(
        default_value=-1)
    return _pad_topk(dense_s, dense_c, k)


class MergedScorer:
    """In-Python merged top-k over a model holding all R repetitions.

    Args:
        config: The run's :class:`~mach_tf.config.MachConfig`.
        model: A :class:`~mach_tf.model.MachModel` holding repetitions ``0..R-1`` in order.
        decoder: ``"exact"``, ``"candidates"`` or ``"auto"``.
        candidate_buckets: m, buckets per repetition for candidate decoding.
    """

    def __init__(self, config, model, decoder: str = "auto",
                 candidate_buckets: int = DEFAULT_CANDIDATE_BUCKETS):
        from mach_tf.model import bucket_scores

        if list(model.repetitions) != list(range(config.num_repetitions)):
            raise ValueError(f"model holds repetitions {model.repetitions}, expected "
                             f"0..{config.num_repetitions - 1}")
        self.config = config
        self.model = model
        self.decoder = resolve_decoder(decoder, config.num_classes)
        self.m = candidate_buckets
        family = config.hash_family
        self._family = family
        self._bucket_scores = bucket_scores
        if self.decoder == "exact":
            self.table = tf.constant(family.table(config.num_classes))
        else:
            offsets, classes = family.inverted_index(config.num_classes)
            self.offsets = tf.constant(offsets)
            self.classes = tf.constant(classes.reshape(-1))
            self.hash_a = tf.constant(family.a, tf.int64)
            self.hash_b = tf.constant(family.b, tf.int64)

    def bucket_scores(self, inputs):
        logits = self.model(inputs, training=False)
        return self._bucket_scores(logits, self.config.loss, self.config.merge)

    def topk_from_bucket_scores(self, scores, k: int):
        if self.decoder == "exact":
            return exact_topk(scores, self.table, k)
        c = self.config
        return candidate_topk(scores, self.offsets, self.classes, self.hash_a, self.hash_b,
                              c.num_buckets, c.num_classes, self.m, k, self._family.prime)

    def topk(self, inputs, k: int):
        """``(scores [batch, k], class_ids [batch, k])`` for padded sparse ``inputs``."""
        return self._topk_fn(inputs, k)

    @tf.function(reduce_retracing=True)
    def _topk_fn(self, inputs, k):
        return self.topk_from_bucket_scores(self.bucket_scores(inputs), k)

    def eval_batch_size(self, default: int = 256) -> int:
        """A batch size whose ``[batch, K]`` exact scores stay near 256 MB."""
        if self.decoder != "exact":
            return default
        return int(max(1, min(default, (64 << 20) // max(self.config.num_classes, 1))))


def merged_topk_numpy(bucket_scores: np.ndarray, table: np.ndarray, k: int):
    """Reference merged top-k in numpy (tests): ``(scores, ids)`` sorted best first.

    Ties are broken by the smaller class id, as ``tf.math.top_k`` does.
    """
    s = np.mean(np.stack([bucket_scores[:, r, table[r]] for r in range(table.shape[0])]), 0)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


def num_candidates_estimate(num_classes: int, num_buckets: int, num_repetitions: int,
                            m: int) -> int:
    """Expected candidates per query before de-duplication: ``R * m * K / B``."""
    return int(math.ceil(num_repetitions * m * num_classes / num_buckets))
