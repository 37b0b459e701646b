"""The dense-head benchmark's synthetic data: shapes, determinism, labels, power law. (The
benchmark itself trains two models for minutes; it is run by hand.)"""

import numpy as np

from benchmarks.dense_head import make_data
from mach_tf.datasets.synthetic_dense import class_centres, class_probabilities, sample_points

SMALL = {"classes": 50, "dim": 16, "hidden": 8, "train": 300, "test": 40, "alpha": 1.0,
         "noise": 1.0, "epochs": 1, "batch_size": 32}


def test_the_data_has_its_shapes_unit_rows_and_labels_in_range():
    x, y, x_test, y_test = make_data(SMALL, seed=0)
    assert x.shape == (300, 16) and x.dtype == np.float32
    assert y.shape == (300,) and y.dtype == np.int64
    assert x_test.shape == (40, 16) and y_test.shape == (40,)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    assert y.min() >= 0 and y.max() < 50 and y_test.min() >= 0 and y_test.max() < 50


def test_the_data_is_determined_by_its_seed():
    a, b, c = make_data(SMALL, seed=3), make_data(SMALL, seed=3), make_data(SMALL, seed=4)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    # Train and test points differ; a set of centres gives the same points for a seed.
    assert not np.array_equal(a[0][:40], a[2])
    centres = class_centres(50, 16, seed=3)
    np.testing.assert_array_equal(centres, class_centres(50, 16, seed=3))
    for u, v in zip(sample_points(centres, 300, 7), sample_points(centres, 300, 7)):
        np.testing.assert_array_equal(u, v)


def test_labels_follow_the_power_law_and_points_sit_near_their_centre():
    p = class_probabilities(1000, 1.0)
    assert abs(p.sum() - 1.0) < 1e-12 and np.allclose(p[0] / p[9], 10.0)
    centres = class_centres(1000, 64, seed=0)
    x, y = sample_points(centres, 20000, seed=1, alpha=1.0, noise=1.0)
    counts = np.bincount(y, minlength=1000)
    # Class 0 is drawn with probability p[0] (~0.134); class 9 ten times less often.
    assert abs(counts[0] / 20000 - p[0]) < 0.01
    assert 6 < counts[0] / max(counts[9], 1) < 16
    assert counts[:10].sum() > counts[500:].sum()
    # With noise of the centre's length the own centre is still the nearest, mostly.
    nearest = np.argmax(x[:2000] @ centres.T, axis=1)
    assert (nearest == y[:2000]).mean() > 0.95
