"""Ranking metrics of extreme classification: P@k, nDCG@k and PSP@k.

Standard definitions (Extreme Classification Repository):

* ``P@k = |top_k ∩ y| / k`` (divided by k even when |y| < k).
* ``nDCG@k = DCG@k / IDCG@k`` with ``DCG@k = sum_{l<=k} [top_l in y] / log2(l + 1)`` and
  ``IDCG@k = sum_{l <= min(k, |y|)} 1 / log2(l + 1)``.
* ``PSP@k`` (Jain, Prabhu, Varma, KDD 2016): like P@k but each hit of label ``j`` counts
  ``1 / p_j`` with the propensity ``p_j = 1 / (1 + C exp(-A log(N_j + B)))``,
  ``C = (log N - 1) (B + 1)^A``, N training points and N_j of them carrying ``j``
  (A = 0.55, B = 1.5 by default); reported normalised by the best achievable value, the
  PSP@k of ranking the true labels by ``1 / p_j`` (as the repository's tools do).

All metrics average over every test point; a point without labels scores 0.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def propensities(label_counts: np.ndarray, num_points: int, a: float = 0.55,
                 b: float = 1.5) -> np.ndarray:
    """Jain et al.'s propensity ``p_j`` of every label from training frequencies."""
    counts = np.asarray(label_counts, dtype=np.float64)
    c = (np.log(max(num_points, 2)) - 1.0) * (b + 1.0) ** a
    return 1.0 / (1.0 + c * np.exp(-a * np.log(counts + b)))


class RankingMetrics:
    """Accumulates P@k, nDCG@k (and PSP@k given propensities) over batches.

    Args:
        ks: Cut-offs to report.
        inv_propensity: ``1 / p_j`` per label, to also report PSP@k; ``None`` to skip.
    """

    def __init__(self, ks: Sequence[int] = (1, 3, 5), inv_propensity: np.ndarray | None = None):
        self.ks = sorted({int(k) for k in ks})
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"cut-offs must be >= 1, got {ks}")
        self.kmax = self.ks[-1]
        self.inv_p = None if inv_propensity is None else np.asarray(inv_propensity, np.float64)
        self.n = 0
        self._p = np.zeros(len(self.ks))
        self._ndcg = np.zeros(len(self.ks))
        self._psp = np.zeros(len(self.ks))
        self._psp_best = np.zeros(len(self.ks))
        self._disc = 1.0 / np.log2(np.arange(2, self.kmax + 2))

    def update(self, topk: np.ndarray, labels: Iterable[Sequence[int]]) -> None:
        """Adds a batch.

        Args:
            topk: int ``[batch, >= kmax]`` predicted class ids, best first (-1 = none).
            labels: The true label ids of each point.
        """
        topk = np.asarray(topk)
        if topk.ndim != 2 or topk.shape[1] < self.kmax:
            raise ValueError(f"need top-{self.kmax} predictions, got shape {topk.shape}")
        labels = [np.asarray(y, dtype=np.int64).reshape(-1) for y in labels]
        if len(labels) != len(topk):
            raise ValueError(f"{len(topk)} predictions for {len(labels)} label lists")
        self.n += len(labels)
        if not labels:
            return
        # The batch at once: labels as a matrix padded with -2 (never an id, nor the -1 of
        # a missing prediction), hits [batch, kmax] by comparing every pair.
        sizes = np.fromiter((y.size for y in labels), np.int64, len(labels))
        width = max(int(sizes.max()), 1)
        rows = np.repeat(np.arange(len(labels)), sizes)
        cols = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        flat = np.concatenate(labels) if sizes.sum() else np.zeros(0, np.int64)
        y = np.full((len(labels), width), -2, np.int64)
        y[rows, cols] = flat
        top = topk[:, :self.kmax].astype(np.int64)
        has = sizes > 0
        hits = (top[:, :, None] == y[:, None, :]).any(axis=-1)[has]  # [labelled, kmax]
        if not hits.size:
            return
        cum = np.cumsum(hits, axis=1)
        dcg = np.cumsum(hits * self._disc, axis=1)
        idcg = np.cumsum(self._disc)
        n_labels = sizes[has]
        for i, k in enumerate(self.ks):
            self._p[i] += cum[:, k - 1].sum() / k
            self._ndcg[i] += (dcg[:, k - 1] / idcg[np.minimum(k, n_labels) - 1]).sum()
        if self.inv_p is not None:
            w = np.where(hits, self.inv_p[np.clip(top[has], 0, None)], 0.0)
            cw = np.cumsum(w, axis=1)
            weights = np.zeros((len(labels), max(width, self.kmax)))
            weights[rows, cols] = self.inv_p[flat]
            best = np.cumsum(-np.sort(-weights[has], axis=1)[:, :self.kmax], axis=1)
            for i, k in enumerate(self.ks):
                self._psp[i] += cw[:, k - 1].sum() / k
                self._psp_best[i] += best[:, k - 1].sum() / k

    def result(self) -> dict:
        n = max(self.n, 1)
        out = {}
        for i, k in enumerate(self.ks):
            out[f"p@{k}"] = float(self._p[i] / n)
        for i, k in enumerate(self.ks):
            out[f"ndcg@{k}"] = float(self._ndcg[i] / n)
        if self.inv_p is not None:
            for i, k in enumerate(self.ks):
                out[f"psp@{k}"] = float(self._psp[i] / self._psp_best[i]) \
                    if self._psp_best[i] > 0 else 0.0
        out["num_examples"] = self.n
        return out


def precision_at_k(topk, labels, k: int) -> float:
    """P@k of a set of predictions (convenience wrapper)."""
    m = RankingMetrics([k])
    m.update(topk, labels)
    return m.result()[f"p@{k}"]
