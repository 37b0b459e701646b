"""Per-feature weights learned from the training data (tf-idf's idf).

The weights become a non-trainable variable of every repetition's input layer
(:class:`mach_tf.model.layers.SparseDense`), so the saved repetitions, the exported SavedModel and
TensorFlow Serving all apply them; they are computed once per run from the training side
of the split and kept in ``RUN/feature_weights.npy`` so that every group and every worker
uses the very same values.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mach_tf import rundir
from mach_tf.config import MachConfig
from tfrecords_tools.dataset import make_dataset


def document_frequencies(data, num_features: int, record_filter=None) -> tuple[np.ndarray, int]:
    """``(df [D], N)``: in how many of the N examples each feature is non-zero."""
    df = np.zeros(num_features, dtype=np.int64)
    n = 0
    for batch in make_dataset(data, 8192, record_filter=record_filter):
        ids, vals = batch["feature_ids"], batch["feature_values"]
        nz = vals.flat_values.numpy() != 0
        rows = ids.value_rowids().numpy()[nz]
        cols = ids.flat_values.numpy()[nz]
        # A feature repeated within one example counts once.
        pairs = np.unique(rows * num_features + cols)
        df += np.bincount(pairs % num_features, minlength=num_features)[:num_features]
        n += int(ids.nrows())
    return df, n


def idf_weights(df: np.ndarray, num_examples: int) -> np.ndarray:
    """Smoothed inverse document frequency ``log((1 + N) / (1 + df_j)) + 1`` (>= 1).

    The smoothing keeps every weight finite and positive: a feature never seen in training
    gets the largest weight, one present in every example weight 1 (not 0), so dense
    numeric features keep their values.
    """
    df = np.asarray(df, np.float64)
    return (np.log((1.0 + num_examples) / (1.0 + df)) + 1.0).astype(np.float32)


def run_feature_weights(run: str, config: MachConfig, train: str,
                        record_filter=None) -> np.ndarray | None:
    """The run's feature weights (computed and saved on first use), or ``None`` for
    ``feature_weighting="none"``."""
    if config.feature_weighting == "none":
        return None
    path = rundir.feature_weights_path(run)
    if tf.io.gfile.exists(path):
        return rundir.load_array(path)
    df, n = document_frequencies(train, config.num_features, record_filter)
    weights = idf_weights(df, n)
    rundir.save_array(path, weights)
    return weights
