"""The exported SavedModel, tested as an artifact: loaded back by TensorFlow's Python
loader and by the v1 session loader that TensorFlow Serving's C++ loader mirrors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from export import warmup as warmup_lib
from export.stitch import ExportError, export_model, topk_agree
from mach_tf import rundir
from mach_tf.data import to_model_inputs
from mach_tf.inference import MergedScorer
from tfrecords_tools.convert import serialize_example
from tfrecords_tools.dataset import make_dataset


@pytest.fixture(scope="module")
def test_batch(tiny_data):
    batch = next(iter(make_dataset(tiny_data["test"], 64, shuffle=False)))
    return to_model_inputs(batch), batch


@pytest.fixture(scope="module")
def reference(tiny_run, test_batch):
    config, model = rundir.load_all(tiny_run)
    s, i = MergedScorer(config, model, "exact").topk(test_batch[0], 5)
    return s.numpy(), i.numpy()


def test_layout(tiny_export):
    path, res = tiny_export
    assert os.path.basename(path) == "1" and res.version == 1
    for name in ("saved_model.pb", "variables", "assets.extra/tf_serving_warmup_requests"):
        assert os.path.exists(os.path.join(path, name)), name
    assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".tmp")]


def test_saved_model_load_equals_in_python_scoring(tiny_export, test_batch, reference):
    loaded = tf.saved_model.load(tiny_export[0])
    out = loaded.signatures["serving_default"](**test_batch[0])
    assert set(out) == {"label_ids", "scores", "labels"}
    assert out["label_ids"].dtype == tf.int64 and out["scores"].dtype == tf.float32
    assert topk_agree(out["label_ids"].numpy(), out["scores"].numpy(), reference[1],
                      reference[0])
    np.testing.assert_array_equal(out["labels"].numpy().astype(str),
                                  out["label_ids"].numpy().astype(str))


def test_predict_examples_signature(tiny_export, test_batch, reference):
    raw = test_batch[1]
    examples = [serialize_example(lab, ids, vals) for lab, ids, vals in zip(
        raw["labels"].to_list(), raw["feature_ids"].to_list(),
        raw["feature_values"].to_list())]
    loaded = tf.saved_model.load(tiny_export[0])
    out = loaded.signatures["predict_examples"](examples=tf.constant(examples))
    assert topk_agree(out["label_ids"].numpy(), out["scores"].numpy(), reference[1],
                      reference[0])


def _session_run(path, signature, feeds):
    """Runs a signature the way TensorFlow Serving does: v1 loader, tensor names."""
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        sig = meta.signature_def[signature]
        assert sig.method_name == "tensorflow/serving/predict"
        fetch = {k: v.name for k, v in sig.outputs.items()}
        return sess.run(fetch, {sig.inputs[k].name: v for k, v in feeds.items()})


def test_v1_session_loader(tiny_export, test_batch, reference):
    out = _session_run(tiny_export[0], "serving_default",
                       {k: v.numpy() for k, v in test_batch[0].items()})
    assert topk_agree(out["label_ids"], out["scores"], reference[1], reference[0])


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
    path = tiny_export[0]
    logs = warmup_lib.read_warmup(
        os.path.join(path, "assets.extra", warmup_lib.WARMUP_FILE))
    assert len(logs) >= 3
    loaded = tf.saved_model.load(path)
    for log in logs:
        req = log.predict_log.request
        assert req.model_spec.signature_name == "serving_default"
        feeds = {k: tf.make_ndarray(v) for k, v in req.inputs.items()}
        out = loaded.signatures["serving_default"](**{k: tf.constant(v)
                                                      for k, v in feeds.items()})
        assert out["label_ids"].shape[0] == feeds["feature_ids"].shape[0]


def test_request_validation(tiny_export):
    fn = tf.saved_model.load(tiny_export[0]).signatures["serving_default"]
    good = {"feature_ids": tf.constant([[1, 2, -1]], tf.int64),
            "feature_values": tf.constant([[1.0, 0.5, 0.0]])}
    cases = [
        ({"feature_ids": tf.constant([[1, 10**9]], tf.int64),
          "feature_values": tf.constant([[1.0, 1.0]])}, "feature_ids must be < num_features"),
        ({"feature_ids": tf.constant([[1, -5]], tf.int64),
          "feature_values": tf.constant([[1.0, 1.0]])}, "must be >= 0"),
        ({"feature_ids": tf.constant([[1, 2]], tf.int64),
          "feature_values": tf.constant([[1.0]])}, "same shape"),
        ({"feature_ids": tf.constant([[1]], tf.int64),
          "feature_values": tf.constant([[np.nan]])}, "must be finite"),
    ]
    for bad, message in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            fn(**bad)
        assert fn(**good)["label_ids"].shape == (1, 5)  # the next request is served


def test_label_names_and_versions(tmp_path, tiny_run, tiny_config):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"label-{i}\n" for i in range(tiny_config.num_classes)))
    base = str(tmp_path / "mach")
    first = export_model(tiny_run, base, top_k=3, label_names=str(names), verify=False)
    second = export_model(tiny_run, base, top_k=3, label_names=str(names))
    assert (first.version, second.version) == (1, 2)
    with pytest.raises(ExportError, match="already exists"):
        export_model(tiny_run, base, version=2)
    assert os.path.exists(os.path.join(second.path, "assets", "labels.txt"))
    out = tf.saved_model.load(second.path).signatures["serving_default"](
        feature_ids=tf.constant([[1, 2]], tf.int64), feature_values=tf.constant([[1., 1.]]))
    ids = out["label_ids"].numpy()[0]
    assert [x.decode() for x in out["labels"].numpy()[0]] == [f"label-{i}" for i in ids]
    info = json.load(open(os.path.join(second.path, "assets.extra", "mach_tf.json")))
    assert info["top_k"] == 3 and info["config"] == tiny_config.to_dict()


def test_wrong_label_count_is_refused(tmp_path, tiny_run):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    with pytest.raises(ExportError, match="has 2 label names"):
        export_model(tiny_run, str(tmp_path / "m"), label_names=str(names))
    assert not os.path.exists(tmp_path / "m" / "1")


def test_failure_mid_export_leaves_no_version(tmp_path, tiny_run, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(warmup_lib, "write_warmup", boom)
    base = tmp_path / "m"
    with pytest.raises(OSError, match="injected"):
        export_model(str(tiny_run), str(base))
    assert os.listdir(base) == []


def test_candidate_decoder_export(tmp_path, tiny_run, test_batch):
    res = export_model(tiny_run, str(tmp_path / "c"), top_k=5, decoder="candidates",
                       candidate_buckets=3)
    config, model = rundir.load_all(tiny_run)
    ref_s, ref_i = MergedScorer(config, model, "candidates", 3).topk(test_batch[0], 5)
    out = tf.saved_model.load(res.path).signatures["serving_default"](**test_batch[0])
    assert topk_agree(out["label_ids"].numpy(), out["scores"].numpy(), ref_i.numpy(),
                      ref_s.numpy())
