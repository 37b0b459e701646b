"""A dense run (``input_format="dense"``) exported for TensorFlow Serving: ``embedding``
vectors in, merged top-k out, served by TensorFlow's Python loader and by the v1 session
loader that TensorFlow Serving's C++ loader mirrors, and queried through evaluate and
``mach-tf predict``."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from export import stitch
from export import warmup as warmup_lib
from export.client import dense_examples, input_tensors, rest_body
from export.stitch import ExportError, export_model
from export.verification import sample_inputs
from mach_tf import rundir
from mach_tf.data import config_for_data
from mach_tf.inference.evaluation import evaluate, export_info_path
from mach_tf.inference.predict import predict_lines
from mach_tf.inference.reference import topk_agree
from mach_tf.launch.local import train
from tests.helpers import decode_rest, python_topk, replay_warmup, run_cli, serve_both_ways
from tfrecords_tools.convert import serialize_dense_example
from tfrecords_tools.dataset import make_dataset
from tfrecords_tools.parse import DataFormatError

LOADERS = ("saved_model.load", "session")
SIGNATURES = ("serving_default", "predict_examples")
ALL_SIGNATURES = SIGNATURES + tuple(name + "_filtered" for name in SIGNATURES)
TOP_K = 5


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, dense_data):
    """A trained dense run (4 repetitions of 32 buckets, d=32, K=200). Do not modify it."""
    run = str(tmp_path_factory.mktemp("dense_run") / "run")
    config = config_for_data(dense_data["train"], num_repetitions=4, num_buckets=32,
                             epochs=3, group_size=2, seed=3)
    summary = train(run, dense_data["train"], config=config, verbose=0, log=lambda m: None)
    assert summary["complete"] == 4
    return run


@pytest.fixture(scope="module")
def dense_export(tmp_path_factory, dense_run):
    """``(BASE/NAME, result)`` of an exact-decoder export of ``dense_run``."""
    base = tmp_path_factory.mktemp("dense_export") / "mach"
    return str(base), export_model(dense_run, str(base), top_k=TOP_K, decoder="exact")


@pytest.fixture(scope="module")
def test_vectors(dense_data):
    """The first 64 test vectors, float32 ``[64, 32]``."""
    batch = next(iter(make_dataset(dense_data["test"], 64, shuffle=False)))
    return batch["embedding"].numpy()


@pytest.fixture(scope="module")
def reference(dense_run, test_vectors):
    """``(scores, ids)``: the in-Python merged top-k of the run's stacked repetitions."""
    return python_topk(*rundir.load_all(dense_run), {"embedding": test_vectors}, TOP_K)


@pytest.fixture(scope="module")
def served(dense_export):
    yield from serve_both_ways(dense_export[1].path, ALL_SIGNATURES)


def feeds(signature, vectors):
    """A plain signature's inputs for ``vectors``."""
    if signature == "serving_default":
        return {"embedding": vectors}
    return {"examples": np.asarray(dense_examples(vectors), dtype=object)}


def filters(exclude, restrict, top_k=0):
    return {"exclude_ids": np.asarray(exclude, np.int64),
            "restrict_ids": np.asarray(restrict, np.int64), "top_k": np.int32(top_k)}


def agrees(json_lines, reference, rows) -> bool:
    """JSON answers (``predict``) equal the reference top-k of the first ``rows`` queries
    (up to the order of tied scores)."""
    answers = [json.loads(line) for line in json_lines]
    return len(answers) == rows and topk_agree(
        np.array([a["label_ids"] for a in answers]), np.array([a["scores"] for a in answers]),
        reference[1][:rows], reference[0][:rows])


def test_layout_and_recorded_config(dense_export):
    res = dense_export[1]
    assert os.path.basename(res.path) == "1" and res.verified_queries == 64
    for name in ("saved_model.pb", "variables", "assets.extra/tf_serving_warmup_requests"):
        assert os.path.exists(os.path.join(res.path, name)), name
    with open(export_info_path(res.path)) as f:
        info = json.load(f)
    assert info["config"]["input_format"] == "dense"
    assert info["config"]["num_features"] == 32
    assert sorted(info["signatures"]) == sorted(ALL_SIGNATURES)


def test_verification_sample_is_the_first_training_vectors(dense_run, dense_data,
                                                           tmp_path):
    config = rundir.load_config(dense_run)
    sample = sample_inputs(dense_run, config)
    first = next(iter(make_dataset(dense_data["train"], 64, shuffle=False)))
    assert list(sample) == ["embedding"]
    np.testing.assert_array_equal(sample["embedding"], first["embedding"].numpy())
    # without the training data: random unit vectors of width d
    fallback = sample_inputs(str(tmp_path), config)["embedding"]
    assert fallback.shape == (64, 32) and fallback.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fallback, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("signature", SIGNATURES)
