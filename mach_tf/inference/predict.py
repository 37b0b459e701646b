"""Query an exported SavedModel with XMC text lines, or a text model with raw queries (the
``mach-tf predict [--text]`` command)."""

from __future__ import annotations

import json
from typing import IO, Callable, Iterable

import numpy as np
import tensorflow as tf

from mach_tf import rundir
from mach_tf.inference.evaluation import (export_info_path, filtered_signature, no_filters,
                                          resolve_export)
from mach_tf.inference.filters import excluded_set
from tfrecords_tools.parse import DataFormatError, is_header_line, parse_line
from tfrecords_tools.text_format import query_text


def pad_batch(rows: list[tuple[list[int], list[float]]]) -> dict:
    """Pads ``(ids, values)`` rows into the serving signature's tensors (ids padded -1)."""
    width = max((len(ids) for ids, _ in rows), default=0)
    ids = np.full((len(rows), width), -1, np.int64)
    vals = np.zeros((len(rows), width), np.float32)
    for i, (fi, fv) in enumerate(rows):
        ids[i, :len(fi)] = fi
        vals[i, :len(fv)] = fv
    return {"feature_ids": ids, "feature_values": vals}


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


def predict_lines(model: str, lines: Iterable[str], out: IO[str], top_k: int | None = None,
                  batch_size: int = 256, source: str = "<stdin>",
                  log: Callable[[str], None] | None = None, exclude_classes=None) -> int:
    """Answers every input line, a query ``[labels] id:value ...``, with one JSON line.

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
    loaded, _ = load_signature(model)
    fn = answering(loaded, model, "serving_default", exclude_classes)
    takes_text = "predict_text" in loaded.signatures
    num_features = _export_dimension(model, "num_features")
    n = 0
    batch: list[tuple[list[int], list[float]]] = []

    def flush():
        if not batch:
            return
        t = pad_batch(batch)
        res = fn(feature_ids=tf.constant(t["feature_ids"]),
                 feature_values=tf.constant(t["feature_values"]))
        _write_answers(res, len(batch), out, top_k)
        batch.clear()

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
            flush()
            reason = str(e)
            if takes_text:
                reason = (f"{reason}; this export takes text queries: add --text "
                          f"(predict_text_lines in Python)")
            raise DataFormatError(source, lineno, reason) from None
        batch.append((ids, vals))
        n += 1
        if len(batch) >= batch_size:
            flush()
    flush()
    return n


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
    loaded, _ = load_signature(model)
    if "predict_text" not in loaded.signatures:
        raise ValueError(f"{model}: the export has no predict_text signature (its model was "
                         f"trained on sparse features, not text); send XMC lines without "
                         f"--text")
    fn = answering(loaded, model, "predict_text", exclude_classes)
    n = 0
    batch: list[bytes] = []

    def flush():
        if batch:
            _write_answers(fn(text=tf.constant(batch, tf.string)), len(batch), out, top_k)
            batch.clear()

    for lineno, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8") if isinstance(line, bytes) else line
            if lineno == 1:
                text = text.lstrip("\ufeff")
            query = query_text(text).encode("utf-8")
        except UnicodeError as e:
            flush()  # the lines before the fault are answered
            raise DataFormatError(source, lineno, f"not valid UTF-8 ({e.reason} at byte "
                                                  f"{getattr(e, 'start', 0) + 1})") from None
        batch.append(query)
        n += 1
        if len(batch) >= batch_size:
            flush()
    flush()
    return n
