"""Label centroids: every class's mean training input, a similarity for re-ranking.

MACH is weakest on rare classes: a class seen a handful of times shares each of its R
buckets with about K/B others, most of them more popular, and its merged score is mostly
theirs. Its training points still say where it lives in the input space. The centroid of
class c is the l2-normalised sum of the l2-normalised inputs of the training points
labelled c, and ``cos(x, centroid_c)`` is a score that needs no training and is exact for
every class however rare (a class seen once has that point's input as its centroid).

:class:`LabelCentroids` holds them sparse, transposed for lookups by feature (CSR over the
D features: each feature's classes and weights), so scoring a query costs the sum over
its non-zero features of the classes whose centroid holds that feature, never K. Each
centroid keeps at most ``max_features`` of its largest entries (then l2-normalised
again), which bounds the index by ``K * max_features`` whatever the amount of data.

:func:`label_centroids` computes them in one pass over a run's training records (the
training side of its split: held-out points never enter a centroid).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mach_tf.data import evaluation_dataset

#: Entries kept per centroid: a class's largest ``max_features`` feature weights.
DEFAULT_MAX_FEATURES = 256
#: Entries accumulated before duplicates are summed (bounds the pass's memory).
_REDUCE_EVERY = 1 << 22


def _normalised(ids: np.ndarray, values: np.ndarray, num_features: int) -> np.ndarray:
    """Row-wise l2-normalised ``values`` of padded inputs; padding (ids ``< 0``) and ids
    beyond the D features count 0."""
    v = np.where((ids >= 0) & (ids < num_features), values, 0.0).astype(np.float64)
    norm = np.sqrt((v * v).sum(axis=1, keepdims=True))
    return v / np.where(norm > 0, norm, 1.0)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``starts[i] .. starts[i] + lengths[i] - 1`` of every i, concatenated."""
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


def _reduce(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums the weights of equal keys: ``(sorted unique keys, sums)``."""
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique, np.bincount(inverse, weights=weights, minlength=len(unique))


@dataclasses.dataclass
class LabelCentroids:
    """Unit-norm label centroids in CSR over the features.

    Attributes:
        num_classes: K.
        num_features: D.
        offsets: int64 ``[D + 1]``: feature f's entries are ``offsets[f]:offsets[f + 1]``.
        classes: int32 ``[nnz]``: the class of each entry, increasing within a feature.
        weights: float32 ``[nnz]``: the centroid's value at (class, feature).
    """

    num_classes: int
    num_features: int
    offsets: np.ndarray
    classes: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_entries(cls, classes: np.ndarray, features: np.ndarray, values: np.ndarray,
                     num_classes: int, num_features: int,
                     max_features: int = DEFAULT_MAX_FEATURES) -> "LabelCentroids":
        """Centroids from summed ``(class, feature, value)`` entries, each pair at most once:
        the ``max_features`` largest entries of every class, l2-normalised."""
        if max_features < 1:
            raise ValueError(f"max_features must be >= 1, got {max_features}")
        classes = np.asarray(classes, np.int64)
        features = np.asarray(features, np.int64)
        values = np.asarray(values, np.float64)
        keep = values > 0
        classes, features, values = classes[keep], features[keep], values[keep]
        # Each class's entries, largest first (ties: the smaller feature id).
        order = np.lexsort((features, -values, classes))
        classes, features, values = classes[order], features[order], values[order]
        starts = np.searchsorted(classes, classes, side="left")
        keep = np.arange(len(classes)) - starts < max_features
        classes, features, values = classes[keep], features[keep], values[keep]
        norms = np.sqrt(np.bincount(classes, weights=values * values, minlength=num_classes))
        values = values / norms[classes]
        by_feature = np.lexsort((classes, features))
        counts = np.bincount(features, minlength=num_features)
        offsets = np.zeros(num_features + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(int(num_classes), int(num_features), offsets,
                   classes[by_feature].astype(np.int32),
                   values[by_feature].astype(np.float32))

    @property
    def num_entries(self) -> int:
        return int(len(self.classes))

    def similarity(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``cos(x, centroid_c)`` for every class: float32 ``[n, K]`` for padded inputs
        ``ids``/``values`` ``[n, L]`` (ids ``< 0`` are padding; ids beyond D hold no
        centroid entry)."""
        ids = np.asarray(ids, np.int64)
        x = _normalised(ids, np.asarray(values), self.num_features)
        n = ids.shape[0]
        rows, cols = np.nonzero(x != 0)
        feats = ids[rows, cols]
        starts, stops = self.offsets[feats], self.offsets[feats + 1]
        lengths = stops - starts
        entry = _ranges(starts, lengths)
        row = np.repeat(rows, lengths)
        contribution = np.repeat(x[rows, cols], lengths) * self.weights[entry]
        flat = row * self.num_classes + self.classes[entry]
        scores = np.bincount(flat, weights=contribution, minlength=n * self.num_classes)
        return scores.reshape(n, self.num_classes).astype(np.float32)


def label_centroids(data, num_classes: int, num_features: int, record_filter=None,
                    max_features: int = DEFAULT_MAX_FEATURES,
                    batch_size: int = 1024) -> LabelCentroids:
    """The label centroids of the records of ``data`` (a prefix or file list) that
    ``record_filter`` keeps (e.g. ``DataSplit.train_filter()``).

    Raises:
        ValueError: naming the data when a label is outside ``[0, num_classes)``.
    """
    keys = np.zeros(0, np.int64)
    sums = np.zeros(0, np.float64)
    pending_keys, pending_weights, pending = [], [], 0
    for inputs, labels in evaluation_dataset(data, batch_size, record_filter=record_filter):
        ids = inputs["feature_ids"].numpy()
        x = _normalised(ids, inputs["feature_values"].numpy(), num_features)
        label_values = labels.flat_values.numpy().astype(np.int64)
        if label_values.size and (label_values.min() < 0 or
                                  label_values.max() >= num_classes):
            raise ValueError(f"{data}: a label outside [0, {num_classes})")
        label_rows = labels.value_rowids().numpy()
        rows, cols = np.nonzero(x != 0)
        # Pair every label of a point with every feature of the same point.
        per_row = np.bincount(rows, minlength=ids.shape[0])
        starts = np.concatenate([[0], np.cumsum(per_row)])
        n_feats = per_row[label_rows]
        pair_feature = _ranges(starts[label_rows], n_feats)
        pair_class = np.repeat(label_values, n_feats)
        f_rows, f_cols = rows[pair_feature], cols[pair_feature]
        pending_keys.append(pair_class * num_features + ids[f_rows, f_cols])
        pending_weights.append(x[f_rows, f_cols])
        pending += len(pair_class)
        if pending >= _REDUCE_EVERY:
            keys, sums = _reduce(np.concatenate([keys, *pending_keys]),
                                 np.concatenate([sums, *pending_weights]))
            pending_keys, pending_weights, pending = [], [], 0
    keys, sums = _reduce(np.concatenate([keys, *pending_keys]),
                         np.concatenate([sums, *pending_weights]))
    return LabelCentroids.from_entries(keys // num_features, keys % num_features, sums,
                                       num_classes, num_features, max_features)