def test_signatures_equal_in_python_scoring(served, test_vectors, reference, loader,
                                            signature):
    out = served(loader, signature, feeds(signature, test_vectors))
    assert set(out) == {"label_ids", "scores", "labels"}
    assert out["label_ids"].dtype == np.int64 and out["scores"].dtype == np.float32
    assert out["label_ids"].shape == (64, TOP_K)
    assert topk_agree(out["label_ids"], out["scores"], reference[1], reference[0])
    np.testing.assert_array_equal(out["labels"].astype(str), out["label_ids"].astype(str))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("signature", SIGNATURES)
def test_filtered_signature_excludes_and_restricts(served, test_vectors, loader, signature):
    x = test_vectors[:8]
    best = served(loader, signature, feeds(signature, x))["label_ids"]
    name = signature + "_filtered"
    none = np.full((8, 1), -1)
    # each row's best class excluded: the next ones move up
    out = served(loader, name, {**feeds(signature, x), **filters(best[:, :1], none)})
    assert out["label_ids"].shape == (8, TOP_K)
    assert not np.any(out["label_ids"] == best[:, :1])
    np.testing.assert_array_equal(out["label_ids"][:, :TOP_K - 1], best[:, 1:])
    # restricted to the third and fifth best classes, two answers per row
    restrict = best[:, [2, 4]]
    out = served(loader, name, {**feeds(signature, x), **filters(none, restrict, top_k=2)})
    np.testing.assert_array_equal(out["label_ids"], restrict)


BAD_VECTORS = [
    (np.ones((2, 31), np.float32), "embedding must have num_features=32"),
    (np.ones((1, 33), np.float32), "embedding must have num_features=32"),
    (np.where(np.eye(2, 32) > 0, np.nan, 0.5).astype(np.float32), "embedding must be finite"),
    (np.full((1, 32), -np.inf, np.float32), "embedding must be finite"),
]


@pytest.mark.parametrize("loader", LOADERS)
def test_bad_requests_are_invalid_argument(served, test_vectors, loader):
    good = test_vectors[:3]
    expected = served(loader, "serving_default", {"embedding": good})["label_ids"]
    for bad, message in BAD_VECTORS:
        for name, extra in (("serving_default", {}),
                            ("serving_default_filtered",
                             filters(np.full((len(bad), 1), -1), np.full((len(bad), 1), -1)))):
            with pytest.raises(tf.errors.InvalidArgumentError, match=message):
                served(loader, name, {"embedding": bad, **extra})
        # the next request is served normally
        np.testing.assert_array_equal(
            served(loader, "serving_default", {"embedding": good})["label_ids"], expected)


@pytest.mark.parametrize("loader", LOADERS)
def test_bad_examples_are_invalid_argument(served, test_vectors, loader):
    good = [serialize_dense_example([], v) for v in test_vectors[:2]]
    cases = [
        ([serialize_dense_example([], test_vectors[0][:31])], "embedding"),
        ([serialize_dense_example([3], np.full(32, np.nan))], "embedding must be finite"),
        ([b"\x0a\x07not a proto"], "parse"),
    ]
    for examples, message in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            served(loader, "predict_examples",
                   {"examples": np.asarray(good + examples, dtype=object)})
    out = served(loader, "predict_examples", {"examples": np.asarray(good, dtype=object)})
    assert out["label_ids"].shape == (2, TOP_K)


def test_warmup_records_replay(dense_export):
    path = dense_export[1].path
    seen = replay_warmup(path, top_k=TOP_K)
    assert seen["serving_default"][:4] == [1, 2, 4, 8]
    assert seen["predict_examples"][:2] == [1, 4]
    assert seen["serving_default_filtered"] == seen["predict_examples_filtered"] == [1, 8]
    assert "predict_text" not in seen
    for req in warmup_lib.read_warmup(os.path.join(path, "assets.extra",
                                                   warmup_lib.WARMUP_FILE)):
        if "embedding" in req.inputs:
            x = tf.make_ndarray(req.inputs["embedding"])
            assert x.dtype == np.float32 and x.shape[1] == 32


