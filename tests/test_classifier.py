"""MachClassifier: any Keras encoder with a MACH head, fit on class ids, merged top-k,
``.keras`` round trip, tf.data input, and the same script under the other Keras backends."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import mach_tf
from mach_tf.classifier import MachClassifier
from mach_tf.config import default_buckets, default_head_repetitions
from mach_tf.inference.reference import exact_topk_numpy
from mach_tf.layers import MachHead, bucket_table
from mach_tf.losses import MachLoss
from mach_tf.metrics import MergedNDCGAtK, MergedPrecisionAtK
from tests.helpers import ROOT

K, DIM = 200, 32


def clustered(rng, centers, n, noise=0.6):
    """Each example a noisy copy of its class's centre; labels ``[n, 1]``."""
    y = rng.integers(0, len(centers), n)
    x = centers[y] + noise * rng.normal(size=(n, centers.shape[1]))
    return x.astype(np.float32), y.reshape(-1, 1).astype(np.int64)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(K, DIM))
    x, y = clustered(rng, centers, 4000)
    x_test, y_test = clustered(rng, centers, 500)
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


def make_encoder():
    return keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(64, activation="relu")],
                            name="encoder")


@pytest.fixture(scope="module")
def trained(data):
    keras.utils.set_random_seed(0)
    model = MachClassifier(make_encoder(), K, seed=3)
    model.compile(metrics=model.merged_metrics(1))
    history = model.fit(data["x"], data["y"], epochs=5, batch_size=64, verbose=0)
    return model, history


def p_at_1(ids, y):
    return float(np.mean(ids[:, 0] == y[:, 0]))


def test_head_repetitions_keep_the_head_a_fifth_of_a_softmax():
    assert default_head_repetitions(100_000, 4096) == 4  # 6.1x fewer outputs than K
    assert default_head_repetitions(1_000_000, 8192) == 8  # train's R where it fits
    assert default_head_repetitions(5_000, 1024) == 4  # at least 4
    assert default_head_repetitions(80_000, 1024) == 12  # train's R: 15 would fit
    assert default_head_repetitions(80_000, 2048) == 7  # R * B <= K / 5


def test_defaults_follow_mach_tf_train():
    model = MachClassifier(make_encoder(), K)
    assert model.num_buckets == default_buckets(K) and \
        model.num_repetitions == default_head_repetitions(K, model.num_buckets)
    assert isinstance(model.head, MachHead)
    assert (model.head.num_buckets, model.head.num_repetitions) == \
        (model.num_buckets, model.num_repetitions)
    np.testing.assert_array_equal(model.table, bucket_table(K, model.num_buckets,
                                                            model.num_repetitions, 0))
    assert mach_tf.MachClassifier is MachClassifier
    model.compile()
    assert isinstance(model.loss, MachLoss)
    assert not model.metrics_names or model.metrics_names == ["loss"]  # no per-step ranking
    assert model.loss.get_config()["num_buckets"] == model.num_buckets
    assert isinstance(model.optimizer, keras.optimizers.Adam)


def test_fit_learns_well_above_chance(data, trained):
    model, history = trained
    losses = history.history["loss"]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert history.history["p@1"][-1] > 0.5  # the merged metric, on training data
    ids, scores = model.predict_topk(data["x_test"], k=5)
    assert ids.shape == scores.shape == (500, 5)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert p_at_1(ids, data["y_test"]) > 0.5  # chance is 1/K = 0.005
    assert (np.diff(scores, axis=1) <= 0).all()


def test_predict_topk_is_the_merged_topk_of_the_logits(data, trained):
    model, _ = trained
    ids, scores = model.predict_topk(data["x_test"], k=5, batch_size=64)
    logits = model.predict(data["x_test"], verbose=0)
    assert logits.shape == (500, model.num_repetitions, model.num_buckets)
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    ref_scores, ref_ids = exact_topk_numpy(probs, model.table, 5)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


def test_keras_save_and_load(tmp_path, data, trained):
    model, _ = trained
    path = str(tmp_path / "mach.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, MachClassifier)
    # Equal as JSON (the file's form; the encoder's shapes come back as lists, not tuples).
    assert json.dumps(loaded.get_config(), sort_keys=True) == \
        json.dumps(model.get_config(), sort_keys=True)
    for got, want in zip(loaded.predict_topk(data["x_test"], k=5),
                         model.predict_topk(data["x_test"], k=5)):
        np.testing.assert_array_equal(got, want)
    # Compiled as saved: the same loss and merged metric on the same data.
    assert isinstance(loaded.loss, MachLoss)
    got = loaded.evaluate(data["x_test"], data["y_test"], verbose=0, return_dict=True)
    want = model.evaluate(data["x_test"], data["y_test"], verbose=0, return_dict=True)
    assert got.keys() == want.keys() and "p@1" in got
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5)


def test_fit_on_a_dataset_with_multi_label_padding(data):
    keras.utils.set_random_seed(1)
    # A second, padded column: every other example also carries the next class.
    y = np.concatenate([data["y"], np.where(np.arange(len(data["y"]))[:, None] % 2 == 0,
                                            (data["y"] + 1) % K, -1)], axis=1)
    ds = tf.data.Dataset.from_tensor_slices((data["x"], y)).shuffle(4000, seed=0).batch(64)
    model = MachClassifier(make_encoder(), K, num_buckets=64, num_repetitions=8,
                           hidden_units=(32,), dropout=0.1, seed=5)
    args = dict(num_classes=K, num_buckets=64, num_repetitions=8, seed=5)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  metrics=[MergedPrecisionAtK(1, **args), MergedNDCGAtK(5, **args)])
    history = model.fit(ds, epochs=3, verbose=0, shuffle=False)  # ds shuffles itself
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["ndcg@5"][-1] > 0.3
    ids, scores = model.predict_topk(data["x_test"], k=5)
    assert p_at_1(ids, data["y_test"]) > 0.5
    test_ds = tf.data.Dataset.from_tensor_slices((data["x_test"], data["y_test"])).batch(50)
    ds_ids, ds_scores = model.predict_topk(test_ds, k=5)
    np.testing.assert_array_equal(ds_ids, ids)
    np.testing.assert_allclose(ds_scores, scores, rtol=1e-6)


def test_predict_topk_pads_beyond_k_classes():
    model = MachClassifier(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), 5,
                           num_buckets=2, num_repetitions=2)
    ids, scores = model.predict_topk(np.zeros((3, 4), np.float32), k=7)
    assert ids.shape == (3, 7) and (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert model.predict_topk(np.zeros((0, 4), np.float32), k=2)[0].shape == (0, 2)


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_backends(backend):
    """The head, loss, metrics and classifier in keras.ops train under each backend."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend)
    done = subprocess.run([sys.executable, os.path.join("tests", "backends", "run_backend.py")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    assert math.isfinite(result["loss"]) and result["scores_finite"]
    assert result["p@1"] > 10 * result["chance"], result
