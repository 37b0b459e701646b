"""TensorFlow Serving warmup records (``assets.extra/tf_serving_warmup_requests``).

The file is a TFRecord file of ``tensorflow.serving.PredictionLog`` protos, each holding a
``PredictRequest`` that TensorFlow Serving replays when it loads a version, so the first
real query does not pay for graph initialisation. Every signature is warmed, at the
batch sizes 1, 2, 4, ... that traffic uses; a text model's ``predict_text`` with raw query
strings, a dense model's signatures with its vectors (``embedding``, and tf.Examples holding
them). The records are encoded by :mod:`export.serving_protos`, so an export does not need
``tensorflow-serving-api``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from export.client import (PREDICT_EXAMPLES, PREDICT_TEXT, SERVING_DEFAULT, input_tensors,
                           sample_examples)
from export.serving_protos import DecodedRequest, decode_prediction_log, encode_prediction_log
from export.signatures import FILTERED
from mach_tf.data import DENSE_KEY

WARMUP_FILE = "tf_serving_warmup_requests"


def write_warmup(path: str, sample: dict, num_requests: int = 8,
                 model_name: str = "mach", texts: list[str] | None = None) -> int:
    """Writes warmup PredictionLog records built from the padded ``sample`` rows (a dense
    model's sample: its ``embedding`` vectors ``[n, d]``).

    ``serving_default`` gets up to ``num_requests`` requests of batch 1, 2, 4, ...;
    ``predict_examples`` gets up to ``num_requests // 2`` of batch 1, 4, 16, ... (a dense
    model's as tf.Examples holding ``embedding``). With
    ``texts`` (a text model's sample queries, of which ``sample`` is the featurisation),
    ``predict_text`` gets up to ``num_requests`` requests of batch 1, 2, 4, ... of them, and
    ``predict_examples`` tf.Examples holding them as ``text``. Each of those signatures'
    ``NAME_filtered`` twin gets requests of batch 1 and 8 with an ``exclude_ids`` and a
    ``restrict_ids`` row (:func:`warmup_filters`).

    Returns:
        The number of records written.
    """
    def record(inputs: dict, signature: str) -> bytes:  # a serialized PredictionLog
        return encode_prediction_log(input_tensors(inputs), signature, model_name)

    if DENSE_KEY in sample:
        inputs = {DENSE_KEY: np.asarray(sample[DENSE_KEY], np.float32)}
    else:
        inputs = {"feature_ids": np.asarray(sample["feature_ids"], np.int64),
                  "feature_values": np.asarray(sample["feature_values"], np.float32)}
    examples = sample_examples(inputs, texts)
    n = len(next(iter(inputs.values())))
    records = []
    for i in range(min(num_requests, n)):
        size = min(n, 1 << i)
        records.append(record({k: v[:size] for k, v in inputs.items()}, SERVING_DEFAULT))
        if size == n:
            break
    for i in range(min(num_requests // 2, n)):
        size = min(n, 1 << (2 * i))
        records.append(record({"examples": examples[:size]}, PREDICT_EXAMPLES))
        if size == n:
            break
    if texts is not None:
        for i in range(min(num_requests, len(texts))):
            size = min(len(texts), 1 << i)
            records.append(record({"text": list(texts[:size])}, PREDICT_TEXT))
            if size == len(texts):
                break
    queries = {SERVING_DEFAULT: inputs, PREDICT_EXAMPLES: {"examples": examples}}
    if texts is not None:
        queries[PREDICT_TEXT] = {"text": list(texts)}
    for name, query in queries.items():
        for size in sorted({1, min(8, n)}):
            records.append(record({**{k: v[:size] for k, v in query.items()},
                                   **warmup_filters(size)}, name + FILTERED))
    with tf.io.TFRecordWriter(path) as w:
        for raw in records:
            w.write(raw)
    return len(records)


def warmup_filters(size: int) -> dict:
    """A filtered signature's extra inputs for ``size`` warmup queries: the first restricted
    to class 0, the others excluding it; the export's k."""
    exclude = np.zeros((size, 1), np.int64)
    restrict = np.full((size, 1), -1, np.int64)
    exclude[0, 0], restrict[0, 0] = -1, 0
    return {"exclude_ids": exclude, "restrict_ids": restrict, "top_k": np.int32(0)}


def read_warmup(path: str) -> list[DecodedRequest]:
    """The requests of a warmup file's PredictionLog records (for checks and tests).

    Raises:
        ValueError: for a record that is not a PredictionLog holding a predict_log.
    """
    return [decode_prediction_log(raw.numpy()) for raw in tf.data.TFRecordDataset(path)]
