"""Request bodies for a mach-tf export served by TensorFlow Serving.

Turns a batch of XMC / libsvm text lines (``[labels] id:value id:value ...``; the labels,
if any, are ignored), of raw query strings for a text model's ``predict_text``, or of dense
vectors for a dense model (``dense=True``: a float array ``[batch, d]``, or lines of d
numbers), into what TensorFlow Serving's two APIs take:

* REST (``POST /v1/models/NAME:predict``): :func:`rest_body` gives the JSON object, in the
  row layout (``"instances"``) or the columnar layout (``"inputs"``), for
  ``serving_default`` (padded ``feature_ids`` / ``feature_values``, or a dense model's
  ``embedding``) or ``predict_examples`` (serialized ``tf.train.Example`` strings,
  base64-encoded as ``{"b64": ...}``).
* gRPC (``PredictionService/Predict``, port 8500): :func:`grpc_request` gives the
  ``tensorflow.serving.PredictRequest`` proto; :func:`response_outputs` turns the
  ``PredictResponse`` back into numpy arrays. The proto classes come from
  ``tensorflow-serving-api``, which only :func:`grpc_request` and :func:`predict_request`
  need (:data:`SERVING_API_INSTALL` installs it); :func:`input_tensors` and
  :mod:`export.serving_protos` build the same request as bytes without it.

Every line becomes exactly one query, in order, so the i-th answer belongs to the i-th line;
a malformed line raises :class:`~tfrecords_tools.parse.DataFormatError` naming it. Raw
queries (``predict_text``, or ``predict_examples`` with ``text=True``) are sent as they
are (the model normalises them); a line of the text format (``labels<TAB>text``) gives its
text.
"""

from __future__ import annotations

import base64
import json
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

from export.signatures import FILTERED
from mach_tf.data import DENSE_KEY
from mach_tf.inference.predict import pad_batch, parse_vector_line
from tfrecords_tools.convert import serialize_dense_example, serialize_example
from tfrecords_tools.parse import DataFormatError, is_header_line, parse_line
from tfrecords_tools.text_format import query_text

try:  # optional: only the gRPC request builders need TensorFlow Serving's proto classes
    from tensorflow_serving.apis import predict_pb2
except ImportError:
    predict_pb2 = None

SERVING_DEFAULT = "serving_default"
PREDICT_EXAMPLES = "predict_examples"
PREDICT_TEXT = "predict_text"
#: The signatures every export has (XMC lines go to these).
SIGNATURES = (SERVING_DEFAULT, PREDICT_EXAMPLES)
#: With a text model's ``predict_text``.
ALL_SIGNATURES = SIGNATURES + (PREDICT_TEXT,)
LAYOUTS = ("columnar", "row")

Row = tuple[list[int], list[float]]
#: Installs the proto classes :func:`grpc_request` builds. ``--no-deps``: the package declares
#: the full ``tensorflow`` package, which would install a second TensorFlow beside
#: ``tensorflow-cpu`` or ``tensorflow[and-cuda]``; it needs only protobuf and grpcio, which
#: mach-tf depends on.
SERVING_API_INSTALL = "pip install --no-deps tensorflow-serving-api==2.21.0"


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
            if is_header_line(text):
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


def text_queries(queries, source: str = "<lines>") -> list[str]:
    """Raw query strings: a list of queries, or one string of lines (one query each).

    A line of the text format (``labels<TAB>text``) gives its text. Bytes are decoded as
    UTF-8.

    Raises:
        DataFormatError: naming the query that is not valid UTF-8 (bytes that are not, or a
            str holding lone surrogates, which JSON and the server refuse).
    """
    items = queries.splitlines() if isinstance(queries, str) else list(queries)
    out = []
    for i, q in enumerate(items, start=1):
        try:
            text = q.decode("utf-8") if isinstance(q, bytes) else str(q)
            text.encode("utf-8")
        except UnicodeError as e:
            raise DataFormatError(source, i, f"query is not valid UTF-8 ({e.reason})") from None
        out.append(query_text(text))
    return out


def text_examples(texts: Sequence[str]) -> list[bytes]:
    """Each query as a serialized ``tf.train.Example`` with its ``text`` (a text model's
    ``predict_examples`` input)."""
    return [serialize_example([], [], [], t.encode("utf-8")) for t in texts]


