"""Merged-average inference: R bucket distributions -> class scores -> top k.

``score(c | x) = (1/R) * sum_r s_r(h_r(c) | x)`` where ``s_r`` is repetition r's bucket
score (its probability, or log-probability with ``merge="logprob"``). The returned scores
are this plain mean; the paper's unbiased estimator ``B/(B-1) * (score - 1/B)`` is an
increasing function of it and ranks identically.

Two decoders, both plain TensorFlow ops (so TensorFlow Serving runs them), behind one Keras
layer, :class:`MergedTopK`, which holds the tables it reads as non-trainable weights. The
same layer decodes the merged validation after every epoch, ``mach-tf evaluate``, and the
exported serving graph (``predict`` queries that export):

* :func:`exact_topk` scores all K classes through the class -> bucket table ``[R, K]``:
  ``R * K`` gathers and a top-k over K per query.
* :func:`candidate_topk` takes each repetition's top-m buckets, gathers their classes from
  the bucket -> classes inverted index (CSR), scores those candidates exactly (through the
  class -> slots table ``[K, R]``), and returns their top k, each class once. Its cost
  follows ``R * m * K / B`` candidates, not K. A class found in several repetitions'
  top buckets gets the same score each time (bit for bit), so duplicates are removed
  among the best ``k * R`` entries only, never over the whole candidate list.

For the same class both decoders compute the score with the same float32 operations in the
same order, so a class's candidate score equals its exact score bit for bit; the two differ
only in which classes are looked at.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from mach_tf.hashing import HashFamily
from mach_tf.inference.filters import allowed_fn, has_restriction

#: ``decoder="auto"`` scores exactly up to this many classes, by candidates above. Exact
#: decoding costs ``R * K`` gathers and a top-k over K per query: about 4 ms per query at
#: K = 100,000 (R = 8) on 2 CPU cores, growing linearly to about 29 ms at K = 1,000,000,
#: while candidate decoding stays between 1 and 2 ms (benchmarks/RESULTS.md, "Serving").
#: Up to 100,000 classes the exact answer costs no more than the network itself (about
#: 2 ms) and is the default; above, candidates.
AUTO_EXACT_MAX_CLASSES = 100_000
#: m, the buckets taken per repetition by candidate decoding (benchmarks/RESULTS.md).
DEFAULT_CANDIDATE_BUCKETS = 10
DECODERS = ("exact", "candidates", "auto")


def resolve_decoder(decoder: str, num_classes: int) -> str:
    """``exact`` or ``candidates`` for ``decoder`` (``auto`` picks by K).

    Raises:
        ValueError: for an unknown decoder name.
    """
    if decoder == "auto":
        return "exact" if num_classes <= AUTO_EXACT_MAX_CLASSES else "candidates"
    if decoder not in ("exact", "candidates"):
        raise ValueError(f"decoder must be exact, candidates or auto, got {decoder!r}")
    return decoder


# -- index structures (numpy, built once at export / scorer construction) --------------------
def candidate_index(family, num_classes: int) -> dict:
    """The tables candidate decoding reads, as numpy arrays.

    Args:
        family: The run's :class:`~mach_tf.hashing.HashFamily` (R functions into B buckets).
        num_classes: K.

    Returns:
        ``{"offsets": int64 [R*B + 1], "classes": int32 [R*K],
        "class_slots": int [K, R]}``: the inverted index in CSR form over the R*B buckets
        of all repetitions (bucket ``j`` of repetition ``r`` is slot ``r*B + j`` and holds
        ``classes[offsets[r*B + j]:offsets[r*B + j + 1]]``, in increasing class order), and
        every class's slot ``r*B + h_r(c)`` under each repetition (int32 while R*B < 2**31).
    """
    num_r, num_b = family.num_repetitions, family.num_buckets
    dtype = np.int32 if num_r * num_b < 2**31 else np.int64
    class_slots = np.empty((num_classes, num_r), dtype=dtype)
    base = np.arange(num_r, dtype=np.int64) * num_b
    step = 1 << 20  # chunked: no [R, K] int64 temporary at large K
    for start in range(0, num_classes, step):
        stop = min(num_classes, start + step)
        class_slots[start:stop] = family.buckets_np(np.arange(start, stop)).T + base
    offsets = np.zeros(num_r * num_b + 1, dtype=np.int64)
    classes = np.empty(num_r * num_classes, dtype=np.int32)
    for r in range(num_r):
        col = np.ascontiguousarray(class_slots[:, r]) - base[r]
        counts = np.bincount(col, minlength=num_b)
        np.cumsum(counts, out=offsets[r * num_b + 1:(r + 1) * num_b + 1])
        offsets[r * num_b + 1:(r + 1) * num_b + 1] += r * num_classes
        # A stable sort keeps the classes of each bucket in increasing order.
        classes[r * num_classes:(r + 1) * num_classes] = np.argsort(col, kind="stable")
    return {"offsets": offsets, "classes": classes, "class_slots": class_slots}


# -- TensorFlow decoders --------------------------------------------------------------------
def _pad_topk(scores, ids, k):
    """top_k over the last axis, padding with (-inf, -1) when fewer than k columns exist."""
    width = tf.shape(scores)[1]
    pad = tf.maximum(0, k - width)
    scores = tf.pad(scores, [[0, 0], [0, pad]], constant_values=-np.inf)
    ids = tf.pad(ids, [[0, 0], [0, pad]], constant_values=-1)
    top = tf.math.top_k(scores, k=k, sorted=True)
    return top.values, tf.gather(ids, top.indices, batch_dims=1)


def _static_rb(bucket_scores):
    num_r, num_b = bucket_scores.shape[1], bucket_scores.shape[2]
    if num_r is None or num_b is None:
        raise ValueError("bucket_scores must have a static shape [batch, R, B]")
    return int(num_r), int(num_b)


def exact_scores(bucket_scores, table):
    """Merged scores of all classes: ``[batch, K]`` from ``[batch, R, B]`` and ``[R, K]``."""
    num_r, _ = _static_rb(bucket_scores)
    total = None
    for r in range(num_r):
        part = tf.gather(bucket_scores[:, r, :], table[r], axis=1)
        total = part if total is None else total + part
    return total / float(num_r)


def exact_topk(bucket_scores, table, k: int):
    """Top k classes by merged score over all K classes.

    Args:
        bucket_scores: float ``[batch, R, B]`` (R and B static).
        table: int ``[R, K]`` class -> bucket table.
        k: How many to return.

    Returns:
        ``(scores float32 [batch, k], class_ids int64 [batch, k])``, best first; ties go to
        the smaller class id.
    """
    scores = exact_scores(bucket_scores, table)
    k_eff = min(k, table.shape[1]) if table.shape[1] is not None else k
    top = tf.math.top_k(scores, k=k_eff, sorted=True)
    ids = tf.cast(top.indices, tf.int64)
    if k_eff < k:
        return _pad_topk(top.values, ids, k)
    return top.values, ids


#: Up to this many entries per row, repeats are found by comparing all pairs (a few cheap
#: ops); beyond, by sorting (O(q log q) instead of O(q^2) memory).
_PAIRWISE_MAX = 128


def _drop_repeats(ids):
    """Marks every occurrence of an id after its first one in each row (``[b, q]`` bool)."""
    q = ids.shape[1]
    if q is not None and q <= _PAIRWISE_MAX:
        earlier = tf.constant(np.tril(np.ones((q, q), bool), -1))
        return tf.reduce_any(tf.equal(ids[:, :, None], ids[:, None, :]) & earlier, axis=2)
    order = tf.argsort(ids, axis=1, stable=True)  # equal ids keep their left-to-right order
    sorted_ids = tf.gather(ids, order, batch_dims=1)
    repeat = tf.concat([tf.zeros_like(sorted_ids[:, :1], tf.bool),
                        sorted_ids[:, 1:] == sorted_ids[:, :-1]], axis=1)
    inverse = tf.argsort(order, axis=1, stable=True)
    return tf.gather(repeat, inverse, batch_dims=1)


def candidate_topk(bucket_scores, offsets, classes, class_slots, m: int, k: int,
                   allowed=None):
    """Top k among the classes of each repetition's top-m buckets, scored exactly.

    Args:
        bucket_scores: float ``[batch, R, B]`` (R and B static).
        offsets: int64 ``[R*B + 1]`` CSR offsets (see :func:`candidate_index`).
        classes: int32 ``[R*K]`` CSR class ids.
        class_slots: int ``[K, R]``, every class's slot ``r*B + h_r(c)``.
        m: Buckets taken per repetition: a Python int (clipped to ``[1, B]``), or an int32
            scalar tensor already in that range.
        k: How many to return.
        allowed: Optional ``allowed(class_ids [T], row [T]) -> bool [T]`` (see
            :func:`mach_tf.inference.filters.allowed_fn`); candidates it refuses are
            dropped.

    Returns:
        ``(scores float32 [batch, k], class_ids int64 [batch, k])``, best first, each class
        at most once; rows with fewer than k candidates are padded with score -inf and
        id -1.
    """
    num_r, num_b = _static_rb(bucket_scores)
    if not tf.is_tensor(m):
        m = max(1, min(int(m), num_b))
    k = int(k)
    top = tf.math.top_k(bucket_scores, k=m, sorted=False).indices  # [batch, R, m]
    rep_base = tf.constant(np.arange(num_r, dtype=np.int64) * num_b)
    # Slots r*B + j, ordered (row, r, rank): a row's candidates stay contiguous.
    buckets = tf.reshape(tf.cast(top, tf.int64) + rep_base[:, None], [-1])
    offsets = tf.convert_to_tensor(offsets, tf.int64)
    positions = tf.ragged.range(tf.gather(offsets, buckets), tf.gather(offsets, buckets + 1))
    cand = tf.gather(classes, positions.flat_values)  # [T]
    row_splits = positions.row_splits[::num_r * m]  # [batch + 1]
    total = tf.shape(cand, out_type=tf.int64)[0]
    row = tf.searchsorted(row_splits[1:], tf.range(total), side="right",
                          out_type=tf.int64)  # [T]
    # Every candidate's R bucket scores, summed in the same order as exact_scores.
    flat = tf.cast(tf.gather(class_slots, cand), tf.int64) + \
        (row * (num_r * num_b))[:, None]  # [T, R]
    parts = tf.unstack(tf.gather(tf.reshape(bucket_scores, [-1]), flat), num_r, axis=1)
    # add_n sums left to right, like the exact decoder's running sum.
    score = tf.math.add_n(parts) / float(num_r)
    if allowed is not None:
        score = tf.where(allowed(tf.cast(cand, tf.int64), row), score,
                         tf.constant(-np.inf, score.dtype))
    # A class appears at most once per repetition, so each of the k best distinct classes
    # has a copy among the k*R best entries: de-duplicate those only.
    q = k * num_r
    dense_s = tf.RaggedTensor.from_row_splits(score, row_splits, validate=False).to_tensor(
        default_value=-np.inf)
    dense_c = tf.RaggedTensor.from_row_splits(tf.cast(cand, tf.int64), row_splits,
                                              validate=False).to_tensor(default_value=-1)
    best_s, best_c = _pad_topk(dense_s, dense_c, q)
    best_s = tf.where(_drop_repeats(best_c), tf.constant(-np.inf, best_s.dtype), best_s)
    top_k = tf.math.top_k(best_s, k=k, sorted=True)
    ids = tf.gather(best_c, top_k.indices, batch_dims=1)
    ids = tf.where(top_k.values == -np.inf, tf.constant(-1, tf.int64), ids)
    return top_k.values, ids


def growing_candidate_topk(bucket_scores, offsets, classes, class_slots, m: int, k: int,
                           allowed, needed=None):
    """:func:`candidate_topk` with ``allowed``, where a row with fewer than k allowed
    candidates takes more buckets per repetition (m, 2m, 4m, ... up to B, where every class
    is a candidate): filters never cost an answer its k classes when K minus the filtered
    classes allows them. Each row's answer is that of the first size that fills it, so it
    never depends on the other rows of the batch.

    The sizes after the first are one ``tf.while_loop`` whose body decodes at a size held
    in a tensor: the graph holds two candidate decodings, not one per size (thirteen at
    B = 4,096 and m = 1), which keeps tracing, the SavedModel and the server's graph
    optimisation small.

    Args:
        needed: Optional bool ``[batch]``: only these rows' answers are used (the others
            are never grown for).
    """
    num_b = _static_rb(bucket_scores)[1]
    first = max(1, min(int(m), num_b))
    scores, ids = candidate_topk(bucket_scores, offsets, classes, class_slots, first, k,
                                 allowed)
    if first == num_b:
        return scores, ids

    def short_rows(ids):
        return tf.reduce_any(ids < 0, axis=1)

    def keep_growing(size, scores, ids):
        short = short_rows(ids)
        if needed is not None:
            short = tf.logical_and(short, needed)
        return tf.logical_and(size < num_b, tf.reduce_any(short))

    def grow(size, scores, ids):
        size = tf.minimum(2 * size, num_b)
        more = candidate_topk(bucket_scores, offsets, classes, class_slots, size, k, allowed)
        short = short_rows(ids)[:, None]
        return size, tf.where(short, more[0], scores), tf.where(short, more[1], ids)

    _, scores, ids = tf.while_loop(keep_growing, grow, (tf.constant(first), scores, ids))
    return scores, ids


def exact_filtered_topk(bucket_scores, table, k: int, excluded=None, exclude_ids=None):
    """:func:`exact_topk` without the ``excluded`` classes (sorted int64 ``[E]``) and each
    row's ``exclude_ids`` (int64 ``[batch, m]``, -1 padding); padded with (-inf, -1) when
    fewer than k classes are left."""
    scores = exact_scores(bucket_scores, table)
    num_k = tf.shape(scores, out_type=tf.int64)[1]
    minus_inf = tf.constant(-np.inf, scores.dtype)
    if excluded is not None:
        # x + 0 is x bit for bit: only the excluded columns change.
        scores = scores + tf.scatter_nd(excluded[:, None],
                                        tf.fill(tf.shape(excluded), minus_inf), [num_k])
    if exclude_ids is not None:
        where = tf.where(exclude_ids >= 0)  # [n, 2]: (row, column)
        cells = tf.stack([where[:, 0], tf.gather_nd(exclude_ids, where)], axis=1)
        scores = tf.tensor_scatter_nd_update(
            scores, cells, tf.fill(tf.shape(cells)[:1], minus_inf))
    if table.shape[1] is not None and table.shape[1] >= k:
        top = tf.math.top_k(scores, k=k, sorted=True)
        top_s, top_c = top.values, tf.cast(top.indices, tf.int64)
    else:
        top_s, top_c = _pad_topk(scores, tf.broadcast_to(
            tf.range(num_k)[None, :], tf.shape(scores, out_type=tf.int64)), k)
    return top_s, tf.where(top_s == -np.inf, tf.constant(-1, tf.int64), top_c)


def restricted_topk(bucket_scores, restrict_ids, slots, k: int, allowed=None):
    """Top k among each row's ``restrict_ids`` (int64 ``[batch, n]``, -1 padding), scored
    directly: ``R * n`` gathers per row, whatever K.

    Args:
        bucket_scores: float ``[batch, R, B]`` (R and B static).
        restrict_ids: The classes each row may be answered with.
        slots: ``slots(class_ids [batch, n]) -> [batch, n, R]``, each class's bucket in
            every repetition (``r*B + h_r(c)``), from the decoder's own table.
        k: How many to return.
        allowed: As for :func:`candidate_topk`.

    Returns:
        As :func:`candidate_topk`: a class's score is the one the exact and candidate
        decoders give it, bit for bit (the same sums in the same order).
    """
    num_r, num_b = _static_rb(bucket_scores)
    batch = tf.shape(restrict_ids, out_type=tf.int64)[0]
    valid = restrict_ids >= 0
    ids = tf.where(valid, restrict_ids, tf.zeros_like(restrict_ids))
    flat = tf.cast(slots(ids), tf.int64) + \
        (tf.range(batch) * (num_r * num_b))[:, None, None]  # [batch, n, R]
    parts = tf.unstack(tf.gather(tf.reshape(bucket_scores, [-1]), flat), num_r, axis=2)
    score = tf.math.add_n(parts) / float(num_r)
    keep = tf.logical_and(valid, tf.logical_not(_drop_repeats(restrict_ids)))
    if allowed is not None:
        rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(restrict_ids, tf.int64))
        keep = tf.logical_and(keep, tf.reshape(
            allowed(tf.reshape(ids, [-1]), tf.reshape(rows, [-1])), tf.shape(ids)))
    score = tf.where(keep, score, tf.constant(-np.inf, score.dtype))
    top_s, top_c = _pad_topk(score, restrict_ids, k)
    return top_s, tf.where(top_s == -np.inf, tf.constant(-1, tf.int64), top_c)


def num_candidates_estimate(num_classes: int, num_buckets: int, num_repetitions: int,
                            m: int) -> int:
    """Expected candidates per query before de-duplication: ``R * m * K / B``."""
    return int(math.ceil(num_repetitions * m * num_classes / num_buckets))


@keras.saving.register_keras_serializable(package="mach_tf")
class MergedTopK(keras.layers.Layer):
    """Merged-average top-k: bucket scores ``[batch, R, B]`` -> the k best classes.

    The tables the decoder reads are non-trainable weights of the layer (made in
    ``build``, saved with it and with an export's variables, never graph constants): the
    class -> bucket table ``[R, K]`` for exact decoding; for candidate decoding the
    inverted index (CSR ``offsets [R*B + 1]`` and ``classes [R*K]``) and the class ->
    slots table ``[K, R]`` (see :func:`candidate_index`).

    Args:
        num_classes: K.
        hashing: The hash family of the repetitions merged, in the order of the bucket
            scores' repetition axis (``HashFamily.to_dict()``: a run's, or a subset).
        k: Classes returned per query (a call may ask for another k).
        decoder: ``"exact"``, ``"candidates"`` or ``"auto"`` (by K).
        candidate_buckets: m, buckets per repetition for candidate decoding.
        excluded_classes: Class ids never returned (a catalogue's retired classes); held
            as a sorted weight. Every answer still has k classes while K minus their number
            allows: candidate decoding takes more buckets as needed.

    Call with bucket scores (:func:`mach_tf.model.bucket_scores` of the R repetitions'
    logits), and optionally a request's ``exclude_ids`` and ``restrict_ids`` (int64
    ``[batch, n]`` padded with -1, see :mod:`mach_tf.inference.filters`); returns
    ``(scores float32 [batch, k], class_ids int64 [batch, k])``, best first, padded with
    ``(-inf, -1)`` when fewer than k classes can be returned.
    """

    def __init__(self, num_classes, hashing, k=10, decoder="auto",
                 candidate_buckets=DEFAULT_CANDIDATE_BUCKETS, excluded_classes=(), **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if int(candidate_buckets) < 1:
            raise ValueError(f"candidate_buckets must be >= 1, got {candidate_buckets}")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.num_classes = int(num_classes)
        self.hashing = HashFamily.from_dict(hashing).to_dict()
        self.k = int(k)
        self.decoder = resolve_decoder(decoder, self.num_classes)
        self.candidate_buckets = int(candidate_buckets)
        self.excluded_classes = np.unique(np.asarray(excluded_classes, np.int64)).tolist()
        if self.excluded_classes and not (
                0 <= self.excluded_classes[0] and self.excluded_classes[-1] < self.num_classes):
            raise ValueError(f"excluded_classes must be class ids in [0, {self.num_classes})")
        self.build()

    @property
    def family(self) -> HashFamily:
        return HashFamily.from_dict(self.hashing)

    def build(self, input_shape=None):
        if self.built:  # built by the constructor: the tables need no input shape
            return
        family = self.family
        if self.decoder == "exact":
            arrays = {"class_to_bucket": family.table(self.num_classes)}
        else:
            index = candidate_index(family, self.num_classes)
            arrays = {"bucket_offsets": index["offsets"], "bucket_classes": index["classes"],
                      "class_slots": index["class_slots"]}
        if self.excluded_classes:
            arrays["excluded"] = np.asarray(self.excluded_classes, np.int64)
        for name, array in arrays.items():
            setattr(self, name, self.add_weight(
                name=name, shape=array.shape, dtype=str(array.dtype), trainable=False,
                initializer=_array_initializer(array)))
        self.built = True

    def call(self, bucket_scores, k=None, exclude_ids=None, restrict_ids=None):
        k = self.k if k is None else int(k)
        excluded = tf.convert_to_tensor(self.excluded) if self.excluded_classes else None
        allowed = allowed_fn(excluded, exclude_ids)
        if restrict_ids is None:
            return self._decode(bucket_scores, k, excluded, exclude_ids, allowed)
        restricted = restricted_topk(bucket_scores, restrict_ids, self._slots, k, allowed)
        rows = has_restriction(restrict_ids)
        free = tf.cond(tf.reduce_all(rows), lambda: restricted,  # no row needs all K
                       lambda: self._decode(bucket_scores, k, excluded, exclude_ids, allowed,
                                            tf.logical_not(rows)))
        return (tf.where(rows[:, None], restricted[0], free[0]),
                tf.where(rows[:, None], restricted[1], free[1]))

    def _decode(self, bucket_scores, k, excluded, exclude_ids, allowed, needed=None):
        if self.decoder == "exact":
            table = tf.convert_to_tensor(self.class_to_bucket)
            if allowed is None:
                return exact_topk(bucket_scores, table, k)
            return exact_filtered_topk(bucket_scores, table, k, excluded, exclude_ids)
        tables = (tf.convert_to_tensor(self.bucket_offsets),
                  tf.convert_to_tensor(self.bucket_classes),
                  tf.convert_to_tensor(self.class_slots))
        if allowed is None:
            return candidate_topk(bucket_scores, *tables, self.candidate_buckets, k)
        return growing_candidate_topk(bucket_scores, *tables, self.candidate_buckets, k,
                                      allowed, needed)

    def _slots(self, class_ids):
        """``[batch, n, R]``: every class's slot ``r*B + h_r(c)`` (see
        :func:`candidate_index`), from whichever table this decoder holds."""
        if self.decoder != "exact":
            return tf.gather(tf.convert_to_tensor(self.class_slots), class_ids)
        family = self.family
        base = tf.constant(np.arange(family.num_repetitions, dtype=np.int64) *
                           family.num_buckets)
        buckets = tf.gather(tf.convert_to_tensor(self.class_to_bucket), class_ids, axis=1)
        return tf.transpose(tf.cast(buckets, tf.int64), [1, 2, 0]) + base

    def compute_output_spec(self, bucket_scores, k=None, exclude_ids=None, restrict_ids=None):
        k = self.k if k is None else int(k)
        batch = bucket_scores.shape[0]
        return (keras.KerasTensor((batch, k), dtype="float32"),
                keras.KerasTensor((batch, k), dtype="int64"))

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, hashing=self.hashing, k=self.k,
                      decoder=self.decoder, candidate_buckets=self.candidate_buckets,
                      excluded_classes=self.excluded_classes)
        return config


def _array_initializer(array: np.ndarray):
    """An initializer that returns ``array`` itself: a table of 10^7 classes is copied once
    into its variable, never built as a graph constant or filled twice."""
    def init(shape, dtype=None):
        return array
    return init
