"""TensorFlow Serving warmup records (``assets.extra/tf_serving_warmup_requests``).

The file is a TFRecord file of ``tensorflow.serving.PredictionLog`` protos, each holding a
``PredictRequest`` that TensorFlow Serving replays when it loads a version, so the first
real query does not pay for graph initialisation.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

WARMUP_FILE = "tf_serving_warmup_requests"


def predict_request(feature_ids: np.ndarray, feature_values: np.ndarray,
                    model_name: str = "mach", signature: str = "serving_default"):
    """A ``PredictRequest`` for padded sparse inputs."""
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature
    req.inputs["feature_ids"].CopyFrom(
        tf.make_tensor_proto(np.asarray(feature_ids, np.int64)))
    req.inputs["feature_values"].CopyFrom(
        tf.make_tensor_proto(np.asarray(feature_values, np.float32)))
    return req


def write_warmup(path: str, sample: dict, num_requests: int = 8,
                 model_name: str = "mach") -> int:
    """Writes ``num_requests`` PredictionLog records of batch 1..N from ``sample`` rows.

    Returns:
        The number of records written.
    """
    from tensorflow_serving.apis import prediction_log_pb2

    ids, vals = sample["feature_ids"], sample["feature_values"]
    n = 0
    with tf.io.TFRecordWriter(path) as w:
        for i in range(min(num_requests, len(ids))):
            # Batches of 1, 2, 4, ... rows warm the shapes real traffic uses.
            size = min(len(ids), 1 << i)
            req = predict_request(ids[:size], vals[:size], model_name)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=req))
            w.write(log.SerializeToString())
            n += 1
    return n


def read_warmup(path: str) -> list:
    """The PredictionLog records of a warmup file (for checks and tests)."""
    from tensorflow_serving.apis import prediction_log_pb2

    out = []
    for raw in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw.numpy())
        out.append(log)
    return out
