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