def test_saved_model_cli_lists_embedding(dense_export):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    res = subprocess.run([cli, "show", "--all", "--dir", dense_export[1].path],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for text in ("signature_def['serving_default']", "signature_def['predict_examples']",
                 "signature_def['serving_default_filtered']", "inputs['embedding']",
                 "inputs['examples']", "inputs['exclude_ids']", "outputs['label_ids']",
                 "tensorflow/serving/predict"):
        assert text in res.stdout, text
    assert "feature_ids" not in res.stdout and "predict_text" not in res.stdout


def test_evaluate_export_equals_run(dense_export, dense_run, dense_data):
    through_export = evaluate(dense_export[0], dense_data["test"])
    in_python = evaluate(dense_run, dense_data["test"], decoder="exact")
    assert through_export["num_examples"] == in_python["num_examples"] == 500
    for key in ("p@1", "p@3", "p@5", "ndcg@1", "ndcg@3", "ndcg@5"):
        assert through_export[key] == pytest.approx(in_python[key], abs=1e-9), key


def test_rest_body_for_dense_queries(served, test_vectors):
    """A REST body built from vectors (or lines of numbers) decodes, as TensorFlow Serving
    reads it, to the request the signature answers."""
    x = test_vectors[:3]
    lines = "\n".join(" ".join(repr(float(v)) for v in row) for row in x)
    expected = served("session", "serving_default", {"embedding": x})["label_ids"]
    for queries in (x, lines):
        for signature, layout in (("serving_default", "columnar"), ("serving_default", "row"),
                                  ("predict_examples", "columnar")):
            body = json.loads(json.dumps(rest_body(queries, signature, layout, dense=True)))
            inputs = decode_rest(body, served.input_dtypes[signature])
            out = served("saved_model.load", signature, inputs)
            np.testing.assert_array_equal(out["label_ids"], expected)
    assert input_tensors({"embedding": x})["embedding"].dtype == tf.float32.as_datatype_enum


def test_predict_reads_lines_of_numbers(dense_export, test_vectors, reference):
    x = test_vectors[:4]
    lines = [" ".join(map(repr, x[0].tolist())), ",".join(map(repr, x[1].tolist())),
             " , ".join(map(repr, x[2].tolist())) + "  \r\n", "\t".join(map(repr, x[3].tolist()))]
    out = io.StringIO()
    assert predict_lines(dense_export[0], lines, out) == 4
    assert agrees(out.getvalue().splitlines(), reference, 4)
    good = lines[0]
    for bad, message in (("", "<stdin>:2: empty line"),
                         ("1 2 3", "<stdin>:2: 3 values; the model reads vectors of "
                                   "num_features=32"),
                         (good.replace(" ", " nan ", 1), "<stdin>:2: value 2 'nan' is not "
                                                         "finite"),
                         (good.replace(" ", " 1e39 ", 1), "<stdin>:2: value 2 '1e39' "
                                                          "overflows float32"),
                         (good.replace(" ", ",, ", 1), "<stdin>:2: value 2 is empty"),
                         ("1:0.5 " + good, "<stdin>:2: value 1 '1:0.5' is not a number")):
        out = io.StringIO()
        with pytest.raises(DataFormatError) as e:
            predict_lines(dense_export[0], [good, bad, good], out)
        assert str(e.value).startswith(message), str(e.value)
        assert len(out.getvalue().splitlines()) == 1  # the line before it is answered


def test_predict_cli_answers_in_order_and_names_a_bad_line(dense_export, test_vectors,
                                                           reference):
    lines = [" ".join(map(repr, v.tolist())) for v in test_vectors[:3]]
    res = run_cli("predict", "--model", dense_export[0], "--json",
                  input_text="\n".join(lines) + "\n")
    assert res.returncode == 0, res.stderr
    out = res.stdout.strip().splitlines()
    assert json.loads(out[-1]) == {"queries": 3}
    assert agrees(out[:3], reference, 3)
    short = " ".join(lines[1].split()[:31])
    res = run_cli("predict", "--model", dense_export[0],
                  input_text="\n".join([lines[0], short, lines[2]]) + "\n")
    assert res.returncode == 1
    assert "<stdin>:2: 31 values; the model reads vectors of num_features=32" in res.stderr
    assert agrees(res.stdout.strip().splitlines(), reference, 1)


def test_wrongly_stacked_model_fails_verification(tmp_path, dense_run, monkeypatch):
    """The dense check compares every signature with the separately loaded repetitions:
    repetitions stacked in the wrong order fail the export and leave nothing behind."""
    real_stack = stitch.stack
    monkeypatch.setattr(stitch, "stack", lambda models: real_stack(models[::-1]))
    base = tmp_path / "m"
    with pytest.raises(ExportError, match=r"serving_default \(tf.saved_model.load\) differs"):
        export_model(dense_run, str(base), decoder="exact", warmup=False)
    assert os.listdir(base) == []
