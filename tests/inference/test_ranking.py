"""P@k, nDCG@k and PSP@k against hand-computed values."""

import math

import numpy as np
import pytest

from mach_tf.inference.ranking import RankingMetrics, precision_at_k, propensities


def test_precision_divides_by_k():
    top = np.array([[1, 2, 3], [4, 5, 6]])
    labels = [[1, 3], [9]]
    m = RankingMetrics([1, 3])
    m.update(top, labels)
    r = m.result()
    assert r["p@1"] == pytest.approx((1 + 0) / 2)
    assert r["p@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert precision_at_k(top, labels, 3) == pytest.approx(1 / 3)


def test_ndcg_by_hand():
    top = np.array([[5, 1, 7]])
    labels = [[1, 7, 8, 9]]
    m = RankingMetrics([1, 3])
    m.update(top, labels)
    dcg3 = 1 / math.log2(3) + 1 / math.log2(4)
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    r = m.result()
    assert r["ndcg@1"] == 0.0
    assert r["ndcg@3"] == pytest.approx(dcg3 / idcg3)


def test_ndcg_ideal_uses_label_count():
    m = RankingMetrics([3])
    m.update(np.array([[4, 0, 1]]), [[4]])
    assert m.result()["ndcg@3"] == pytest.approx(1.0)


def test_points_without_labels_score_zero():
    m = RankingMetrics([1])
    m.update(np.array([[1], [1]]), [[1], []])
    assert m.result()["p@1"] == 0.5 and m.result()["num_examples"] == 2


def test_propensity_formula():
    counts = np.array([0, 1, 10, 1000])
    n = 5000
    a, b = 0.55, 1.5
    c = (math.log(n) - 1) * (b + 1) ** a
    expected = [1 / (1 + c * math.exp(-a * math.log(x + b))) for x in counts]
    np.testing.assert_allclose(propensities(counts, n), expected, rtol=1e-12)
    assert np.all(np.diff(propensities(counts, n)) > 0)  # frequent labels: higher propensity


def test_psp_by_hand():
    inv_p = np.array([1.0, 2.0, 4.0, 8.0])
    m = RankingMetrics([1, 2], inv_propensity=inv_p)
    # true labels {1, 3}; predicted [1, 0]: one hit worth 2; best achievable [3, 1]: 8, 8+2
    m.update(np.array([[1, 0]]), [[1, 3]])
    r = m.result()
    assert r["psp@1"] == pytest.approx((2 / 1) / (8 / 1))
    assert r["psp@2"] == pytest.approx((2 / 2) / (10 / 2))


def _row_by_row(topk, labels, ks, inv_p):
    """The definitions, one point at a time (what the batched update must equal)."""
    disc = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    p, ndcg, psp, best_sum = (np.zeros(len(ks)) for _ in range(4))
    for row, y in zip(topk, labels):
        if not len(y):
            continue
        hits = np.array([c in set(y) for c in row[:max(ks)]], float)
        w = np.array([inv_p[c] if c in set(y) else 0.0 for c in row[:max(ks)]])
        best = np.sort(inv_p[list(y)])[::-1]
        for i, k in enumerate(ks):
            p[i] += hits[:k].sum() / k
            ndcg[i] += (hits[:k] * disc[:k]).sum() / disc[:min(k, len(y))].sum()
            psp[i] += w[:k].sum() / k
            best_sum[i] += best[:k].sum() / k
    n = len(labels)
    return ([v / n for v in p], [v / n for v in ndcg], [a / b for a, b in zip(psp, best_sum)])


def test_batched_update_equals_the_row_by_row_definitions():
    rng = np.random.default_rng(7)
    num_labels, ks = 40, (1, 3, 5)
    inv_p = 1.0 / propensities(rng.integers(0, 50, num_labels), 500)
    topk = np.stack([rng.permutation(num_labels)[:6] for _ in range(300)])
    topk[::17, 3:] = -1  # fewer than k predictions
    labels = [sorted(rng.choice(num_labels, rng.integers(0, 8), replace=False).tolist())
              for _ in range(300)]
    m = RankingMetrics(ks, inv_propensity=inv_p)
    for start in range(0, 300, 64):  # batches of several sizes
        m.update(topk[start:start + 64], labels[start:start + 64])
    got = m.result()
    want_p, want_ndcg, want_psp = _row_by_row(topk, labels, ks, inv_p)
    for i, k in enumerate(ks):
        assert got[f"p@{k}"] == pytest.approx(want_p[i], abs=1e-12)
        assert got[f"ndcg@{k}"] == pytest.approx(want_ndcg[i], abs=1e-12)
        assert got[f"psp@{k}"] == pytest.approx(want_psp[i], abs=1e-12)
    assert got["num_examples"] == 300
