"""Request bodies for a mach-tf export served by TensorFlow Serving.

Turns a batch of XMC / libsvm text lines (``[labels] id:value id:value ...``; the labels,
if any, are ignored) into what TensorFlow Serving's two APIs take:

* REST (``POST /v1/models/NAME:predict``): :func:`rest_body` gives the JSON object, in the
  row layout (``"instances"``) or the columnar layout (``"inputs"``), for
  ``serving_default`` (padded ``feature_ids`` / ``feature_values``) or ``predict_examples``
  (serialized ``tf.train.Example`` strings, base64-encoded as ``{"b64": ...}``).
* gRPC (``PredictionService/Predict``, port 8500): :func:`grpc_request` gives the
  ``tensorflow.serving.PredictRequest`` proto; :func:`response_outputs` turns the
  ``PredictResponse`` back into numpy arrays.

Every line becomes exactly one query, in order, so the i-th answer belongs to the i-th line;
a malformed line raises :class:`~tfrecords_tools.parse.DataFormatError` naming it.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Iterable, Sequence

import numpy as np

from mach_tf.predict import pad_batch
from tfrecords_tools.parse import DataFormatError, parse_line

SERVING_DEFAULT = "serving_default"
PREDICT_EXAMPLES = "predict_examples"
SIGNATURES = (SERVING_DEFAULT, PREDICT_EXAMPLES)
LAYOUTS = ("columnar", "row")

Row = tuple[list[int], list[float]]
_HEADER = re.compile(r"\s*\d+\s+\d+\s+\d+\s*")


def parse_queries(lines: Iterable[str], num_features: int | None = None,
                  source: str = "<lines>") -> list[Row]:
    """Parses query lines into ``(feature_ids, feature_values)`` rows.

    An XMC header line (``num_points num_features num_labels``) in first place is skipped:
    it can never be a data line (features need ``id:value``).

    Args:
        lines: Text lines, with or without line ends.
        num_features: When given, feature ids must be below it (else the server refuses the
            request; this names the line instead).
        source: Name used in error messages.

    Returns:
        One row per data line.

    Raises:
        DataFormatError: naming the line that breaks the grammar (a blank line included:
            every line is a query).
    """
    rows: list[Row] = []
    for lineno, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if lineno == 1:
            text = text.lstrip("\ufeff")
            if _HEADER.fullmatch(text):
                continue
        try:
            _labels, ids, vals = parse_line(text, num_features=num_features)
        except ValueError as e:
            raise DataFormatError(source, lineno, str(e)) from None
        rows.append((ids, vals))
    return rows


def _rows(queries) -> list[Row]:
    """Rows from text lines (a str is split into lines) or already parsed rows."""
    if isinstance(queries, str):
        return parse_queries(queries.splitlines())
    queries = list(queries)
    if queries and isinstance(queries[0], str):
        return parse_queries(queries)
    return [(list(ids), list(vals)) for ids, vals in queries]


def serialized_examples(rows: Sequence[Row]) -> list[bytes]:
    """Each row as a serialized ``tf.train.Example`` (the TFRecord schema, no labels)."""
    from tfrecords_tools.convert import serialize_example

    return [serialize_example([], ids, vals) for ids, vals in rows]


def rows_from_padded(feature_ids: np.ndarray, feature_values: np.ndarray) -> list[Row]:
    """Inverse of padding: drops the -1 entries of each row."""
    out = []
    for ids, vals in zip(np.asarray(feature_ids), np.asarray(feature_values)):
        keep = ids >= 0
        out.append((ids[keep].tolist(), vals[keep].tolist()))
    return out


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def rest_body(queries, signature: str = SERVING_DEFAULT, layout: str = "columnar") -> dict:
    """The JSON object for TensorFlow Serving's REST predict API.

    Args:
        queries: Text lines (or one string of lines), or parsed ``(ids, values)`` rows.
        signature: ``serving_default`` or ``predict_examples``.
        layout: ``"columnar"`` (``{"inputs": {name: batch}}``; the answer comes back as
            ``{"outputs": {name: batch}}``) or ``"row"`` (``{"instances": [{name: value}]}``;
            the answer is ``{"predictions": [{name: value}]}``).

    Returns:
        A dict; send ``json.dumps`` of it (see :func:`rest_json`).

    Raises:
        ValueError: for an unknown signature or layout.
        DataFormatError: for a malformed line.
    """
    if signature not in SIGNATURES:
        raise ValueError(f"signature must be one of {SIGNATURES}, got {signature!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    rows = _rows(queries)
    if signature == PREDICT_EXAMPLES:
        examples = [_b64(x) for x in serialized_examples(rows)]
        if layout == "row":
            return {"signature_name": signature,
                    "instances": [{"examples": x} for x in examples]}
        return {"signature_name": signature, "inputs": {"examples": examples}}
    # Row-layout instances are stacked into one tensor, so every row has the batch's width.
    t = pad_batch(rows)
    ids, vals = t["feature_ids"].tolist(), t["feature_values"].tolist()
    if layout == "row":
        return {"signature_name": signature,
                "instances": [{"feature_ids": i, "feature_values": v}
                              for i, v in zip(ids, vals)]}
    return {"signature_name": signature,
            "inputs": {"feature_ids": ids, "feature_values": vals}}


def rest_json(queries, signature: str = SERVING_DEFAULT, layout: str = "columnar") -> str:
    """:func:`rest_body` as a JSON string, ready to POST."""
    return json.dumps(rest_body(queries, signature, layout), separators=(",", ":"))


def grpc_request(queries, signature: str = SERVING_DEFAULT, model_name: str = "mach",
                 version: int | None = None):
    """A ``tensorflow.serving.PredictRequest`` for TensorFlow Serving's gRPC API.

    Args:
        queries: Text lines (or one string of lines), or parsed ``(ids, values)`` rows.
        signature: ``serving_default`` or ``predict_examples``.
        model_name: The served model's name (``MODEL_NAME`` of the container).
        version: A specific version; ``None`` lets the server pick its latest.

    Raises:
        ValueError: for an unknown signature.
        DataFormatError: for a malformed line.
    """
    if signature not in SIGNATURES:
        raise ValueError(f"signature must be one of {SIGNATURES}, got {signature!r}")
    rows = _rows(queries)
    if signature == PREDICT_EXAMPLES:
        return predict_request({"examples": serialized_examples(rows)}, signature,
                               model_name, version)
    return predict_request(pad_batch(rows), signature, model_name, version)


def predict_request(inputs: dict, signature: str = SERVING_DEFAULT, model_name: str = "mach",
                    version: int | None = None):
    """A ``PredictRequest`` from named inputs: ``feature_ids`` / ``feature_values`` arrays,
    or ``examples`` (a list of serialized tf.Examples)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = int(version)
    for name, value in inputs.items():
        if name == "examples":
            proto = tf.make_tensor_proto(list(value), dtype=tf.string, shape=[len(value)])
        elif name == "feature_ids":
            proto = tf.make_tensor_proto(np.asarray(value, np.int64))
        else:
            proto = tf.make_tensor_proto(np.asarray(value, np.float32))
        req.inputs[name].CopyFrom(proto)
    return req


def response_outputs(response) -> dict:
    """The outputs of a ``PredictResponse`` as numpy arrays (``labels`` as bytes)."""
    import tensorflow as tf

    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
