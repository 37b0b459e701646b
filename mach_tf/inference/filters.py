"""Which classes a query may be answered with: a catalogue's retired classes, and a
request's own ``exclude_ids`` and ``restrict_ids``.

Three sources combine:

* **excluded classes** of an export (or an evaluation): a sorted id list, held by
  :class:`~mach_tf.inference.decoder.MergedTopK` as a weight; never returned by anything;
* a request's **exclude_ids** ``[batch, m]``: ids never returned for that row;
* a request's **restrict_ids** ``[batch, n]``: when a row holds any id, its answer comes from
  those ids only, scored directly (``O(R * n)`` gathers, not ``O(K)``).

Both request tensors are padded with -1; a row of only -1 has no exclusion or restriction.
A filtered answer is exact: the top-k of the allowed classes by the very scores (bit for
bit) the unfiltered decoder gives them.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfrecords_tools.parse import DataFormatError
from tfrecords_tools.paths import expand_path


def read_class_ids(path: str, num_classes: int) -> np.ndarray:
    """The class ids of a file of one id per line (blank lines and ``#`` comments ignored),
    sorted and unique, as int64.

    Raises:
        DataFormatError: naming the file and line of an id that is not an integer in
            ``[0, num_classes)``.
        FileNotFoundError: for a missing file.
    """
    path = expand_path(path)
    ids = []
    with tf.io.gfile.GFile(path, "r") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            if not (text.isascii() and text.isdigit()):
                raise DataFormatError(path, lineno, f"malformed class id {text[:40]!r}: "
                                                    f"expected a non-negative integer")
            value = int(text)
            if value >= num_classes:
                raise DataFormatError(path, lineno, f"class id {value} out of range: the "
                                                    f"model has {num_classes} classes "
                                                    f"(ids 0..{num_classes - 1})")
            ids.append(value)
    return np.unique(np.asarray(ids, np.int64))


def excluded_set(classes, num_classes: int) -> np.ndarray:
    """Sorted unique int64 class ids from a file (see :func:`read_class_ids`) or ids;
    empty for ``None``.

    Raises:
        ValueError: for an id outside ``[0, num_classes)`` (a
            :class:`~tfrecords_tools.parse.DataFormatError` naming the line for a file).
    """
    if classes is None:
        return np.zeros(0, np.int64)
    if isinstance(classes, (str, os.PathLike)):
        return read_class_ids(classes, num_classes)
    ids = np.unique(np.asarray(classes, np.int64))
    if ids.size and (ids[0] < 0 or ids[-1] >= num_classes):
        raise ValueError(f"excluded classes must be class ids in [0, {num_classes}), got "
                         f"{int(ids[0]) if ids[0] < 0 else int(ids[-1])}")
    return ids


def in_sorted(ids, sorted_ids):
    """Whether each of ``ids`` (int64, any shape) is in the sorted 1-D ``sorted_ids``."""
    flat = tf.reshape(ids, [-1])
    n = tf.size(sorted_ids, out_type=tf.int64)
    pos = tf.minimum(tf.searchsorted(sorted_ids, flat, out_type=tf.int64),
                     tf.maximum(n - 1, 0))
    found = tf.logical_and(n > 0, tf.equal(tf.gather(sorted_ids, pos), flat))
    return tf.reshape(found, tf.shape(ids))


def in_rows(ids, row, table):
    """Whether ``ids[i]`` is among ``table[row[i]]`` (``ids`` and ``row`` int64 ``[T]``,
    ``table`` int64 ``[batch, m]`` padded with -1, which matches no class)."""
    return tf.reduce_any(tf.equal(tf.gather(table, row), ids[:, None]), axis=1)


def allowed_fn(excluded=None, exclude_ids=None):
    """``allowed(ids [T], row [T]) -> bool [T]``: not excluded by the export nor by the row's
    ``exclude_ids``; ``None`` when nothing is excluded."""
    if excluded is None and exclude_ids is None:
        return None

    def allowed(ids, row):
        ok = ids >= 0
        if excluded is not None:
            ok = tf.logical_and(ok, tf.logical_not(in_sorted(ids, excluded)))
        if exclude_ids is not None:
            ok = tf.logical_and(ok, tf.logical_not(in_rows(ids, row, exclude_ids)))
        return ok
    return allowed


def has_restriction(restrict_ids):
    """bool ``[batch]``: the rows whose ``restrict_ids`` hold an id."""
    return tf.reduce_any(restrict_ids >= 0, axis=1)


def check_filters(exclude_ids, restrict_ids, top_k, batch, num_classes: int, max_k: int):
    """Assertions that turn a bad filtered request into INVALID_ARGUMENT."""
    checks = []
    for name, t in (("exclude_ids", exclude_ids), ("restrict_ids", restrict_ids)):
        checks += [
            tf.debugging.assert_equal(
                tf.shape(t, out_type=tf.int64)[0], tf.cast(batch, tf.int64),
                message=f"{name} must have one row per query: [batch, n], padded with -1"),
            tf.debugging.assert_greater_equal(
                t, tf.constant(-1, tf.int64), message=f"{name} must be >= 0 (or -1 for "
                                                      f"padding)"),
            tf.debugging.assert_less(
                t, tf.constant(num_classes, tf.int64),
                message=f"{name} must be < num_classes={num_classes}"),
        ]
    checks += [
        tf.debugging.assert_greater_equal(top_k, tf.constant(0, tf.int32),
                                          message="top_k must be >= 0 (0: the export's k)"),
        tf.debugging.assert_less_equal(
            top_k, tf.constant(max_k, tf.int32),
            message=f"top_k must be <= {max_k}, the k this model was exported with"),
    ]
    return checks
