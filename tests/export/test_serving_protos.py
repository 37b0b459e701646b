"""The hand-written wire format of TensorFlow Serving's request protos, against the proto
classes of ``tensorflow-serving-api`` itself."""

import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from export import client, serving_protos
from export.serving_protos import DecodedRequest
from mach_tf.inference.predict import pad_batch

ROWS = [([0, 7, 42], [1.0, 0.5, 2.0]), ([3], [1.5]), ([], [])]
TEXTS = ["red shoes", "", "Crème BRÛLÉE 中文 😀", "tab\there\x00nul"]
#: One request per signature, as the exports' warmup and the gRPC client send them.
REQUESTS = {
    "serving_default": pad_batch(ROWS),
    "predict_examples": {"examples": client.serialized_examples(ROWS)},
    "predict_text": {"text": TEXTS},
    "predict_examples (text)": {"examples": client.text_examples(TEXTS)},
}


def _signature(case):
    return case.split(" ")[0]


@pytest.mark.parametrize("case", sorted(REQUESTS))
@pytest.mark.parametrize("version", [None, 0, 7, 2**40])
def test_prediction_log_parses_as_the_proto_classes_build_it(case, version):
    inputs, signature = REQUESTS[case], _signature(case)
    raw = serving_protos.encode_prediction_log(client.input_tensors(inputs), signature,
                                               "mach", version)
    log = prediction_log_pb2.PredictionLog.FromString(raw)
    want = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
        request=client.predict_request(inputs, signature, "mach", version)))
    assert log == want
    assert log.WhichOneof("log_type") == "predict_log"
    assert log.predict_log.request.model_spec.HasField("version") == (version is not None)
    assert predict_pb2.PredictRequest.FromString(serving_protos.encode_predict_request(
        client.input_tensors(inputs), signature, "mach", version)) == want.predict_log.request


@pytest.mark.parametrize("case", sorted(REQUESTS))
def test_decoder_reads_what_the_proto_classes_write(case):
    inputs, signature = REQUESTS[case], _signature(case)
    req = client.predict_request(inputs, signature, "my-model", 3)
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
        request=req))
    # fields the decoder does not read are skipped
    log.log_metadata.model_spec.name = "elsewhere"
    log.log_metadata.sampling_config.sampling_rate = 0.25
    log.predict_log.request.output_filter.append("scores")
    log.predict_log.response.outputs["scores"].float_val.append(1.0)
    got = serving_protos.decode_prediction_log(log.SerializeToString())
    assert got == DecodedRequest("my-model", signature, 3, dict(req.inputs))
    assert serving_protos.decode_predict_request(req.SerializeToString()) == got


def test_decoder_round_trip_and_signed_versions():
    inputs = client.input_tensors({"feature_ids": np.array([[1, -1]]),
                                   "feature_values": np.array([[1.0, 0.0]])})
    for version in (None, 0, 1, 2**63 - 1, -2):
        got = serving_protos.decode_prediction_log(serving_protos.encode_prediction_log(
            inputs, "serving_default", "mach", version))
        assert got == DecodedRequest("mach", "serving_default", version, inputs)
    req = predict_pb2.PredictRequest()
    req.model_spec.version.value = -2
    assert serving_protos.decode_predict_request(req.SerializeToString()).version == -2


def test_decoder_refuses_other_records():
    classify = prediction_log_pb2.PredictionLog()
    classify.classify_log.request.model_spec.name = "mach"
    with pytest.raises(ValueError, match="predict_log"):
        serving_protos.decode_prediction_log(classify.SerializeToString())
    raw = serving_protos.encode_prediction_log(
        client.input_tensors({"text": ["a"]}), "predict_text", "mach")
    # a later member of the log_type oneof replaces the predict_log, as protobuf parses it
    later = raw + classify.SerializeToString()
    assert prediction_log_pb2.PredictionLog.FromString(later).WhichOneof("log_type") == \
        "classify_log"
    with pytest.raises(ValueError, match="predict_log"):
        serving_protos.decode_prediction_log(later)
    for bad in (raw[:-3], b"\x32\x80", b"\x07", b"\x00\x01"):
        with pytest.raises(ValueError):
            serving_protos.decode_prediction_log(bad)
