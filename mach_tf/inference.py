"""Merged-average inference: R bucket distributions -> class scores -> top k.

``score(c | x) = (1/R) * sum_r s_r(h_r(c) | x)`` where ``s_r`` is repetition r's bucket
score (its probability, or log-probability with ``merge="logprob"``). The returned scores
are this plain mean; the paper's unbiased estimator ``B/(B-1) * (score - 1/B)`` is an
increasing function of it and ranks identically.

Two decoders, both plain TensorFlow ops (so TensorFlow Serving runs them), shared by
``mach-tf evaluate`` and the exported serving graph:

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

import numpy as np
import tensorflow as tf

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


def candidate_topk(bucket_scores, offsets, classes, class_slots, m: int, k: int):
    """Top k among the classes of each repetition's top-m buckets, scored exactly.

    Args:
        bucket_scores: float ``[batch, R, B]`` (R and B static).
        offsets: int64 ``[R*B + 1]`` CSR offsets (see :func:`candidate_index`).
        classes: int32 ``[R*K]`` CSR class ids.
        class_slots: int ``[K, R]``, every class's slot ``r*B + h_r(c)``.
        m: Buckets taken per repetition.
        k: How many to return.

    Returns:
        ``(scores float32 [batch, k], class_ids int64 [batch, k])``, best first, each class
        at most once; rows with fewer than k candidates are padded with score -inf and
        id -1.
    """
    num_r, num_b = _static_rb(bucket_scores)
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


class MergedDecoder:
    """Merged top-k from the bucket scores of the repetitions of a hash family.

    Args:
        family: The :class:`~mach_tf.hashing.HashFamily` of the repetitions merged (a run's,
            or a subset of it), in the order of the bucket scores' repetition axis.
        num_classes: K.
        decoder: ``"exact"``, ``"candidates"`` or ``"auto"`` (by K).
        candidate_buckets: m, buckets per repetition for candidate decoding.
    """

    def __init__(self, family, num_classes: int, decoder: str = "auto",
                 candidate_buckets: int = DEFAULT_CANDIDATE_BUCKETS):
        if candidate_buckets < 1:
            raise ValueError(f"candidate_buckets must be >= 1, got {candidate_buckets}")
        self.family = family
        self.decoder = resolve_decoder(decoder, num_classes)
        self.m = int(candidate_buckets)
        if self.decoder == "exact":
            self.table = tf.constant(family.table(num_classes))
        else:
            index = candidate_index(family, num_classes)
            self.offsets = tf.constant(index["offsets"])
            self.classes = tf.constant(index["classes"])
            self.class_slots = tf.constant(index["class_slots"])

    def topk(self, bucket_scores, k: int):
        """``(scores, class_ids)`` ``[batch, k]`` from bucket scores ``[batch, R, B]``."""
        if self.decoder == "exact":
            return exact_topk(bucket_scores, self.table, k)
        return candidate_topk(bucket_scores, self.offsets, self.classes, self.class_slots,
                              self.m, k)


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
        self._decoder = MergedDecoder(config.hash_family, config.num_classes, decoder,
                                      candidate_buckets)
        self.decoder = self._decoder.decoder
        self.m = self._decoder.m
        self._bucket_scores = bucket_scores

    def bucket_scores(self, inputs):
        logits = self.model(inputs, training=False)
        return self._bucket_scores(logits, self.config.loss, self.config.merge)

    def topk_from_bucket_scores(self, scores, k: int):
        return self._decoder.topk(scores, k)

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


# -- numpy references (export verification, tests, benchmarks) -------------------------------
def _rank(scores: np.ndarray, ids: np.ndarray, k: int):
    """The k best ``(scores, ids)`` of one row, best first, ties to the smaller id."""
    if scores.size > 4 * k:
        # Only entries at least as good as the k-th best can make it (ties included).
        kth = np.partition(scores, scores.size - k)[scores.size - k]
        keep = np.nonzero(scores >= kth)[0]
        scores, ids = scores[keep], ids[keep]
    order = np.lexsort((ids, -scores))[:k]
    out_s = np.full(k, -np.inf, np.float32)
    out_i = np.full(k, -1, np.int64)
    out_s[:order.size], out_i[:order.size] = scores[order], ids[order]
    return out_s, out_i


def _stack(rows: list, k: int):
    return (np.array([r[0] for r in rows], np.float32).reshape(-1, k),
            np.array([r[1] for r in rows], np.int64).reshape(-1, k))


def _merged(row_scores: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """float32 merged scores, summed left to right over R like the TensorFlow decoders.

    Args:
        row_scores: ``[R, B]`` bucket scores of one query.
        buckets: ``[R, n]`` buckets of the n classes under each repetition.
    """
    num_r = row_scores.shape[0]
    total = row_scores[0, buckets[0]].astype(np.float32)
    for r in range(1, num_r):
        total = total + row_scores[r, buckets[r]]
    return total / np.float32(num_r)


def exact_topk_numpy(bucket_scores: np.ndarray, table: np.ndarray, k: int):
    """Reference exact merged top-k in numpy, one query at a time (no ``[batch, K]``).

    Returns:
        ``(scores float32 [batch, k], ids int64 [batch, k])``, best first, ties to the
        smaller id.
    """
    bucket_scores = np.asarray(bucket_scores, np.float32)
    ids = np.arange(table.shape[1], dtype=np.int64)
    return _stack([_rank(_merged(s, table), ids, k) for s in bucket_scores], k)


def candidate_topk_numpy(bucket_scores: np.ndarray, index: dict, m: int, k: int):
    """Reference candidate top-k in numpy, written independently of :func:`candidate_topk`.

    Args:
        bucket_scores: ``[batch, R, B]``.
        index: :func:`candidate_index` of the model.
        m: Buckets per repetition (ties between bucket scores go to the smaller bucket, as
            in ``tf.math.top_k``).
        k: How many to return.
    """
    bucket_scores = np.asarray(bucket_scores, np.float32)
    num_r, num_b = bucket_scores.shape[1:]
    m = max(1, min(m, num_b))
    offsets, classes = index["offsets"], index["classes"]
    buckets = index["class_slots"] - np.arange(num_r, dtype=np.int64) * num_b  # [K, R]
    rows = []
    for s in bucket_scores:
        found = []
        for r in range(num_r):
            top = np.lexsort((np.arange(num_b), -s[r]))[:m]
            for j in top:
                g = r * num_b + j
                found.append(classes[offsets[g]:offsets[g + 1]])
        cand = np.unique(np.concatenate(found)).astype(np.int64) if found else \
            np.zeros(0, np.int64)
        rows.append(_rank(_merged(s, buckets[cand].T), cand, k))
    return _stack(rows, k)


def merged_topk_numpy(bucket_scores: np.ndarray, table: np.ndarray, k: int):
    """Reference merged top-k in numpy (tests): ``(scores, ids)`` sorted best first.

    Ties are broken by the smaller class id, as ``tf.math.top_k`` does.
    """
    return exact_topk_numpy(bucket_scores, table, k)


def num_candidates_estimate(num_classes: int, num_buckets: int, num_repetitions: int,
                            m: int) -> int:
    """Expected candidates per query before de-duplication: ``R * m * K / B``."""
    return int(math.ceil(num_repetitions * m * num_classes / num_buckets))
