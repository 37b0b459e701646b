"""export_classifier: a fitted MachClassifier as a versioned SavedModel whose signatures take
the encoder's own named inputs and answer as predict_topk does, through both loaders."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from export import ExportError, export_classifier
from export.classifier_export import encoder_inputs
from mach_tf.classifier import MachClassifier
from mach_tf.hashing import HashFamily
from mach_tf.inference.evaluation import export_info_path
from mach_tf.inference.reference import topk_agree
from tests.helpers import replay_warmup, serve_both_ways, session_run

K, DIM, TOP_K = 40, 16, 5


def clustered(n, dim=DIM, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(size=(K, dim))
    y = rng.integers(0, K, n)
    x = centers[y] + 0.5 * rng.normal(size=(n, dim))
    return x.astype(np.float32), y.reshape(-1, 1).astype(np.int64)


def fitted(encoder, x, y):
    keras.utils.set_random_seed(0)
    model = MachClassifier(encoder, K, num_buckets=8, num_repetitions=3, seed=5)
    model.compile()
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def trained():
    x, y = clustered(600)
    encoder = keras.Sequential([keras.Input((DIM,), name="features"),
                                keras.layers.Dense(32, activation="relu")], name="encoder")
    return fitted(encoder, x, y), clustered(24, seed=1)[0]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, _ = trained
    base = str(tmp_path_factory.mktemp("serving") / "mach")
    names = [f"class {i}" for i in range(K)]
    lines = []
    result = export_classifier(model, base, top_k=TOP_K, label_names=names, log=lines.append)
    return base, result, names, lines


@pytest.fixture(scope="module")
def served(exported):
    yield from serve_both_ways(exported[1].path, ["serving_default",
                                                  "serving_default_filtered"])


def test_hash_family_is_the_classifiers(trained):
    model, _ = trained
    family = HashFamily.from_seed(model.num_repetitions, model.num_buckets, model.seed)
    np.testing.assert_array_equal(family.table(K), model.table)


def test_version_directory_and_info(exported):
    base, result, _, lines = exported
    assert result.version == 1 and result.path == os.path.join(base, "1")
    assert os.path.isfile(os.path.join(result.path, "saved_model.pb"))
    assert sorted(os.listdir(base)) == ["1"]  # no staging directory left behind
    assert result.verified_queries > 0 and lines
    with open(export_info_path(result.path)) as f:
        info = json.load(f)
    assert (info["num_classes"], info["num_buckets"], info["num_repetitions"], info["seed"]) \
        == (K, 8, 3, 5)
    assert info["top_k"] == TOP_K and info["decoder"] == "exact"
    assert info["signatures"] == ["serving_default", "serving_default_filtered"]


def test_signature_takes_the_encoders_named_input(exported):
    path = exported[1].path
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
    sig = meta.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert set(sig.inputs) == {"features"}
    assert [d.size for d in sig.inputs["features"].tensor_shape.dim] == [-1, DIM]
    assert set(sig.outputs) == {"label_ids", "scores", "labels"}
    assert set(meta.signature_def["serving_default_filtered"].inputs) == \
        {"features", "exclude_ids", "restrict_ids", "top_k"}


@pytest.mark.parametrize("loader", ["saved_model.load", "session"])
def test_answers_equal_predict_topk_with_names(trained, exported, served, loader):
    model, x = trained
    names = exported[2]
    ids, scores = model.predict_topk(x, TOP_K)
    out = served(loader, "serving_default", {"features": x})
    assert out["label_ids"].dtype == np.int64 and out["scores"].dtype == np.float32
    assert topk_agree(out["label_ids"], out["scores"], ids, scores)
    assert [b.decode() for b in out["labels"][0]] == [names[i] for i in out["label_ids"][0]]


def test_filtered_twin_excludes_ids(trained, served):
    model, x = trained
    ids, _ = model.predict_topk(x, TOP_K)
    exclude = ids[:, :2]
    out = served("session", "serving_default_filtered",
                 {"features": x, "exclude_ids": exclude,
                  "restrict_ids": np.full((len(x), 1), -1, np.int64), "top_k": np.int32(3)})
    assert out["label_ids"].shape == (len(x), 3)
    assert not any(np.isin(row, banned).any() for row, banned in zip(out["label_ids"], exclude))
    np.testing.assert_array_equal(out["label_ids"][:, 0], ids[:, 2])


def test_warmup_replays(exported):
    seen = replay_warmup(exported[1].path, top_k=TOP_K)
    assert seen == {"serving_default": [1, 2, 4], "serving_default_filtered": [1, 2, 4]}


def test_second_export_is_version_two_and_taken_version_refused(trained, exported):
    model, _ = trained
    base = exported[0]
    again = export_classifier(model, base, top_k=TOP_K, verify=False, warmup=False)
    assert again.version == 2 and os.path.isdir(os.path.join(base, "2"))
    with pytest.raises(ExportError, match="already exists"):
        export_classifier(model, base, version=1, verify=False, warmup=False)


def test_two_named_inputs(tmp_path):
    query = keras.Input((10,), name="query")
    context = keras.Input((6,), name="context")
    hidden = keras.layers.Dense(32, activation="relu")(
        keras.layers.Concatenate()([query, context]))
    encoder = keras.Model({"query": query, "context": context}, hidden, name="two_towers")
    x, y = clustered(400)
    model = fitted(encoder, {"query": x[:, :10], "context": x[:, 10:]}, y)
    _, specs = encoder_inputs(encoder)
    assert {k: s.shape.as_list() for k, s in specs.items()} == \
        {"query": [None, 10], "context": [None, 6]}
    result = export_classifier(model, str(tmp_path / "two"), top_k=3, warmup=False)
    x_test = clustered(8, seed=2)[0]
    feeds = {"query": x_test[:, :10], "context": x_test[:, 10:]}
    out = session_run(result.path, "serving_default", feeds)
    ids, scores = model.predict_topk(feeds, 3)
    assert topk_agree(out["label_ids"], out["scores"], ids, scores)


def test_encoder_without_inputs_is_refused(tmp_path):
    model = MachClassifier(keras.layers.Dense(8), K, num_buckets=8, num_repetitions=2)
    model.build((None, DIM))  # a bare layer as the encoder: no keras.Input to name inputs
    with pytest.raises(ExportError, match="keras.Input"):
        export_classifier(model, str(tmp_path / "none"))
    assert not os.path.exists(tmp_path / "none" / "1")


def test_mismatch_fails_and_leaves_no_version(trained, tmp_path, monkeypatch):
    model, _ = trained
    real = MachClassifier.predict_topk

    def shifted(self, x, k=5, batch_size=256):  # an in-Python answer the graph won't give
        ids, scores = real(self, x, k, batch_size)
        return (ids + 1) % K, scores

    monkeypatch.setattr(MachClassifier, "predict_topk", shifted)
    base = tmp_path / "bad"
    with pytest.raises(ExportError, match="differs from the in-Python"):
        export_classifier(model, str(base), top_k=TOP_K)
    assert not base.exists() or os.listdir(base) == []


def test_candidate_decoder_with_a_given_sample(trained, tmp_path):
    model, x = trained
    result = export_classifier(model, str(tmp_path / "cand"), top_k=TOP_K, decoder="candidates",
                               candidate_buckets=2, warmup=False, sample={"features": x})
    assert result.decoder == "candidates" and result.verified_queries == len(x)
    with pytest.raises(ExportError, match="sample needs"):
        export_classifier(model, str(tmp_path / "cand"), sample={"other": x})
