"""Query an exported SavedModel with XMC text lines, a dense model with lines of numbers,
or a text model with raw queries (the ``mach-tf predict [--text]`` command)."""

from __future__ import annotations

import json
import math
import re
from typing import IO, Callable, Iterable

import numpy as np
import tensorflow as tf

from mach_tf import rundir
from mach_tf.data import DENSE_KEY
from mach_tf.inference.evaluation import (export_info_path, filtered_signature, no_filters,
                                          resolve_export)
from mach_tf.inference.filters import excluded_set
from tfrecords_tools.parse import FLOAT32_OVERFLOW, DataFormatError, is_header_line, parse_line
from tfrecords_tools.text_format import query_text

#: Between two values of a dense query line: a comma (spaces around it allowed) or spaces.
_VECTOR_SEPARATOR = re.compile(r"\s*,\s*|\s+")


def pad_batch(rows: list[tuple[list[int], list[float]]]) -> dict:
    """Pads ``(ids, values)`` rows into the serving signature's tensors (ids padded -1)."""
    width = max((len(ids) for ids, _ in rows), default=0)
    ids = np.full((len(rows), width), -1, np.int64)
    vals = np.zeros((len(rows), width), np.float32)
    for i, (fi, fv) in enumerate(rows):
        ids[i, :len(fi)] = fi
        vals[i, :len(fv)] = fv
    return {"feature_ids": ids, "feature_values": vals}


def parse_vector_line(text: str, width: int | None = None) -> list[float]:
    """The values of a dense query line: d numbers separated by spaces or commas.

    Args:
        text: The line, without its line end.
        width: d, the number of values the model reads; ``None``: any number but none.

    Returns:
        The values, as floats.

    Raises:
        ValueError: naming what is wrong: an empty line (a vector cannot be empty), a value
            that is not a number, not finite or beyond float32 (by its position), or a count
            other than ``width``.
    """
    stripped = text.strip()
    want = f"{width} numbers" if width is not None else "numbers"
    if not stripped:
        raise ValueError(f"empty line: a dense query is a vector of {want} separated by "
                         f"spaces or commas")
    values = []
    for i, part in enumerate(_VECTOR_SEPARATOR.split(stripped), start=1):
        try:
            v = float(part)
        except ValueError:
            what = "is empty (two commas in a row?)" if not part else \
                f"{part[:40]!r} is not a number"
            raise ValueError(f"value {i} {what}; a dense query is a vector of {want} "
                             f"separated by spaces or commas") from None
        if not math.isfinite(v):
            raise ValueError(f"value {i} {part!r} is not finite")
        if abs(v) >= FLOAT32_OVERFLOW:
            raise ValueError(f"value {i} {part!r} overflows float32 (|value| must be below "
                             f"3.4028235e+38)")
        values.append(v)
    if width is not None and len(values) != width:
        raise ValueError(f"{len(values)} values; the model reads vectors of "
                         f"num_features={width} values")
    return values


def takes_dense(signature) -> bool:
    """Whether an export's signature takes dense vectors (``embedding``)."""
    return DENSE_KEY in signature.structured_input_signature[1]


def load_signature(model: str, name: str = "serving_default"):
    path = resolve_export(model)
    loaded = tf.saved_model.load(path)
    return loaded, loaded.signatures[name]


def _export_dimension(model: str, name: str) -> int | None:
    """``num_features`` or ``num_classes`` of the export's config (``None`` without its
    info file: the signature still checks ids), so a bad id is named with its input line."""
    info = export_info_path(resolve_export(model))
    try:
        return int(rundir.read_json(info)["config"][name])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def answering(loaded, model: str, name: str, exclude_classes=None):
    """``call(**inputs) -> outputs`` of the export's signature ``name``; with
    ``exclude_classes`` (a file of class ids or the ids), its filtered twin, never
    returning those classes."""
    if exclude_classes is None:
        return loaded.signatures[name]
    num_classes = _export_dimension(model, "num_classes")
    if num_classes is None:
        raise ValueError(f"{model}: the export has no {export_info_path('')} to check class "
                         f"ids against; export the run again")
    excluded = excluded_set(exclude_classes, num_classes)
    fn = filtered_signature(loaded, model, name)

    def call(**inputs):
        batch = tf.shape(next(iter(inputs.values())))[0]
        return fn(**inputs, **no_filters(batch, excluded))
    return call


