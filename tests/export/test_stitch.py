"""The exported SavedModel, tested as an artifact: loaded back by TensorFlow's Python
loader and by the v1 session loader that TensorFlow Serving's C++ loader mirrors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from export import signatures as signatures_lib
from export import stitch
from export import warmup as warmup_lib
from export.client import rows_from_padded, serialized_examples
from export.stitch import ExportError, export_model
from mach_tf import rundir
from mach_tf.data import to_model_inputs
from mach_tf.inference.reference import reference_bucket_scores, reference_topk, topk_agree
from mach_tf.inference.scorer import MergedScorer
from mach_tf.model.network import bucket_scores
from tests.helpers import python_topk, replay_warmup, serve_both_ways, session_run
from tfrecords_tools.dataset import make_dataset

LOADERS = ("saved_model.load", "session")
SIGNATURES = ("serving_default", "predict_examples")


@pytest.fixture(scope="module")
def test_batch(tiny_data):
    batch = next(iter(make_dataset(tiny_data["test"], 64, shuffle=False)))
    inputs = {k: v.numpy() for k, v in to_model_inputs(batch).items()}
    examples = serialized_examples(rows_from_padded(inputs["feature_ids"],
                                                    inputs["feature_values"]))
    return inputs, examples


@pytest.fixture(scope="module")
def run_model(tiny_run):
    return rundir.load_all(tiny_run)


@pytest.fixture(scope="module")
def reference(run_model, test_batch):
    return python_topk(*run_model, test_batch[0], 5)


@pytest.fixture(scope="module")
def candidate_export(tmp_path_factory, tiny_run):
    base = tmp_path_factory.mktemp("cand_export") / "mach"
    return export_model(tiny_run, str(base), top_k=5, decoder="candidates",
                        candidate_buckets=3)


def run_signature(path, loader, signature, test_batch):
    """Answers of ``signature`` for the test batch through ``loader``."""
    inputs, examples = test_batch
    feeds = dict(inputs) if signature == "serving_default" else \
        {"examples": np.asarray(examples, dtype=object)}
    if loader == "saved_model.load":
        fn = tf.saved_model.load(path).signatures[signature]
        out = fn(**{k: tf.constant(v) for k, v in feeds.items()})
        return {k: v.numpy() for k, v in out.items()}
    return session_run(path, signature, feeds)


def test_layout(tiny_export):
    path, res = tiny_export
    assert os.path.basename(path) == "1" and res.version == 1
    assert res.verified_queries == 64
    for name in ("saved_model.pb", "variables", "assets.extra/tf_serving_warmup_requests",
                 "assets.extra/mach_tf.json"):
        assert os.path.exists(os.path.join(path, name)), name
    assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".tmp")]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("signature", SIGNATURES)
def test_signatures_equal_in_python_scoring(tiny_export, test_batch, reference, loader,
                                            signature):
    out = run_signature(tiny_export[0], loader, signature, test_batch)
    assert set(out) == {"label_ids", "scores", "labels"}
    assert out["label_ids"].dtype == np.int64 and out["scores"].dtype == np.float32
    assert out["label_ids"].shape == (64, 5)
    assert topk_agree(out["label_ids"], out["scores"], reference[1], reference[0])
    np.testing.assert_array_equal(out["labels"].astype(str), out["label_ids"].astype(str))


@pytest.mark.parametrize("loader", LOADERS)
def test_candidate_decoder_export(candidate_export, run_model, test_batch, loader):
    config, model = run_model
    inputs = {k: tf.constant(v) for k, v in test_batch[0].items()}
    ref_s, ref_i = python_topk(config, model, test_batch[0], 5, "candidates", 3)
    out = run_signature(candidate_export.path, loader, "serving_default", test_batch)
    assert topk_agree(out["label_ids"], out["scores"], ref_i, ref_s)
    # candidates are scored exactly: each returned score is the class's exact merged score
    table = config.hash_family.table(config.num_classes)
    s = bucket_scores(model(inputs), config.loss, config.merge).numpy()
    exact = np.mean([s[:, r, table[r]] for r in range(config.num_repetitions)], axis=0)
    np.testing.assert_allclose(out["scores"], np.take_along_axis(exact, out["label_ids"], 1),
                               rtol=1e-5)
    info = json.load(open(os.path.join(candidate_export.path, "assets.extra",
                                       "mach_tf.json")))
    assert info["decoder"] == "candidates" and info["candidate_buckets"] == 3


def test_saved_model_cli_lists_signatures(tiny_export):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    res = subprocess.run([cli, "show", "--all", "--dir", tiny_export[0]], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for text in ("signature_def['serving_default']", "signature_def['predict_examples']",
                 "inputs['feature_ids']", "inputs['feature_values']", "inputs['examples']",
                 "outputs['label_ids']", "outputs['scores']", "outputs['labels']",
                 "tensorflow/serving/predict"):
        assert text in res.stdout


def test_warmup_requests_replay(tiny_export):
    seen = replay_warmup(tiny_export[0])
    assert seen["serving_default"][:4] == [1, 2, 4, 8]
    assert seen["predict_examples"][:2] == [1, 4]


BAD_DENSE = [
    ([[1, 300]], [[1.0, 1.0]], "feature_ids must be < num_features=300"),
    ([[1, 10**9]], [[1.0, 1.0]], "feature_ids must be < num_features"),
    ([[1, -5]], [[1.0, 1.0]], "must be >= 0"),
    ([[1, 2]], [[1.0]], "same shape"),
    ([[1, 2], [3, 4]], [[1.0, 1.0]], "same shape"),
    ([[1]], [[np.nan]], "must be finite"),
    ([[1, 2]], [[1.0, -np.inf]], "must be finite"),
]


@pytest.mark.parametrize("loader", LOADERS)
def test_request_validation(tiny_export, loader):
    path = tiny_export[0]
    good = {"feature_ids": np.array([[1, 2, -1, -1], [299, 0, 5, -1]], np.int64),
            "feature_values": np.array([[1.0, 0.5, 0.0, 0.0], [1.0, 1.0, 2.0, 0.0]],
                                       np.float32)}
    unpadded = {"feature_ids": good["feature_ids"][:1, :2],
                "feature_values": good["feature_values"][:1, :2]}
    served = serve_both_ways(path, ["serving_default"])
    run = next(served)

    def call(feeds):
        return run(loader, "serving_default", feeds)

    expected = call(good)
    # -1 padding is not a feature: the padded query answers like the unpadded one
    np.testing.assert_array_equal(call(unpadded)["label_ids"], expected["label_ids"][:1])
    for ids, vals, message in BAD_DENSE:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            call({"feature_ids": np.array(ids, np.int64),
                  "feature_values": np.array(vals, np.float32)})
        # the next request is served normally
        np.testing.assert_array_equal(call(good)["label_ids"], expected["label_ids"])
    served.close()


def _example(ids, vals, ids_kind="int64"):
    from tensorflow.core.example import example_pb2, feature_pb2

    fid = feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=ids)) \
        if ids_kind == "int64" else feature_pb2.Feature(
            float_list=feature_pb2.FloatList(value=ids))
    return example_pb2.Example(features=feature_pb2.Features(feature={
        "feature_ids": fid,
        "feature_values": feature_pb2.Feature(float_list=feature_pb2.FloatList(value=vals)),
    })).SerializeToString()


def test_predict_examples_validation(tiny_export):
    fn = tf.saved_model.load(tiny_export[0]).signatures["predict_examples"]
    good = [_example([1, 2], [1.0, 0.5]), _example([299], [1.0]), _example([], [])]
    expected = fn(examples=tf.constant(good))["label_ids"].numpy()
    assert expected.shape == (3, 5)
    cases = [
        ([_example([1, 2], [1.0])], "as many feature_values as feature_ids"),
        ([_example([1, 300], [1.0, 1.0])], "feature_ids must be < num_features"),
        ([_example([1, -1], [1.0, 1.0])], "in a tf.Example must be >= 0"),
        ([_example([1], [float("nan")])], "must be finite"),
        ([b"\x0a\x07not a proto"], "parse"),
        ([_example([1.0], [1.0], ids_kind="float")], "feature_ids"),
    ]
    for examples, message in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            fn(examples=tf.constant(good[:1] + examples))
        np.testing.assert_array_equal(fn(examples=tf.constant(good))["label_ids"].numpy(),
                                      expected)


def test_label_names_and_versions(tmp_path, tiny_run, tiny_config):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"label-{i}\n" for i in range(tiny_config.num_classes)))
    base = str(tmp_path / "mach")
    first = export_model(tiny_run, base, top_k=3, label_names=str(names), verify=False,
                         warmup=False)
    second = export_model(tiny_run, base, top_k=3, label_names=str(names))
    assert (first.version, second.version) == (1, 2)
    assert first.decoder == "exact"  # auto: K = 60 is far below the candidates threshold
    assert first.verified_queries == 0 and second.verified_queries == 64
    with pytest.raises(ExportError, match="already exists"):
        export_model(tiny_run, base, version=2)
    assert os.path.exists(os.path.join(second.path, "assets", "labels.txt"))
    out = tf.saved_model.load(second.path).signatures["serving_default"](
        feature_ids=tf.constant([[1, 2]], tf.int64), feature_values=tf.constant([[1., 1.]]))
    ids = out["label_ids"].numpy()[0]
    assert [x.decode() for x in out["labels"].numpy()[0]] == [f"label-{i}" for i in ids]
    info = json.load(open(os.path.join(second.path, "assets.extra", "mach_tf.json")))
    assert info["top_k"] == 3 and info["config"] == tiny_config.to_dict()
    assert sorted(os.listdir(base)) == ["1", "2"]


def test_bad_arguments_are_refused_before_writing(tmp_path, tiny_run):
    base = tmp_path / "m"
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    for kwargs, message in (({"label_names": str(names)}, "has 2 label names"),
                            ({"top_k": 0}, "top_k must be >= 1"),
                            ({"candidate_buckets": 0}, "candidate_buckets must be >= 1"),
                            ({"decoder": "fast"}, "decoder must be one of"),
                            ({"version": -1}, "non-negative")):
        with pytest.raises(ExportError, match=message):
            export_model(tiny_run, str(base), **kwargs)
        assert not base.exists() or os.listdir(base) == []


def test_failure_mid_export_leaves_no_version(tmp_path, tiny_run, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(warmup_lib, "write_warmup", boom)
    base = tmp_path / "m"
    with pytest.raises(OSError, match="injected"):
        export_model(str(tiny_run), str(base))
    assert os.listdir(base) == []


def test_wrongly_stacked_model_fails_verification(tmp_path, tiny_run, monkeypatch):
    """A stacking bug (repetitions in the wrong order) is caught by the check against the
    separately loaded repetitions, and leaves nothing behind."""
    real_stack = stitch.stack
    monkeypatch.setattr(stitch, "stack", lambda models: real_stack(models[::-1]))
    base = tmp_path / "m"
    with pytest.raises(ExportError, match=r"serving_default \(tf.saved_model.load\) differs "
                                          r"from the in-Python merged top-10"):
        export_model(tiny_run, str(base), decoder="exact", warmup=False)
    assert os.listdir(base) == []


def test_altered_table_fails_verification(tmp_path, tiny_run, monkeypatch):
    """A candidate index altered before writing (repetitions 0 and 1 given each other's
    hash buckets) makes the served answers wrong: the export fails, leaves nothing behind."""

    class Swapped(signatures_lib.MergedTopK):
        def build(self, input_shape=None):
            super().build(input_shape)
            family = self.family
            base = np.arange(family.num_repetitions) * family.num_buckets
            buckets = np.asarray(self.class_slots) - base
            buckets[:, [0, 1]] = buckets[:, [1, 0]]
            self.class_slots.assign((buckets + base).astype(np.int32))

    monkeypatch.setattr(signatures_lib, "MergedTopK", Swapped)
    base = tmp_path / "m"
    with pytest.raises(ExportError, match="differs from the in-Python merged"):
        export_model(tiny_run, str(base), decoder="candidates", candidate_buckets=4,
                     warmup=False)
    assert os.listdir(base) == []


def test_reference_is_independent_of_the_export(tiny_run, run_model, test_batch):
    """The verification's reference (numpy decoding of the separately loaded repetitions)
    equals the merged scoring of the stacked model."""
    config, model = run_model
    inputs = test_batch[0]
    _, singles = rundir.load_repetitions(tiny_run)
    ref_scores = reference_bucket_scores(config, singles, inputs)
    stacked = bucket_scores(model({k: tf.constant(v) for k, v in inputs.items()}),
                            config.loss, config.merge).numpy()
    np.testing.assert_allclose(ref_scores, stacked, rtol=1e-5, atol=1e-7)
    for decoder, m in (("exact", 10), ("candidates", 3)):
        ref = reference_topk(config, ref_scores, decoder, m, 5)
        got = MergedScorer(config, model, decoder, m).topk(
            {k: tf.constant(v) for k, v in inputs.items()}, 5)
        assert topk_agree(got[1].numpy(), got[0].numpy(), ref[1], ref[0])
