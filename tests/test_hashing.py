"""Hashing: pinned golden values, numpy == TensorFlow, uniformity, the inverted index."""

import numpy as np
import pytest
import tensorflow as tf

from mach_tf.hashing import PRIME, HashFamily

CLASSES = [0, 1, 2, 999_999, 123_456_789, PRIME - 1]


def test_golden_values():
    """Pins the seeded draw and the function: changing either breaks every saved run."""
    f = HashFamily.from_seed(3, 1000, seed=42)
    assert f.a == (2064928224, 545970219, 1178259520)
    assert f.b == (2026646384, 178277913, 132401546)
    assert f.buckets_np(CLASSES).tolist() == [
        [384, 961, 538, 781, 341, 807],
        [913, 132, 351, 355, 75, 341],
        [546, 66, 939, 183, 827, 673]]


def test_matches_exact_python_integers():
    f = HashFamily.from_seed(5, 777, seed=9)
    got = f.buckets_np(CLASSES)
    for r in range(5):
        assert got[r].tolist() == [((f.a[r] * c + f.b[r]) % PRIME) % 777 for c in CLASSES]


def test_tensorflow_equals_numpy():
    f = HashFamily.from_seed(4, 4096, seed=1)
    classes = np.concatenate([np.array(CLASSES), np.random.default_rng(0).integers(
        0, PRIME, 5000)])
    np.testing.assert_array_equal(f.buckets_tf(tf.constant(classes)).numpy(),
                                  f.buckets_np(classes))
    # any rank, any subset of repetitions
    c2 = classes[:12].reshape(3, 4)
    np.testing.assert_array_equal(f.buckets_tf(c2, [2, 0]).numpy(),
                                  f.buckets_np(c2, [2, 0]))


def test_uniform_and_independent():
    k, b = 200_000, 64
    f = HashFamily.from_seed(2, b, seed=7)
    t = f.table(k)
    for r in range(2):
        counts = np.bincount(t[r], minlength=b)
        chi2 = np.sum((counts - k / b) ** 2 / (k / b))
        assert chi2 < 2 * b  # chi-square with b-1 dof: mean ~b, far below 2b
    # two repetitions collide on a class pair about 1/B of the time, not systematically
    pairs = np.random.default_rng(1).integers(0, k, size=(20000, 2))
    same0 = t[0, pairs[:, 0]] == t[0, pairs[:, 1]]
    same1 = t[1, pairs[:, 0]] == t[1, pairs[:, 1]]
    assert abs(same0.mean() - 1 / b) < 0.01
    assert (same0 & same1).mean() < 3 / b**2 + 1e-3


def test_inverted_index_is_the_table_inverted():
    f = HashFamily.from_seed(3, 32, seed=3)
    k = 1000
    table = f.table(k)
    offsets, classes = f.inverted_index(k)
    assert offsets.shape == (3, 33) and classes.shape == (3, k)
    for r in range(3):
        for bucket in range(32):
            members = classes[r, offsets[r, bucket]:offsets[r, bucket + 1]]
            assert members.tolist() == np.nonzero(table[r] == bucket)[0].tolist()


def test_round_trip_and_validation():
    f = HashFamily.from_seed(3, 100, seed=0)
    assert HashFamily.from_dict(f.to_dict()) == f
    with pytest.raises(ValueError, match="out of range"):
        HashFamily((0,), (1,), 10)
    with pytest.raises(ValueError, match="num_buckets"):
        HashFamily((1,), (1,), 0)
