"""Numpy references of the merged decoders, and how top-k lists are compared.

Written apart from the TensorFlow decoders of :mod:`mach_tf.inference.decoder` (one query
at a time, no ``[batch, K]`` matrix; only the index tables are shared), so that export
verification, the demo's serving check, tests and benchmarks check those decoders against
an independent computation. The reference bucket scores come from the single-repetition
models as training saved them, each run on its own.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mach_tf.inference.decoder import candidate_index
from mach_tf.model.network import bucket_scores


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


def filtered_topk_numpy(bucket_scores: np.ndarray, family, num_classes: int, decoder: str,
                        m: int, k: int, excluded=(), exclude_ids=None, restrict_ids=None):
    """Reference of :class:`MergedTopK` with filters, one query at a time: a row with
    ``restrict_ids`` is answered from those classes; otherwise the exact decoder ranks all
    allowed classes, and the candidate decoder the allowed classes of each repetition's
    top-m buckets, doubling m (up to B) until there are k of them.

    Args:
        bucket_scores: ``[batch, R, B]``.
        family: The :class:`~mach_tf.hashing.HashFamily` merged.
        num_classes: K.
        decoder: ``"exact"`` or ``"candidates"``.
        m: Buckets per repetition to start with (candidates).
        k: How many to return.
        excluded: Classes never returned.
        exclude_ids, restrict_ids: ``[batch, n]`` per-row ids, padded with -1.
    """
    bucket_scores = np.asarray(bucket_scores, np.float32)
    num_r, num_b = bucket_scores.shape[1:]
    table = family.table(num_classes)
    index = candidate_index(family, num_classes) if decoder == "candidates" else None
    rows = []
    for i, s in enumerate(bucket_scores):
        banned = np.asarray(excluded, np.int64)
        if exclude_ids is not None:
            banned = np.union1d(banned, np.asarray(exclude_ids[i])[np.asarray(
                exclude_ids[i]) >= 0])
        restrict = [] if restrict_ids is None else \
            [int(c) for c in restrict_ids[i] if c >= 0]
        if restrict:
            cand = np.setdiff1d(np.asarray(restrict, np.int64), banned)
        elif index is None:
            cand = np.setdiff1d(np.arange(num_classes, dtype=np.int64), banned)
        else:
            size = max(1, min(m, num_b))
            while True:
                found = [index["classes"][index["offsets"][r * num_b + j]:
                                          index["offsets"][r * num_b + j + 1]]
                         for r in range(num_r)
                         for j in np.lexsort((np.arange(num_b), -s[r]))[:size]]
                cand = np.setdiff1d(np.unique(np.concatenate(found)).astype(np.int64),
                                    banned)
                if cand.size >= k or size >= num_b:
                    break
                size = min(2 * size, num_b)
        rows.append(_rank(_merged(s, table[:, cand]), cand, k))
    return _stack(rows, k)


def merged_topk_numpy(bucket_scores: np.ndarray, table: np.ndarray, k: int):
    """Reference merged top-k in numpy (tests): ``(scores, ids)`` sorted best first.

    Ties are broken by the smaller class id, as ``tf.math.top_k`` does.
    """
    return exact_topk_numpy(bucket_scores, table, k)


def reference_bucket_scores(config, models, sample: dict) -> np.ndarray:
    """``[n, R, B]`` bucket scores of ``sample`` from the R single-repetition models, each
    run on its own (independent of the stacked model that is exported)."""
    inputs = {k: tf.constant(v) for k, v in sample.items()}
    parts = [bucket_scores(m(inputs, training=False), config.loss, config.merge).numpy()
             for m in models]
    return np.concatenate(parts, axis=1)


def reference_topk(config, scores: np.ndarray, decoder: str, candidate_buckets: int,
                   top_k: int):
    """The numpy reference decoding of ``scores`` by ``decoder``."""
    family = config.hash_family
    if decoder == "exact":
        return exact_topk_numpy(scores, family.table(config.num_classes), top_k)
    return candidate_topk_numpy(scores, candidate_index(family, config.num_classes),
                                candidate_buckets, top_k)


def _row_agrees(ia, sa, ib, sb, atol: float) -> bool:
    # Classes scored clearly above the k-th must be the same; the order among tied scores,
    # and which of several classes tied at the k-th place is kept, may differ.
    strict_a = set(ia[sa > sa[-1] + atol].tolist())
    strict_b = set(ib[sb > sb[-1] + atol].tolist())
    return strict_a == strict_b


def disagreeing_rows(ids_a, scores_a, ids_b, scores_b, atol: float = 1e-5) -> list[int]:
    """Rows whose top-k lists differ beyond the order of scores tied within ``atol``."""
    ids_a, ids_b = np.asarray(ids_a), np.asarray(ids_b)
    scores_a, scores_b = np.asarray(scores_a), np.asarray(scores_b)
    if ids_a.shape != ids_b.shape or scores_a.shape != scores_b.shape:
        return list(range(max(len(ids_a), len(ids_b))))
    bad = []
    for i, (ra, rb, sa, sb) in enumerate(zip(ids_a, ids_b, scores_a, scores_b)):
        finite = np.isfinite(sa) & np.isfinite(sb)
        if not (np.array_equal(np.isfinite(sa), np.isfinite(sb))
                and np.allclose(sa[finite], sb[finite], atol=atol, rtol=1e-4)
                and _row_agrees(ra, sa, rb, sb, atol)):
            bad.append(i)
    return bad


def topk_agree(ids_a, scores_a, ids_b, scores_b, atol: float = 1e-5) -> bool:
    """Equal top-k lists up to the order of scores tied within ``atol``."""
    return not disagreeing_rows(ids_a, scores_a, ids_b, scores_b, atol)
