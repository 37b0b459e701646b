"""The synthetic XMC generator: deterministic, power-law labels, valid XMC text."""

import numpy as np

from mach_tf.datasets.synthetic import SyntheticSpec, generate, write_xmc
from tfrecords_tools.parse import read_points


def test_deterministic_and_seed_dependent():
    spec = SyntheticSpec(num_labels=100, num_features=500, seed=1)
    a = list(generate(spec, 50, seed=0))
    assert a == list(generate(spec, 50, seed=0))
    assert a != list(generate(spec, 50, seed=1))


def test_power_law_labels():
    spec = SyntheticSpec(num_labels=2000, num_features=1000, zipf=1.0, seed=2)
    counts = np.zeros(spec.num_labels)
    for labels, _, _ in generate(spec, 4000):
        counts[labels] += 1
    freq = np.sort(counts)[::-1]
    # the head is much heavier than the tail, roughly 1/rank
    assert freq[0] > 20 * freq[199]
    assert 1.5 < freq[0] / freq[1] * 2 < 6
    assert (counts > 0).sum() > 500


def test_features_carry_label_prototypes():
    spec = SyntheticSpec(num_labels=50, num_features=5000, noise=2, keep=0.7, seed=3)
    overlaps = []
    for labels, ids, _ in generate(spec, 200):
        proto = set(spec.prototype(np.array(labels)).reshape(-1).tolist())
        overlaps.append(len(proto & set(ids)) / max(len(ids), 1))
    assert np.mean(overlaps) > 0.6


def test_writes_valid_xmc(tmp_path):
    spec = SyntheticSpec(num_labels=30, num_features=100, seed=4)
    path = write_xmc(tmp_path / "s.txt", spec, 40)
    pts = read_points(path)
    assert len(pts) == 40
    assert all(1 <= len(p.labels) and max(p.feature_ids) < 100 for p in pts)
