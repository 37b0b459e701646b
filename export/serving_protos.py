"""TensorFlow Serving's request protos in their public wire format, without its Python package.

``tensorflow-serving-api`` declares the full ``tensorflow`` package as a dependency, so it is
not one of mach-tf's: an export must write its warmup records without it. The few messages
an export needs are encoded (and decoded, for checks) here by hand, following
``tensorflow_serving/apis/{prediction_log,predict,model}.proto``::

    PredictionLog { PredictLog predict_log = 6; }
    PredictLog    { PredictRequest request = 1; }
    PredictRequest { ModelSpec model_spec = 1; map<string, TensorProto> inputs = 2; }
    ModelSpec     { string name = 1; google.protobuf.Int64Value version = 2;
                    string signature_name = 3; }
    Int64Value    { int64 value = 1; }

The tensors themselves are TensorFlow's ``TensorProto``, serialized by TensorFlow. A map
field is a repeated message ``{key = 1; value = 2}``; fields are written in field-number
order, and default (empty) values are left out, as proto3 does.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

from tensorflow.core.framework import tensor_pb2

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_PREDICTION_LOG_PREDICT_LOG = 6
_PREDICTION_LOG_KINDS = (2, 3, 4, 5, 7)  # classify, regress, multi-inference, ...
_PREDICT_LOG_REQUEST = 1
_REQUEST_MODEL_SPEC, _REQUEST_INPUTS = 1, 2
_SPEC_NAME, _SPEC_VERSION, _SPEC_SIGNATURE_NAME = 1, 2, 3
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_INT64_VALUE = 1
_UINT64 = 1 << 64


@dataclasses.dataclass
class DecodedRequest:
    """The fields of a ``PredictRequest`` that mach-tf writes.

    Attributes:
        model_name: ``model_spec.name``.
        signature_name: ``model_spec.signature_name``.
        version: ``model_spec.version.value``, or ``None`` when the request names none.
        inputs: The named input tensors.
    """

    model_name: str
    signature_name: str
    version: int | None
    inputs: dict[str, tensor_pb2.TensorProto]


def _varint(value: int) -> bytes:
    value &= _UINT64 - 1  # negative int64s are sent as their 64-bit two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _tag(number, _LEN) + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    return _length_delimited(number, text.encode("utf-8")) if text else b""


def encode_predict_request(inputs: Mapping[str, tensor_pb2.TensorProto], signature: str,
                           model_name: str, version: int | None = None) -> bytes:
    """A serialized ``tensorflow.serving.PredictRequest``.

    Args:
        inputs: Named input tensors (``tf.make_tensor_proto`` gives them).
        signature: ``model_spec.signature_name``.
        model_name: ``model_spec.name``.
        version: ``model_spec.version``; ``None`` lets the server pick its latest.

    Returns:
        The bytes TensorFlow Serving parses as that request.
    """
    spec = _string(_SPEC_NAME, model_name)
    if version is not None:
        value = _tag(_INT64_VALUE, _VARINT) + _varint(int(version)) if version else b""
        spec += _length_delimited(_SPEC_VERSION, value)
    spec += _string(_SPEC_SIGNATURE_NAME, signature)
    out = _length_delimited(_REQUEST_MODEL_SPEC, spec)
    for name, tensor in inputs.items():
        entry = _string(_ENTRY_KEY, name) + \
            _length_delimited(_ENTRY_VALUE, tensor.SerializeToString())
        out += _length_delimited(_REQUEST_INPUTS, entry)
    return out


def encode_prediction_log(inputs: Mapping[str, tensor_pb2.TensorProto], signature: str,
                          model_name: str, version: int | None = None) -> bytes:
    """A serialized ``tensorflow.serving.PredictionLog`` holding one ``PredictLog`` with the
    request of :func:`encode_predict_request` (a warmup record)."""
    request = encode_predict_request(inputs, signature, model_name, version)
    return _length_delimited(_PREDICTION_LOG_PREDICT_LOG,
                             _length_delimited(_PREDICT_LOG_REQUEST, request))


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or malformed varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value & (_UINT64 - 1), pos


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` of each field of a serialized message."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type in (_I64, _I32):
            size = 8 if wire_type == _I64 else 4
            value, pos = data[pos:pos + size], pos + size
        elif wire_type == _LEN:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > len(data):
            raise ValueError("truncated message")
        yield number, wire_type, value


def _message(data: bytes, number: int) -> bytes:
    """The embedded message ``number``: its occurrences concatenated, which is how protobuf
    merges a message field seen more than once."""
    return b"".join(v for n, t, v in _fields(data) if n == number and t == _LEN)


def _last_string(data: bytes, number: int) -> str:
    found = [v for n, t, v in _fields(data) if n == number and t == _LEN]
    return found[-1].decode("utf-8") if found else ""


def decode_predict_request(data: bytes) -> DecodedRequest:
    """The fields of a serialized ``PredictRequest`` (others are skipped).

    Raises:
        ValueError: for bytes that are not a well-formed message.
    """
    spec = _message(data, _REQUEST_MODEL_SPEC)
    versions = [v for n, t, v in _fields(spec) if n == _SPEC_VERSION and t == _LEN]
    version = None
    if versions:
        raw = [v for n, t, v in _fields(b"".join(versions))
               if n == _INT64_VALUE and t == _VARINT]
        version = raw[-1] - _UINT64 * (raw[-1] >> 63) if raw else 0
    inputs = {}
    for number, wire_type, entry in _fields(data):
        if number == _REQUEST_INPUTS and wire_type == _LEN:
            # A later entry with the same key replaces an earlier one, as in protobuf maps.
            inputs[_last_string(entry, _ENTRY_KEY)] = \
                tensor_pb2.TensorProto.FromString(_message(entry, _ENTRY_VALUE))
    return DecodedRequest(_last_string(spec, _SPEC_NAME),
                          _last_string(spec, _SPEC_SIGNATURE_NAME), version, inputs)


def decode_prediction_log(data: bytes) -> DecodedRequest:
    """The request of a serialized ``PredictionLog`` holding a ``PredictLog``.

    Raises:
        ValueError: for bytes that are not a well-formed message, or a log of another kind
            (classify, regress, ...).
    """
    log = None
    for number, wire_type, value in _fields(data):
        if number == _PREDICTION_LOG_PREDICT_LOG and wire_type == _LEN:
            log = (log or b"") + value
        elif number in _PREDICTION_LOG_KINDS:  # another member of the log_type oneof
            log = None
    if log is None:
        raise ValueError("not a PredictionLog holding a predict_log")
    return decode_predict_request(_message(log, _PREDICT_LOG_REQUEST))
