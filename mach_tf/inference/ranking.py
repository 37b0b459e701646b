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
        for row, y in zip(topk, labels):
            self.n += 1
            y = np.asarray(y, dtype=np.int64)
            if y.size == 0:
                continue
            hits = np.isin(row[: self.kmax], y)
            cum = np.cumsum(hits)
            dcg = np.cumsum(hits * self._disc)
            idcg = np.cumsum(self._disc)
            for i, k in enumerate(self.ks):
                self._p[i] += cum[k - 1] / k
                self._ndcg[i] += dcg[k - 1] / idcg[min(k, y.size) - 1]
            if self.inv_p is not None:
                w = np.where(hits, self.inv_p[np.clip(row[: self.kmax], 0, None)], 0.0)
                cw = np.cumsum(w)
                best = np.cumsum(np.sort(self.inv_p[y])[::-1][: self.kmax])
                for i, k in enumerate(self.ks):
                    self._psp[i] += cw[k - 1] / k
                    self._psp_best[i] += best[min(k, best.size) - 1] / k

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
