"""TensorFlow Serving warmup records (``assets.extra/tf_serving_warmup_requests``).

The file is a TFRecord file of ``tensorflow.serving.PredictionLog`` protos, each holding a
``PredictRequest`` that TensorFlow Serving replays when it loads a version, so the first
real query does not pay for graph initialisation. Every signature is warmed, at the
batch sizes 1, 2, 4, ... that traffic uses; a text model's ``predict_text`` with raw query
strings.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from export.client import (PREDICT_EXAMPLES, PREDICT_TEXT, SERVING_DEFAULT, predict_request,
                           rows_from_padded, serialized_examples, text_examples)

WARMUP_FILE = "tf_serving_warmup_requests"


def write_warmup(path: str, sample: dict, num_requests: int = 8,
                 model_name: str = "mach", texts: list[str] | None = None) -> int:
    """Writes warmup PredictionLog records built from the padded ``sample`` rows.

    ``serving_default`` gets up to ``num_requests`` requests of batch 1, 2, 4, ...;
    ``predict_examples`` gets up to ``num_requests // 2`` of batch 1, 4, 16, .... With
    ``texts`` (a text model's sample queries, of which ``sample`` is the featurisation),
    ``predict_text`` gets up to ``num_requests`` requests of batch 1, 2, 4, ... of them, and
    ``predict_examples`` tf.Examples holding them as ``text``.

    Returns:
        The number of records written.
    """
    from tensorflow_serving.apis import prediction_log_pb2

    ids = np.asarray(sample["feature_ids"], np.int64)
    vals = np.asarray(sample["feature_values"], np.float32)
    n = len(ids)
    requests = []
    for i in range(min(num_requests, n)):
        size = min(n, 1 << i)
        requests.append(predict_request({"feature_ids": ids[:size],
                                         "feature_values": vals[:size]},
                                        SERVING_DEFAULT, model_name))
        if size == n:
            break
    for i in range(min(num_requests // 2, n)):
        size = min(n, 1 << (2 * i))
        examples = text_examples(texts[:size]) if texts is not None else \
            serialized_examples(rows_from_padded(ids[:size], vals[:size]))
        requests.append(predict_request({"examples": examples}, PREDICT_EXAMPLES, model_name))
        if size == n:
            break
    if texts is not None:
        for i in range(min(num_requests, len(texts))):
            size = min(len(texts), 1 << i)
            requests.append(predict_request({"text": list(texts[:size])}, PREDICT_TEXT,
                                            model_name))
            if size == len(texts):
                break
    with tf.io.TFRecordWriter(path) as w:
        for req in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=req))
            w.write(log.SerializeToString())
    return len(requests)


def read_warmup(path: str) -> list:
    """The PredictionLog records of a warmup file (for checks and tests)."""
    from tensorflow_serving.apis import prediction_log_pb2

    out = []
    for raw in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw.numpy())
        out.append(log)
    return out
