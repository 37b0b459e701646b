"""Client request builders: REST JSON and gRPC PredictRequest bodies, decoded the way
TensorFlow Serving decodes them and fed to the exported signatures through both loaders."""

import json

import numpy as np
import pytest
import tensorflow as tf

from export import client
from mach_tf import rundir
from mach_tf.inference.predict import pad_batch
from mach_tf.inference.reference import topk_agree
from tests.helpers import decode_rest, python_topk, run_without_serving_api, serve_both_ways
from tfrecords_tools.parse import DataFormatError

LOADERS = ("saved_model.load", "session")


@pytest.fixture(scope="module")
def lines(tiny_data):
    with open(tiny_data["test_txt"], encoding="utf-8") as f:
        return [next(f) for _ in range(25)]  # the XMC header and 24 points


@pytest.fixture(scope="module")
def reference(tiny_run, lines):
    """The in-Python merged top-5 of the lines' features (labels ignored)."""
    from tfrecords_tools.parse import parse_line

    rows = [parse_line(line.rstrip("\n"))[1:] for line in lines[1:]]
    return python_topk(*rundir.load_all(tiny_run), pad_batch(rows), 5)


@pytest.fixture(scope="module")
def served(tiny_export):
    """``run(loader, signature, feeds)`` over the export loaded once per loader."""
    yield from serve_both_ways(tiny_export[0], client.SIGNATURES)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("signature", client.SIGNATURES)
@pytest.mark.parametrize("layout", client.LAYOUTS)
def test_rest_body_answers_like_python(served, lines, reference, loader, signature, layout):
    text = client.rest_json(lines, signature, layout)
    body = json.loads(text)
    assert body["signature_name"] == signature
    feeds = decode_rest(body, served.input_dtypes[signature])
    assert len(next(iter(feeds.values()))) == 24
    out = served(loader, signature, feeds)
    assert topk_agree(out["label_ids"], out["scores"], reference[1], reference[0])


def test_rest_row_layout_pads_to_one_width(lines):
    body = client.rest_body(lines, "serving_default", "row")
    widths = {len(x["feature_ids"]) for x in body["instances"]}
    assert len(widths) == 1
    first = body["instances"][0]
    assert len(first["feature_ids"]) == len(first["feature_values"])
    assert -1 in [i for x in body["instances"] for i in x["feature_ids"]]
    examples = client.rest_body(lines, "predict_examples", "row")["instances"]
    assert list(examples[0]) == ["examples"] and list(examples[0]["examples"]) == ["b64"]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("signature", client.SIGNATURES)
def test_grpc_request_answers_like_python(served, lines, reference, loader, signature):
    from tensorflow_serving.apis import predict_pb2

    req = client.grpc_request(lines, signature, model_name="mach", version=3)
    wire = predict_pb2.PredictRequest.FromString(req.SerializeToString())
    assert wire.model_spec.name == "mach" and wire.model_spec.signature_name == signature
    assert wire.model_spec.version.value == 3
    feeds = {k: tf.make_ndarray(v) for k, v in wire.inputs.items()}
    assert set(feeds) == set(served.input_dtypes[signature])
    out = served(loader, signature, feeds)
    assert topk_agree(out["label_ids"], out["scores"], reference[1], reference[0])


def test_response_outputs(served, lines):
    from tensorflow_serving.apis import predict_pb2

    out = served("session", "serving_default",
                 {k: v for k, v in pad_batch(client.parse_queries(lines)).items()})
    resp = predict_pb2.PredictResponse()
    for k, v in out.items():
        resp.outputs[k].CopyFrom(tf.make_tensor_proto(v))
    back = client.response_outputs(predict_pb2.PredictResponse.FromString(
        resp.SerializeToString()))
    for k in out:
        np.testing.assert_array_equal(back[k], out[k])


def test_grpc_request_without_the_serving_api_names_its_install():
    """``pip install "mach-tf[cpu]"`` alone: the package and REST bodies work, and building a
    gRPC request says how to install tensorflow-serving-api (with --no-deps, and why)."""
    code = """
import json
import export
from export import client
body = client.rest_body(["0:1 2:0.5"], "predict_examples")
errors = []
for call in (lambda: client.grpc_request(["0:1 2:0.5"]),
             lambda: client.predict_request({"text": ["red shoes"]}, "predict_text")):
    try:
        call()
    except ImportError as e:
        errors.append(str(e))
print(json.dumps({"rest": body["signature_name"], "errors": errors}))
"""
    res = run_without_serving_api(code)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["rest"] == "predict_examples"
    assert len(out["errors"]) == 2
    for message in out["errors"]:
        assert client.SERVING_API_INSTALL in message
        assert "pip install --no-deps tensorflow-serving-api==2.21.0" in message
        assert "full 'tensorflow' package" in message


def test_parse_queries():
    rows = client.parse_queries(["3 10 5\n", "1,2 0:1 7:0.5\n", " 3:2\n", "4:1.5"])
    assert rows == [([0, 7], [1.0, 0.5]), ([3], [2.0]), ([4], [1.5])]
    # labels are ignored: a line with and without them asks the same
    assert client.rest_body(["1,2 0:1 7:0.5"]) == client.rest_body(["0:1 7:0.5"])
    assert client.rest_body("0:1\n2:1") == client.rest_body([([0], [1.0]), ([2], [1.0])])
    for bad, where, what in ((["0:1", "", "2:1"], ":2:", "blank line"),
                             (["0:1", "2:x"], ":2:", "malformed value"),
                             (["0:1 0:2"], ":1:", "duplicate feature id 0"),
                             (["1:1 9:1"], ":1:", "out of range")):
        with pytest.raises(DataFormatError, match=f"{where} .*{what}"):
            client.parse_queries(bad, num_features=5)
    with pytest.raises(ValueError, match="signature"):
        client.rest_body(["0:1"], "classify")
    with pytest.raises(ValueError, match="layout"):
        client.rest_body(["0:1"], layout="csv")
