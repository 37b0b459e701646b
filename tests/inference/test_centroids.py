"""Label centroids: built from real TFRecords in one pass, checked against a brute-force
numpy reference; the training side of a carved split only; pruning; labels outside K."""

import numpy as np
import pytest

from mach_tf.inference.centroids import LabelCentroids, label_centroids
from mach_tf.training.validation import DataSplit, load_sample
from tfrecords_tools.convert import convert
from tfrecords_tools.parse import read_points


def _parse(path):
    """``(rows of {feature: value}, label lists)`` of an XMC text file."""
    points = read_points(path)
    return ([dict(zip(p.feature_ids, p.feature_values)) for p in points],
            [list(p.labels) for p in points])


def _reference(rows, labels, num_classes, num_features, max_features):
    """Dense ``[K, D]`` centroids, written the plain way."""
    total = np.zeros((num_classes, num_features))
    for row, ys in zip(rows, labels):
        x = np.zeros(num_features)
        for f, v in row.items():
            x[f] = v
        if np.linalg.norm(x) > 0:
            x /= np.linalg.norm(x)
        for y in ys:
            total[y] += x
    for c in range(num_classes):
        order = sorted(range(num_features), key=lambda f: (-total[c, f], f))
        total[c, order[max_features:]] = 0
        if np.linalg.norm(total[c]) > 0:
            total[c] /= np.linalg.norm(total[c])
    return total


def _dense(centroids: LabelCentroids) -> np.ndarray:
    out = np.zeros((centroids.num_classes, centroids.num_features))
    for f in range(centroids.num_features):
        s = slice(centroids.offsets[f], centroids.offsets[f + 1])
        out[centroids.classes[s], f] = centroids.weights[s]
    return out


@pytest.mark.parametrize("max_features", [4, 10_000])
def test_centroids_of_the_records_equal_the_plain_computation(tiny_data, tiny_spec,
                                                             max_features):
    rows, labels = _parse(tiny_data["train_txt"])
    K, D = tiny_spec.num_labels, tiny_spec.num_features
    got = label_centroids(tiny_data["train"], K, D, max_features=max_features)
    want = _reference(rows, labels, K, D, max_features)
    np.testing.assert_allclose(_dense(got), want, atol=1e-6)
    seen = sorted({y for ys in labels for y in ys})
    assert np.allclose(np.linalg.norm(_dense(got)[seen], axis=1), 1.0)
    assert got.num_entries <= K * max_features
    for f in range(D):  # classes increase within a feature
        s = got.classes[got.offsets[f]:got.offsets[f + 1]]
        assert np.all(np.diff(s) > 0)


def test_similarity_is_the_cosine_with_every_centroid(tiny_data, tiny_spec):
    K, D = tiny_spec.num_labels, tiny_spec.num_features
    centroids = label_centroids(tiny_data["train"], K, D, max_features=8)
    dense = _dense(centroids)
    ids = np.array([[3, 17, 250, -1], [-1, -1, -1, -1], [5, 5000, 40, 41]])
    values = np.array([[1.0, 2.0, 0.5, 9.0], [1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 1.0, 0.0]])
    got = centroids.similarity(ids, values)
    for i in range(len(ids)):
        x = np.zeros(D)
        for f, v in zip(ids[i], values[i]):
            if 0 <= f < D:  # padding and ids beyond D hold nothing
                x[f] += v
        x = x / max(np.linalg.norm(x), 1e-30)
        np.testing.assert_allclose(got[i], dense @ x, atol=1e-5)
    assert got.shape == (3, K) and np.all(got[1] == 0)


def test_a_carved_split_builds_its_centroids_from_the_training_side(tiny_data, tiny_spec):
    K, D = tiny_spec.num_labels, tiny_spec.num_features
    split = DataSplit(tiny_data["train"], tiny_data["train"], 0.3, seed=5)
    held = load_sample(split, 10 ** 9)
    train_side = label_centroids(split.train, K, D, split.train_filter(), max_features=10**4)
    everything = label_centroids(split.train, K, D, max_features=10 ** 4)
    rows, labels = _parse(tiny_data["train_txt"])
    held_keys = {tuple(sorted((int(f), round(float(v), 4))
                              for f, v in zip(i, vals) if f >= 0))
                 for inputs, _ in held.batches
                 for i, vals in zip(inputs["feature_ids"], inputs["feature_values"])}
    kept = [(r, y) for r, y in zip(rows, labels)
            if tuple(sorted((f, round(v, 4)) for f, v in r.items())) not in held_keys]
    assert 0 < len(rows) - len(kept) == held.num_examples
    want = _reference([r for r, _ in kept], [y for _, y in kept], K, D, 10 ** 4)
    np.testing.assert_allclose(_dense(train_side), want, atol=1e-6)
    assert not np.allclose(_dense(everything), want, atol=1e-3)


def test_a_label_outside_the_classes_is_refused_naming_the_data(tmp_path):
    txt = tmp_path / "train.txt"
    txt.write_text("2 5 10\n0,1 0:1.0 2:1.0\n7 1:1.0\n")  # 10 labels in the file
    convert(str(txt), str(tmp_path / "tfr" / "train"))
    with pytest.raises(ValueError, match=r"tfr/train.*a label outside \[0, 3\)"):
        label_centroids(str(tmp_path / "tfr" / "train"), 3, 5)