def _write_answers(res: dict, count: int, out: IO[str], top_k: int | None) -> None:
    """One JSON line per query of a signature's answer (padding dropped)."""
    ids, scores = res["label_ids"].numpy(), res["scores"].numpy()
    names = res["labels"].numpy()
    k = ids.shape[1] if top_k is None else min(top_k, ids.shape[1])
    for i in range(count):
        keep = ids[i, :k] >= 0
        out.write(json.dumps({
            "label_ids": ids[i, :k][keep].tolist(),
            "scores": [round(float(s), 6) for s in scores[i, :k][keep]],
            "labels": [x.decode("utf-8", "replace") for x in names[i, :k][keep]]}) + "\n")
    out.flush()


def _answer_in_batches(queries: Iterable, answer: Callable[[list], dict], out: IO[str],
                       top_k: int | None, batch_size: int) -> int:
    """Answers the queries ``queries`` yields, ``batch_size`` at a time through
    ``answer(batch) -> outputs``, one JSON line each, in order. When ``queries`` raises (a
    bad input line), the queries before it are answered first.

    Returns:
        The number of queries answered.
    """
    n = 0
    batch: list = []

    def flush():
        if batch:
            _write_answers(answer(batch), len(batch), out, top_k)
            batch.clear()

    try:
        for query in queries:
            batch.append(query)
            n += 1
            if len(batch) >= batch_size:
                flush()
    except DataFormatError:
        flush()  # the lines before the fault are answered
        raise
    flush()
    return n


def predict_lines(model: str, lines: Iterable[str], out: IO[str], top_k: int | None = None,
                  batch_size: int = 256, source: str = "<stdin>",
                  log: Callable[[str], None] | None = None, exclude_classes=None) -> int:
    """Answers every input line, a query ``[labels] id:value ...`` (for a dense export, d
    numbers: see :func:`predict_dense_lines`), with one JSON line.

    Each output line is ``{"label_ids": [...], "scores": [...], "labels": [...]}``, in the
    order of the input lines: an empty line is an empty query (no features) and is answered
    like one, so answer ``i`` always belongs to input line ``i``. The labels of a line, if
    any, are ignored, so a test file can be piped in as is; its XMC header
    (``num_points num_features num_labels``, never a query) is skipped when it comes first,
    and ``log`` is told so. ``exclude_classes`` (a file of class ids, or the ids) are never
    answered, through the export's filtered signature.

    Returns:
        The number of queries answered.

    Raises:
        DataFormatError: naming the input line that is malformed, after the lines before it
            are answered. When the export takes raw text (it has ``predict_text``), the
            message says to send text.
    """
    loaded, default = load_signature(model)
    if takes_dense(default):
        return _answer_dense(loaded, model, lines, out, top_k, batch_size, source,
                             exclude_classes)
    fn = answering(loaded, model, "serving_default", exclude_classes)
    takes_text = "predict_text" in loaded.signatures
    num_features = _export_dimension(model, "num_features")

    def answer(batch):
        t = pad_batch(batch)
        return fn(feature_ids=tf.constant(t["feature_ids"]),
                  feature_values=tf.constant(t["feature_values"]))

    def queries():
        for lineno, line in enumerate(lines, start=1):
            text = line.rstrip("\r\n")
            if lineno == 1:
                text = text.lstrip("\ufeff")
                if is_header_line(text):
                    if log is not None:
                        log(f"{source}:1: {text.strip()!r} is an XMC header (num_points "
                            f"num_features num_labels), not a query: skipped")
                    continue
            try:
                _labels, ids, vals = parse_line(text, num_features) if text.strip() else \
                    ([], [], [])
            except ValueError as e:
                reason = str(e)
                if takes_text:
                    reason = (f"{reason}; this export takes text queries: add --text "
                              f"(predict_text_lines in Python)")
                raise DataFormatError(source, lineno, reason) from None
            yield ids, vals

    return _answer_in_batches(queries(), answer, out, top_k, batch_size)


