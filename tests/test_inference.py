"""Merged-average decoding: exact against a numpy reference; candidates against exact."""

import numpy as np
import pytest
import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.inference import (MergedScorer, candidate_topk, exact_topk, merged_topk_numpy,
                               resolve_decoder)
from mach_tf.model import build_model


def random_scores(rng, batch, r, b):
    z = rng.normal(size=(batch, r, b)).astype(np.float32) * 3
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def setup():
    c = MachConfig.from_data(500, 30, num_buckets=16, num_repetitions=4, seed=5)
    return c, c.hash_family


def test_exact_matches_numpy(setup):
    c, fam = setup
    s = random_scores(np.random.default_rng(0), 5, 4, 16)
    table = fam.table(c.num_classes)
    got_s, got_i = exact_topk(tf.constant(s), tf.constant(table), 7)
    ref_s, ref_i = merged_topk_numpy(s, table, 7)
    np.testing.assert_allclose(got_s.numpy(), ref_s, rtol=1e-5)
    np.testing.assert_array_equal(got_i.numpy(), ref_i)


def _candidates(c, fam, s, m, k):
    offsets, classes = fam.inverted_index(c.num_classes)
    return candidate_topk(tf.constant(s), tf.constant(offsets),
                          tf.constant(classes.reshape(-1)), tf.constant(fam.a, tf.int64),
                          tf.constant(fam.b, tf.int64), c.num_buckets, c.num_classes, m, k,
                          fam.prime)


def test_candidates_with_all_buckets_equal_exact(setup):
    c, fam = setup
    s = random_scores(np.random.default_rng(1), 6, 4, 16)
    ref_s, ref_i = merged_topk_numpy(s, fam.table(c.num_classes), 5)
    got_s, got_i = _candidates(c, fam, s, m=16, k=5)
    np.testing.assert_allclose(got_s.numpy(), ref_s, rtol=1e-5)
    np.testing.assert_array_equal(got_i.numpy(), ref_i)


def test_candidates_score_exactly_and_never_repeat(setup):
    c, fam = setup
    s = random_scores(np.random.default_rng(2), 8, 4, 16)
    got_s, got_i = _candidates(c, fam, s, m=2, k=5)
    table = fam.table(c.num_classes)
    for row in range(8):
        ids = got_i.numpy()[row]
        assert len(set(ids.tolist())) == 5
        exact = np.mean([s[row, r, table[r, ids]] for r in range(4)], axis=0)
        np.testing.assert_allclose(got_s.numpy()[row], exact, rtol=1e-5)
        # every returned class lies in a top-2 bucket of at least one repetition
        top2 = np.argsort(-s[row], axis=1)[:, :2]
        assert all(any(table[r, cls] in top2[r] for r in range(4)) for cls in ids)


def test_candidates_pad_when_too_few(setup):
    c, fam = setup
    s = random_scores(np.random.default_rng(3), 2, 4, 16)
    big = c.num_classes + 10
    got_s, got_i = _candidates(c, fam, s, m=16, k=big)
    assert got_i.shape == (2, big)
    assert (got_i.numpy()[:, c.num_classes:] == -1).all()
    assert np.isneginf(got_s.numpy()[:, c.num_classes:]).all()


def test_empty_batch(setup):
    c, fam = setup
    s = np.zeros((0, 4, 16), np.float32)
    assert _candidates(c, fam, s, 3, 5)[1].shape == (0, 5)
    assert exact_topk(tf.constant(s), tf.constant(fam.table(c.num_classes)), 5)[1].shape \
        == (0, 5)


def test_scorer_runs_the_model(setup):
    c, _ = setup
    model = build_model(c, range(c.num_repetitions))
    x = {"feature_ids": tf.constant([[1, 2, -1]], tf.int64),
         "feature_values": tf.constant([[1.0, 1.0, 0.0]])}
    exact = MergedScorer(c, model, "exact").topk(x, 5)
    cand = MergedScorer(c, model, "candidates", candidate_buckets=16).topk(x, 5)
    np.testing.assert_array_equal(exact[1].numpy(), cand[1].numpy())


def test_resolve_decoder():
    assert resolve_decoder("auto", 1000) == "exact"
    assert resolve_decoder("auto", 10_000_000) == "candidates"
    with pytest.raises(ValueError):
        resolve_decoder("fast", 10)
