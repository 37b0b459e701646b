"""MachHead (stacked per-repetition classifiers) and the keras.ops merged top-k."""

import ast
import os

import keras
import numpy as np
import pytest

from mach_tf.inference.reference import exact_topk_numpy, topk_agree
from mach_tf.layers import MachHead, bucket_table, merged_scores, merged_topk
from tests.helpers import ROOT

#: The modules that must run under every Keras backend.
KERAS_OPS_MODULES = ("layers.py", "losses.py", "metrics.py", "classifier.py")


def encodings(n=6, d=7, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def numpy_head(head, x):
    """Repetition by repetition, from the head's weights."""
    kernels = [np.asarray(k) for k in head.kernels]
    biases = [np.asarray(b) for b in head.biases]
    out = []
    for r in range(head.num_repetitions):
        h = x @ kernels[0][r] + biases[0][r]
        for k, b in zip(kernels[1:], biases[1:]):
            h = np.maximum(h, 0.0) @ k[r] + b[r]
        out.append(h)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("hidden", [(), (5,), (6, 4)])
def test_head_shapes_and_maths(hidden):
    head = MachHead(num_buckets=8, num_repetitions=3, hidden_units=hidden, seed=1)
    x = encodings()
    out = keras.ops.convert_to_numpy(head(x))
    assert out.shape == (6, 3, 8) and out.dtype == np.float32
    assert head.compute_output_shape((None, 7)) == (None, 3, 8)
    # One stacked kernel per layer, [R, d_in, d_out].
    widths = [7, *hidden, 8]
    assert [tuple(k.shape) for k in head.kernels] == \
        [(3, i, o) for i, o in zip(widths[:-1], widths[1:])]
    np.testing.assert_allclose(out, numpy_head(head, x), rtol=1e-5, atol=1e-5)


def test_repetitions_are_independent():
    head = MachHead(num_buckets=8, num_repetitions=3, hidden_units=(5,), seed=2)
    x = encodings()
    before = keras.ops.convert_to_numpy(head(x))
    # The repetitions start from different weights ...
    assert not np.allclose(np.asarray(head.kernels[0])[0], np.asarray(head.kernels[0])[1])
    for var in (*head.kernels, *head.biases):
        value = np.asarray(var).copy()
        value[0] += 0.5  # ... and changing repetition 0 everywhere ...
        var.assign(value)
    after = keras.ops.convert_to_numpy(head(x))
    # ... changes only repetition 0's logits.
    assert not np.allclose(after[:, 0], before[:, 0])
    np.testing.assert_array_equal(after[:, 1:], before[:, 1:])


def test_initialisation_is_seeded_and_glorot_per_repetition():
    a, b, c = (MachHead(64, 4, hidden_units=(32,), seed=s) for s in (3, 3, 4))
    for head in (a, b, c):
        head.build((None, 16))
    np.testing.assert_array_equal(np.asarray(a.kernels[0]), np.asarray(b.kernels[0]))
    assert not np.allclose(np.asarray(a.kernels[0]), np.asarray(c.kernels[0]))
    limit = np.sqrt(6.0 / (16 + 32))  # one repetition's fans, not R times them
    kernel = np.asarray(a.kernels[0])
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit


def test_dropout_only_when_training():
    head = MachHead(8, 2, hidden_units=(16,), dropout=0.5, seed=0)
    x = encodings()
    inference = keras.ops.convert_to_numpy(head(x))
    np.testing.assert_array_equal(inference, keras.ops.convert_to_numpy(head(x, training=False)))
    assert not np.allclose(keras.ops.convert_to_numpy(head(x, training=True)), inference)


def test_head_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_buckets"):
        MachHead(1, 3)
    with pytest.raises(ValueError, match="dropout"):
        MachHead(8, 3, dropout=1.0)


def test_head_config_round_trip():
    head = MachHead(8, 3, hidden_units=(5,), dropout=0.25, seed=9, name="h")
    x = encodings()
    head(x)
    config = head.get_config()
    assert {k: config[k] for k in ("num_buckets", "num_repetitions", "hidden_units",
                                   "dropout", "seed")} == \
        {"num_buckets": 8, "num_repetitions": 3, "hidden_units": [5], "dropout": 0.25,
         "seed": 9}
    clone = MachHead.from_config(config)
    assert clone.get_config() == config
    clone(x)
    clone.set_weights(head.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x)),
                                  keras.ops.convert_to_numpy(head(x)))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    assert isinstance(restored, MachHead) and restored.get_config() == config


def test_head_keras_save_and_load(tmp_path):
    inputs = keras.Input((7,))
    model = keras.Model(inputs, MachHead(8, 3, hidden_units=(5,), seed=4)(inputs))
    x = encodings()
    path = str(tmp_path / "head.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def softmax_np(logits):
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))


def test_merged_topk_equals_numpy_reference():
    rng = np.random.default_rng(5)
    num_k, num_b, num_r = 60, 8, 3
    table = bucket_table(num_k, num_b, num_r, seed=2)
    logits = rng.normal(scale=2.0, size=(10, num_r, num_b)).astype(np.float32)
    scores, ids = merged_topk(logits, table, 7)
    ref_scores, ref_ids = exact_topk_numpy(softmax_np(logits), table, 7)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ids), ref_ids)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scores), ref_scores, rtol=1e-6)
    # The merged scores are the mean over R of each class's bucket probability.
    probs = softmax_np(logits)
    expected = np.mean([probs[:, r, table[r]] for r in range(num_r)], axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(merged_scores(logits, table)),
                               expected, rtol=1e-5)


def test_merged_topk_pads_beyond_k_classes():
    table = bucket_table(4, 2, 2, seed=0)
    logits = np.random.default_rng(0).normal(size=(3, 2, 2)).astype(np.float32)
    scores, ids = (keras.ops.convert_to_numpy(t) for t in merged_topk(logits, table, 6))
    assert ids.shape == scores.shape == (3, 6)
    assert (ids[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all()
    assert sorted(ids[0, :4].tolist()) == [0, 1, 2, 3]
    ref_scores, ref_ids = exact_topk_numpy(softmax_np(logits), table, 6)
    assert topk_agree(ids, scores, ref_ids, ref_scores)


@pytest.mark.parametrize("module", KERAS_OPS_MODULES)
def test_keras_ops_modules_use_no_tensorflow(module):
    """What runs under every backend imports no TensorFlow and calls no ``tf.``."""
    with open(os.path.join(ROOT, "mach_tf", module), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m and m.split(".")[0] == "tensorflow"]
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "tf"]