def predict_dense_lines(model: str, lines: Iterable[str], out: IO[str],
                        top_k: int | None = None, batch_size: int = 256,
                        source: str = "<stdin>", exclude_classes=None) -> int:
    """Answers every line, a dense query of d numbers separated by spaces or commas, with
    one JSON line (as :func:`predict_lines`), through ``serving_default``.

    Every line is a query, answered in input order; an empty line is refused (a vector
    cannot be empty). d is the export's ``num_features``.

    Returns:
        The number of queries answered.

    Raises:
        DataFormatError: naming the line that is empty, holds another number of values, or
            a value that is not a finite float32 number, after the lines before it are
            answered.
        ValueError: when the export takes sparse features or text, not dense vectors.
    """
    loaded, default = load_signature(model)
    if not takes_dense(default):
        kind = "text" if "predict_text" in loaded.signatures else "sparse features"
        raise ValueError(f"{model}: the export's model was trained on {kind}, not dense "
                         f"vectors")
    return _answer_dense(loaded, model, lines, out, top_k, batch_size, source,
                         exclude_classes)


def _answer_dense(loaded, model: str, lines: Iterable[str], out: IO[str], top_k: int | None,
                  batch_size: int, source: str, exclude_classes) -> int:
    """:func:`predict_dense_lines` on an export already loaded."""
    fn = answering(loaded, model, "serving_default", exclude_classes)

    def answer(batch):
        x = np.asarray(batch, np.float32).reshape(len(batch), -1)
        return fn(**{DENSE_KEY: tf.constant(x)})

    def queries():
        # Without the export's config (an info file removed), the first line sets d; the
        # serving graph still refuses a width other than the model's.
        width = _export_dimension(model, "num_features")
        for lineno, line in enumerate(lines, start=1):
            text = line.rstrip("\r\n")
            if lineno == 1:
                text = text.lstrip("\ufeff")
            try:
                values = parse_vector_line(text, width)
            except ValueError as e:
                raise DataFormatError(source, lineno, str(e)) from None
            width = len(values)
            yield values

    return _answer_in_batches(queries(), answer, out, top_k, batch_size)


def predict_text_lines(model: str, lines: Iterable[bytes | str], out: IO[str],
                       top_k: int | None = None, batch_size: int = 256,
                       source: str = "<stdin>", exclude_classes=None) -> int:
    """Answers every line, a raw query, with one JSON line, through ``predict_text``.

    Every line is a query, answered in input order (an empty line is an empty query,
    answered like one); a line of the text format (``labels<TAB>text``) is answered for its
    text, so a test file can be piped in as is. Lines may be bytes (read from a binary
    stream) or str.

    Returns:
        The number of queries answered.

    Raises:
        DataFormatError: naming a line that is not valid UTF-8, after the lines before it
            are answered.
        ValueError: when the model has no ``predict_text`` (it was not trained on text).
    """
    loaded, default = load_signature(model)
    if "predict_text" not in loaded.signatures:
        if takes_dense(default):
            raise ValueError(f"{model}: the export has no predict_text signature (its model "
                             f"was trained on dense vectors, not text); send lines of numbers "
                             f"without --text")
        raise ValueError(f"{model}: the export has no predict_text signature (its model was "
                         f"trained on sparse features, not text); send XMC lines without "
                         f"--text")
    fn = answering(loaded, model, "predict_text", exclude_classes)

    def queries():
        for lineno, line in enumerate(lines, start=1):
            try:
                text = line.decode("utf-8") if isinstance(line, bytes) else line
                if lineno == 1:
                    text = text.lstrip("\ufeff")
                yield query_text(text).encode("utf-8")
            except UnicodeError as e:
                raise DataFormatError(source, lineno, f"not valid UTF-8 ({e.reason} at byte "
                                                      f"{getattr(e, 'start', 0) + 1})") from None

    return _answer_in_batches(queries(), lambda batch: fn(text=tf.constant(batch, tf.string)),
                              out, top_k, batch_size)
