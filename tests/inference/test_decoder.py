"""Merged-average decoding: exact and candidate decoders against independent numpy
references, candidates against exact, and the Keras layer that holds their tables."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.hashing import HashFamily
from mach_tf.inference.decoder import (AUTO_EXACT_MAX_CLASSES, MergedTopK, candidate_index,
                                       candidate_topk, exact_topk, resolve_decoder)
from mach_tf.inference.reference import candidate_topk_numpy, exact_topk_numpy, merged_topk_numpy
from mach_tf.inference.scorer import MergedScorer
from mach_tf.model.network import build_model


def random_scores(rng, batch, r, b):
    z = rng.normal(size=(batch, r, b)).astype(np.float32) * 3
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def setup():
    c = MachConfig.from_data(500, 30, num_buckets=16, num_repetitions=4, seed=5)
    return c, c.hash_family


def _candidates(fam, num_classes, s, m, k):
    index = candidate_index(fam, num_classes)
    out = candidate_topk(tf.constant(s), index["offsets"], index["classes"],
                         index["class_slots"], m, k)
    return out[0].numpy(), out[1].numpy(), index


def _same_topk(ids_a, s_a, ids_b, s_b):
    """Same scores, and the same classes except for the order among exact ties."""
    np.testing.assert_array_equal(s_a, s_b)
    for ia, ib, s in zip(ids_a, ids_b, s_a):
        strict = s > s[-1]
        assert set(ia[strict].tolist()) == set(ib[strict].tolist())
        assert len(set(ia[ia >= 0].tolist())) == int((ia >= 0).sum())  # no repeats


def test_candidate_index_is_the_hash_inverted():
    fam = HashFamily.from_seed(3, 32, seed=3)
    k = 1000
    index = candidate_index(fam, k)
    table = fam.table(k)
    np.testing.assert_array_equal(index["class_slots"], table.T + np.arange(3) * 32)
    assert index["offsets"].shape == (3 * 32 + 1,) and index["offsets"][-1] == 3 * k
    for r in range(3):
        for bucket in range(32):
            g = r * 32 + bucket
            members = index["classes"][index["offsets"][g]:index["offsets"][g + 1]]
            assert members.tolist() == np.nonzero(table[r] == bucket)[0].tolist()


def test_exact_matches_numpy(setup):
    c, fam = setup
    s = random_scores(np.random.default_rng(0), 5, 4, 16)
    table = fam.table(c.num_classes)
    got_s, got_i = exact_topk(tf.constant(s), tf.constant(table), 7)
    ref_s, ref_i = merged_topk_numpy(s, table, 7)
    np.testing.assert_array_equal(got_s.numpy(), ref_s)
    np.testing.assert_array_equal(got_i.numpy(), ref_i)
    # the numpy reference itself: the mean of the R bucket scores, computed naively
    naive = np.mean([s[:, r, table[r]] for r in range(4)], axis=0)
    np.testing.assert_allclose(ref_s, np.sort(naive, axis=1)[:, ::-1][:, :7], rtol=1e-6)


@pytest.mark.parametrize("num_classes, b, r, m, k, batch", [
    (500, 16, 4, 2, 5, 7),       # few buckets per repetition
    (3000, 64, 4, 5, 40, 3),     # k * R > 128: de-duplication by sorting
    (37, 64, 3, 5, 5, 2),        # fewer classes than buckets: empty buckets
    (20000, 256, 8, 3, 10, 4),
])
def test_candidates_match_numpy_reference(num_classes, b, r, m, k, batch):
    fam = HashFamily.from_seed(r, b, seed=1)
    s = random_scores(np.random.default_rng(num_classes), batch, r, b)
    s[0, :, : b // 2] = s[0, 0, 0]  # ties between buckets and between classes
    got_s, got_i, index = _candidates(fam, num_classes, s, m, k)
    ref_s, ref_i = candidate_topk_numpy(s, index, m, k)
    assert got_i.shape == (batch, k) and got_i.dtype == np.int64
    _same_topk(got_i, got_s, ref_i, ref_s)


def test_candidates_with_all_buckets_equal_exact(setup):
    c, fam = setup
    s = random_scores(np.random.default_rng(1), 6, 4, 16)
    ref_s, ref_i = exact_topk_numpy(s, fam.table(c.num_classes), 5)
    got_s, got_i, _ = _candidates(fam, c.num_classes, s, m=16, k=5)
    # bit for bit: the same float32 sums in the same order as the exact decoder
    np.testing.assert_array_equal(got_s, ref_s)
    _same_topk(got_i, got_s, ref_i, ref_s)


def test_candidates_score_exactly_and_never_repeat(setup):
    c, fam = setup
    s = random_scores(np.random.default_rng(2), 8, 4, 16)
    got_s, got_i, _ = _candidates(fam, c.num_classes, s, m=2, k=5)
    table = fam.table(c.num_classes)
    exact_s, exact_i = exact_topk(tf.constant(s), tf.constant(table), c.num_classes)
    exact_of = [dict(zip(i.tolist(), v.tolist()))
                for i, v in zip(exact_i.numpy(), exact_s.numpy())]
    for row in range(8):
        ids = got_i[row]
        assert len(set(ids.tolist())) == 5
        assert got_s[row].tolist() == [exact_of[row][i] for i in ids]
        # every returned class lies in a top-2 bucket of at least one repetition
        top2 = np.argsort(-s[row], axis=1)[:, :2]
        assert all(any(table[r, cls] in top2[r] for r in range(4)) for cls in ids)


def test_candidates_pad_when_too_few(setup):
    c, fam = setup
    s = random_scores(np.random.default_rng(3), 2, 4, 16)
    got_s, got_i, _ = _candidates(fam, c.num_classes, s, m=1, k=c.num_classes)
    # R * (one bucket of ~K/B classes) < K candidates: the rest is padding
    n = (got_i >= 0).sum(axis=1)
    assert (n < c.num_classes).all() and (n > 0).all()
    for row in range(2):
        assert (got_i[row, n[row]:] == -1).all()
        assert np.isneginf(got_s[row, n[row]:]).all()
        assert np.isfinite(got_s[row, :n[row]]).all()


def test_empty_batch(setup):
    c, fam = setup
    s = np.zeros((0, 4, 16), np.float32)
    assert _candidates(fam, c.num_classes, s, 3, 5)[1].shape == (0, 5)
    assert exact_topk(tf.constant(s), tf.constant(fam.table(c.num_classes)), 5)[1].shape \
        == (0, 5)


def test_scorer_runs_the_model(setup):
    c, _ = setup
    model = build_model(c, range(c.num_repetitions))
    x = {"feature_ids": tf.constant([[1, 2, -1]], tf.int64),
         "feature_values": tf.constant([[1.0, 1.0, 0.0]])}
    exact = MergedScorer(c, model, "exact").topk(x, 5)
    cand = MergedScorer(c, model, "candidates", candidate_buckets=16).topk(x, 5)
    np.testing.assert_array_equal(exact[0].numpy(), cand[0].numpy())
    with pytest.raises(ValueError, match="candidate_buckets"):
        MergedScorer(c, model, "candidates", candidate_buckets=0)


def test_resolve_decoder():
    assert resolve_decoder("auto", 1000) == "exact"
    assert resolve_decoder("auto", AUTO_EXACT_MAX_CLASSES) == "exact"
    assert resolve_decoder("auto", AUTO_EXACT_MAX_CLASSES + 1) == "candidates"
    assert resolve_decoder("exact", 10_000_000) == "exact"
    with pytest.raises(ValueError):
        resolve_decoder("fast", 10)


@pytest.mark.parametrize("decoder", ["exact", "candidates"])
def test_topk_layer_equals_the_decoders_and_holds_its_tables(setup, decoder):
    c, fam = setup
    s = random_scores(np.random.default_rng(4), 6, 4, 16)
    layer = MergedTopK(c.num_classes, c.hashing, k=5, decoder=decoder, candidate_buckets=3)
    got_s, got_i = (t.numpy() for t in layer(tf.constant(s)))
    if decoder == "exact":
        ref_s, ref_i = exact_topk_numpy(s, fam.table(c.num_classes), 5)
        assert [w.name for w in layer.weights] == ["class_to_bucket"]
    else:
        ref_s, ref_i = candidate_topk_numpy(s, candidate_index(fam, c.num_classes), 3, 5)
        assert sorted(w.name for w in layer.weights) == ["bucket_classes", "bucket_offsets",
                                                         "class_slots"]
    _same_topk(got_i, got_s, ref_i, ref_s)
    assert not layer.trainable_weights
    # another k per call
    assert layer(tf.constant(s), k=2)[1].shape == (6, 2)


@pytest.mark.parametrize("decoder", ["exact", "candidates"])
def test_topk_layer_keras_round_trip(tmp_path, setup, decoder):
    """Saved in a .keras model and loaded back, the layer gives the same answers (tables
    restored from the saved weights, not recomputed)."""
    c, _ = setup
    inputs = keras.Input((4, 16))
    layer = MergedTopK(c.num_classes, c.hashing, k=5, decoder=decoder, candidate_buckets=3)
    model = keras.Model(inputs, layer(inputs))
    path = str(tmp_path / "topk.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    s = random_scores(np.random.default_rng(7), 3, 4, 16)
    for a, b in zip(model(s), loaded(s)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    again = MergedTopK.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()


def test_topk_layer_refuses_bad_arguments(setup):
    c, _ = setup
    with pytest.raises(ValueError, match="candidate_buckets must be >= 1"):
        MergedTopK(c.num_classes, c.hashing, candidate_buckets=0, decoder="candidates")
    with pytest.raises(ValueError, match="k must be >= 1"):
        MergedTopK(c.num_classes, c.hashing, k=0)
    with pytest.raises(ValueError, match="decoder must be exact, candidates or auto"):
        MergedTopK(c.num_classes, c.hashing, decoder="beam")