def dense_queries(queries, width: int | None = None, source: str = "<lines>") -> np.ndarray:
    """Dense queries as float32 ``[batch, d]``: an array-like of vectors, or text lines
    (one string of lines, or a list of lines) of d numbers separated by spaces or commas.

    Args:
        queries: The vectors, or the lines.
        width: d, when known: every vector must have it (else the server refuses the
            request; this names the query instead).
        source: Name used in error messages.

    Raises:
        DataFormatError: naming the line that is empty, holds another number of values or
            a value that is not a finite number.
        ValueError: for vectors that are not a ``[batch, d]`` array of ``width`` columns.
    """
    items = queries.splitlines() if isinstance(queries, str) else queries
    if not isinstance(items, np.ndarray):
        items = list(items)
        if items and isinstance(items[0], str):
            rows = []
            for lineno, line in enumerate(items, start=1):
                try:  # without width, the first line's
                    rows.append(parse_vector_line(line.rstrip("\r\n"), width))
                except ValueError as e:
                    raise DataFormatError(source, lineno, str(e)) from None
                width = len(rows[0])
            items = rows
    x = np.asarray(items, np.float32)
    if x.ndim == 1 and x.size == 0:
        x = x.reshape(0, width or 0)
    if x.ndim != 2 or (width is not None and x.shape[1] != width):
        raise ValueError(f"{DENSE_KEY}: expected vectors of shape [batch, "
                         f"{width if width is not None else 'd'}], got shape "
                         f"{list(x.shape)}")
    return x


def dense_examples(vectors) -> list[bytes]:
    """Each vector (a row of float ``[batch, d]``) as a serialized ``tf.train.Example``
    holding its ``embedding`` (float32) and no labels: a dense model's
    ``predict_examples`` input."""
    return [serialize_dense_example([], row) for row in dense_queries(vectors)]


def serialized_examples(rows: Sequence[Row]) -> list[bytes]:
    """Each row as a serialized ``tf.train.Example`` (the TFRecord schema, no labels)."""
    return [serialize_example([], ids, vals) for ids, vals in rows]


def rows_from_padded(feature_ids: np.ndarray, feature_values: np.ndarray) -> list[Row]:
    """Inverse of padding: drops the -1 entries of each row."""
    out = []
    for ids, vals in zip(np.asarray(feature_ids), np.asarray(feature_values)):
        keep = ids >= 0
        out.append((ids[keep].tolist(), vals[keep].tolist()))
    return out


def sample_examples(inputs: dict, texts: Sequence[str] | None = None) -> list[bytes]:
    """The serialized tf.Examples of a signature's sample ``inputs`` (padded sparse
    ``feature_ids`` / ``feature_values``, or dense ``embedding``), or of a text model's
    raw ``texts`` (of which ``inputs`` is the featurisation)."""
    if texts is not None:
        return text_examples(texts)
    if DENSE_KEY in inputs:
        return dense_examples(inputs[DENSE_KEY])
    return serialized_examples(rows_from_padded(inputs["feature_ids"],
                                                inputs["feature_values"]))


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def filter_inputs(batch: int, exclude=None, restrict=None, top_k: int | None = None) -> dict:
    """A filtered signature's extra inputs for ``batch`` queries.

    Args:
        batch: The number of queries.
        exclude: Class ids never returned: one list for every query, or one list per
            query; ``None`` or empty for none.
        restrict: Class ids the answer must come from, as ``exclude``; an empty list means
            no restriction.
        top_k: Classes per answer, at most the export's k; ``None`` or 0: the export's k.

    Returns:
        ``{"exclude_ids": int64 [batch, m], "restrict_ids": int64 [batch, n],
        "top_k": int32}``, padded with -1.
    """
    def rows(ids, name):
        if ids is None or len(ids) == 0:
            return [[] for _ in range(batch)]
        if all(isinstance(x, (list, tuple, np.ndarray)) for x in ids):
            if len(ids) != batch:
                raise ValueError(f"{name}: {len(ids)} rows for {batch} queries")
            return [list(r) for r in ids]
        return [list(ids) for _ in range(batch)]

    def padded(lists):
        out = np.full((batch, max([len(r) for r in lists] + [1])), -1, np.int64)
        for i, r in enumerate(lists):
            out[i, :len(r)] = r
        return out

    return {"exclude_ids": padded(rows(exclude, "exclude")),
            "restrict_ids": padded(rows(restrict, "restrict")),
            "top_k": np.int32(top_k or 0)}


