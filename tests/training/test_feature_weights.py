"""tf-idf feature weighting: the idf by hand, the layer's maths, saving and serving it."""

import math
import os

import keras
import numpy as np
import pytest

from mach_tf.model.layers import SparseDense
from mach_tf.model.network import build_model, split, stack
from mach_tf.training.feature_weights import document_frequencies, idf_weights, run_feature_weights
from tfrecords_tools.convert import convert


@pytest.fixture
def small_data(tmp_path):
    # 4 points; feature 0 in all, 1 in two (twice in one line is not allowed by the
    # format, so df counts points), 2 in one, 3 in none.
    text = "4 5 3\n0 0:1 1:2\n1 0:1 2:1\n2 0:3 1:1\n0,1 0:1\n"
    path = tmp_path / "small.txt"
    path.write_text(text)
    prefix = str(tmp_path / "tfr" / "small")
    convert(str(path), prefix)
    return prefix


def test_document_frequencies_and_idf_by_hand(small_data):
    df, n = document_frequencies(small_data, 5)
    assert n == 4 and df.tolist() == [4, 2, 1, 0, 0]
    w = idf_weights(df, n)
    expected = [math.log(5 / (1 + d)) + 1 for d in (4, 2, 1, 0, 0)]
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert w[0] == pytest.approx(1.0)  # a feature of every point keeps its value


def test_idf_ignores_held_out_points(small_data):
    import tensorflow as tf

    # Keep only records without feature 2 (a stand-in for the training side of a split).
    def keep(serialized):
        ex = tf.io.parse_single_example(
            serialized, {"feature_ids": tf.io.VarLenFeature(tf.int64)})
        return tf.logical_not(tf.reduce_any(tf.equal(ex["feature_ids"].values, 2)))

    df, n = document_frequencies(small_data, 5, keep)
    assert n == 3 and df.tolist() == [3, 2, 0, 0, 0]


def test_run_feature_weights_are_computed_once(tmp_path, small_data, tiny_config):
    config = tiny_config.replace(num_features=5, feature_weighting="idf")
    run = str(tmp_path / "run")
    w = run_feature_weights(run, config, small_data)
    assert os.path.exists(os.path.join(run, "feature_weights.npy"))
    # A later call reads the saved weights (it does not recount).
    np.save(os.path.join(run, "feature_weights.npy"), np.full(5, 7.0, np.float32))
    assert run_feature_weights(run, config, small_data).tolist() == [7.0] * 5
    assert w.shape == (5,)
    assert run_feature_weights(run, config.replace(feature_weighting="none"), small_data) \
        is None


def test_sparse_dense_applies_weights_before_l2():
    layer = SparseDense(6, 3, groups=2, activation="linear", normalize="l2", weighting="idf")
    layer.build(None)
    weights = np.array([1.0, 2.0, 0.5, 3.0, 1.0, 1.0], np.float32)
    layer.set_feature_weights(weights)
    ids = np.array([[0, 1, -1], [3, 2, 5]])
    vals = np.array([[1.0, 1.0, 0.0], [2.0, 4.0, 1.0]], np.float32)
    out = layer(ids, vals).numpy()
    dense = np.zeros((2, 6), np.float32)
    for i in range(2):
        for j, v in zip(ids[i], vals[i]):
            if j >= 0:
                dense[i, j] = v * weights[j]
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    expected = (dense @ np.concatenate(layer.kernel_blocks(), axis=1)
                + np.asarray(layer.bias)).reshape(2, 2, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        layer.set_feature_weights(np.ones(5))
    plain = SparseDense(6, 3)
    plain.build(None)
    with pytest.raises(ValueError, match="no feature weights"):
        plain.set_feature_weights(weights)


def test_weighted_layer_serialization_round_trip(tmp_path):
    layer = SparseDense(6, 3, groups=2, weighting="idf", seeds=[4, 5])
    layer.build(None)
    layer.set_feature_weights(np.arange(1, 7, dtype=np.float32))
    inp_ids = keras.Input((3,), dtype="int64")
    inp_vals = keras.Input((3,), dtype="float32")
    model = keras.Model([inp_ids, inp_vals], layer(inp_ids, inp_vals))
    path = str(tmp_path / "layer.keras")
    model.save(path)
    back = keras.saving.load_model(path, safe_mode=True)
    ids = np.array([[0, 5, -1]])
    vals = np.array([[1.0, 2.0, 0.0]], np.float32)
    np.testing.assert_allclose(back([ids, vals]).numpy(), model([ids, vals]).numpy(),
                               rtol=1e-6)
    cfg = back.layers[-1].get_config()
    assert cfg["weighting"] == "idf"
    np.testing.assert_array_equal(np.asarray(back.layers[-1].feature_weights),
                                  np.arange(1, 7))


def test_model_round_trip_split_and_stack_keep_weights(tmp_path, tiny_config):
    config = tiny_config.replace(feature_weighting="idf")
    model = build_model(config, [0, 1])
    w = np.linspace(1, 3, config.num_features).astype(np.float32)
    model.sparse_input.set_feature_weights(w)
    path = str(tmp_path / "m.keras")
    model.save(path)
    back = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(back.sparse_input.feature_weights), w)
    parts = split(back)
    for p in parts:
        np.testing.assert_array_equal(np.asarray(p.sparse_input.feature_weights), w)
    np.testing.assert_array_equal(np.asarray(stack(parts).sparse_input.feature_weights), w)
    other = split(build_model(config, [2]))[0]  # weights still all 1
    with pytest.raises(ValueError, match="feature weights"):
        stack(parts + [other])