def _inputs(queries, signature: str, text: bool, dense: bool = False) -> dict:
    """The named input batches of ``signature`` for ``queries`` (numpy arrays or lists)."""
    if dense:
        if text:
            raise ValueError("dense queries are vectors, not raw text: a dense model has no "
                             "predict_text")
        vectors = dense_queries(queries)
        return {"examples": dense_examples(vectors)} if signature == PREDICT_EXAMPLES \
            else {DENSE_KEY: vectors}
    if signature == PREDICT_TEXT:
        return {"text": text_queries(queries)}
    if signature == PREDICT_EXAMPLES:
        return {"examples": text_examples(text_queries(queries)) if text
                else serialized_examples(_rows(queries))}
    return pad_batch(_rows(queries))


def _filtered(signature: str, inputs: dict, exclude, restrict, top_k) -> tuple[str, dict]:
    """``(signature, inputs)``, switched to the filtered twin when a filter is given."""
    if exclude is None and restrict is None and top_k is None:
        return signature, inputs
    batch = len(next(iter(inputs.values())))
    return signature + FILTERED, {**inputs, **filter_inputs(batch, exclude, restrict, top_k)}


def rest_body(queries, signature: str = SERVING_DEFAULT, layout: str = "columnar",
              text: bool = False, exclude=None, restrict=None,
              top_k: int | None = None, dense: bool = False) -> dict:
    """The JSON object for TensorFlow Serving's REST predict API.

    Args:
        queries: Text lines (or one string of lines), or parsed ``(ids, values)`` rows;
            for ``predict_text`` (or with ``text``) raw query strings; with ``dense``
            vectors (see :func:`dense_queries`).
        signature: ``serving_default``, ``predict_examples`` or ``predict_text``.
        layout: ``"columnar"`` (``{"inputs": {name: batch}}``; the answer comes back as
            ``{"outputs": {name: batch}}``) or ``"row"`` (``{"instances": [{name: value}]}``;
            the answer is ``{"predictions": [{name: value}]}``).
        text: The queries are raw text for a text model (``predict_examples`` then sends
            tf.Examples holding ``text``).
        exclude, restrict, top_k: Per-request filters (see :func:`filter_inputs`): with
            any of them the request goes to the signature's ``_filtered`` twin, in the
            columnar layout (its scalar ``top_k`` has no batch dimension to split into
            instances).
        dense: The queries are vectors for a dense model: ``serving_default`` gets them as
            ``embedding``, ``predict_examples`` as tf.Examples holding it.

    Returns:
        A dict; send ``json.dumps`` of it (see :func:`rest_json`).

    Raises:
        ValueError: for an unknown signature or layout, or filters in the row layout.
        DataFormatError: for a malformed line.
    """
    if signature not in ALL_SIGNATURES:
        raise ValueError(f"signature must be one of {ALL_SIGNATURES}, got {signature!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    text = _check_text(signature, text)
    name, inputs = _filtered(signature, _inputs(queries, signature, text, dense), exclude,
                             restrict, top_k)
    if name != signature and layout == "row":
        raise ValueError("filtered requests take the columnar layout: their top_k is one "
                         "scalar for the whole request")

    def jsonable(key, value):
        if key == "examples":
            return [_b64(x) for x in value]
        return value.tolist() if isinstance(value, np.ndarray) else value

    columns = {k: jsonable(k, v) for k, v in inputs.items()}
    if layout == "row":
        # Row-layout instances are stacked into one tensor: every row has the batch's width.
        keys = list(columns)
        return {"signature_name": name,
                "instances": [dict(zip(keys, values)) for values in zip(*columns.values())]}
    return {"signature_name": name, "inputs": columns}


def _check_text(signature: str, text: bool) -> bool:
    if text and signature == SERVING_DEFAULT:
        raise ValueError("raw text queries go to predict_text (or predict_examples); "
                         "serving_default takes feature ids")
    return text or signature == PREDICT_TEXT


def rest_json(queries, signature: str = SERVING_DEFAULT, layout: str = "columnar",
              text: bool = False, exclude=None, restrict=None,
              top_k: int | None = None, dense: bool = False) -> str:
    """:func:`rest_body` as a JSON string, ready to POST (UTF-8 text kept as is)."""
    return json.dumps(rest_body(queries, signature, layout, text, exclude, restrict, top_k,
                                dense), separators=(",", ":"), ensure_ascii=False)


def grpc_request(queries, signature: str = SERVING_DEFAULT, model_name: str = "mach",
                 version: int | None = None, text: bool = False, exclude=None,
                 restrict=None, top_k: int | None = None, dense: bool = False):
    """A ``tensorflow.serving.PredictRequest`` for TensorFlow Serving's gRPC API.

    Args:
        queries: Text lines (or one string of lines), or parsed ``(ids, values)`` rows;
            for ``predict_text`` (or with ``text``) raw query strings; with ``dense``
            vectors (see :func:`dense_queries`).
        signature: ``serving_default``, ``predict_examples`` or ``predict_text``.
        model_name: The served model's name (``MODEL_NAME`` of the container).
        version: A specific version; ``None`` lets the server pick its latest.
        text: The queries are raw text (see :func:`rest_body`).
        exclude, restrict, top_k: Per-request filters (see :func:`filter_inputs`); with any
            of them the request goes to the signature's ``_filtered`` twin.
        dense: The queries are vectors for a dense model (see :func:`rest_body`).

    Raises:
        ValueError: for an unknown signature.
        DataFormatError: for a malformed line.
        ImportError: naming :data:`SERVING_API_INSTALL` when ``tensorflow-serving-api`` is
            not installed.
    """
    _require_serving_api()
    if signature not in ALL_SIGNATURES:
        raise ValueError(f"signature must be one of {ALL_SIGNATURES}, got {signature!r}")
    text = _check_text(signature, text)
    name, inputs = _filtered(signature, _inputs(queries, signature, text, dense), exclude,
                             restrict, top_k)
    return predict_request(inputs, name, model_name, version)


def input_tensors(inputs: dict) -> dict:
    """The ``TensorProto`` of each named input: ``feature_ids`` / ``feature_values`` arrays,
    a dense model's ``embedding`` (float32 ``[batch, d]``), ``examples`` (a list of
    serialized tf.Examples) or ``text`` (a list of query strings); for the filtered
    signatures also ``exclude_ids`` / ``restrict_ids`` (int64) and ``top_k`` (an int32
    scalar).

    Raises:
        ValueError: for an ``embedding`` that is not two-dimensional.
    """
    out = {}
    for name, value in inputs.items():
        if name == DENSE_KEY:
            value = np.asarray(value, np.float32)
            if value.ndim != 2:
                raise ValueError(f"{DENSE_KEY}: expected float32 [batch, d], got shape "
                                 f"{list(value.shape)}")
            proto = tf.make_tensor_proto(value)
        elif name == "examples":
            proto = tf.make_tensor_proto(list(value), dtype=tf.string, shape=[len(value)])
        elif name == "text":
            value = [v.encode("utf-8") if isinstance(v, str) else v for v in value]
            proto = tf.make_tensor_proto(value, dtype=tf.string, shape=[len(value)])
        elif name.endswith("_ids"):  # feature_ids, and exclude_ids / restrict_ids
            proto = tf.make_tensor_proto(np.asarray(value, np.int64))
        elif name == "top_k":
            proto = tf.make_tensor_proto(np.int32(value))
        else:
            proto = tf.make_tensor_proto(np.asarray(value, np.float32))
        out[name] = proto
    return out


def _require_serving_api() -> None:
    if predict_pb2 is None:
        raise ImportError(
            f"building a gRPC PredictRequest needs TensorFlow Serving's proto classes: "
            f"{SERVING_API_INSTALL} (--no-deps because the package declares the full "
            f"'tensorflow' package, which would install a second TensorFlow beside "
            f"tensorflow-cpu or tensorflow[and-cuda]; it needs only protobuf and grpcio, "
            f"which mach-tf installs). REST bodies (rest_body, rest_json) need nothing more.")


def predict_request(inputs: dict, signature: str = SERVING_DEFAULT, model_name: str = "mach",
                    version: int | None = None):
    """A ``PredictRequest`` proto from named inputs (see :func:`input_tensors`).

    Raises:
        ImportError: naming :data:`SERVING_API_INSTALL` when ``tensorflow-serving-api`` is
            not installed (:func:`export.serving_protos.encode_predict_request` gives the
            request's bytes without it).
    """
    _require_serving_api()
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = int(version)
    for name, proto in input_tensors(inputs).items():
        req.inputs[name].CopyFrom(proto)
    return req


def response_outputs(response) -> dict:
    """The outputs of a ``PredictResponse`` as numpy arrays (``labels`` as bytes)."""
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
