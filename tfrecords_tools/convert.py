"""Text (XMC / libsvm / labelled text) or dense vectors -> sharded TFRecord files plus a
manifest.

Each point becomes one ``tf.train.Example`` with ``feature_ids`` (int64 list),
``feature_values`` (float list) and ``labels`` (int64 list) -- or, for dense vectors,
``embedding`` (float list of length d) and ``labels``; points are dealt round-robin
to ``PREFIX-00000-of-0000N.tfrecord[.gz]``. ``PREFIX.manifest.json`` describes the shards.
Every file is written under a temporary name and renamed into place only when the whole
conversion succeeded, and the manifest is renamed last, so an interrupted conversion never
leaves a manifest that looks complete.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Iterable

import numpy as np

from tfrecords_tools import atomic
from tfrecords_tools.dense import DenseReader
from tfrecords_tools.manifest import FORMAT_VERSION, Manifest, manifest_path, shard_names
from tfrecords_tools.parse import FLOAT32_OVERFLOW, SparseReader
from tfrecords_tools.paths import expand_path
from tfrecords_tools.text_format import QueryReader

COMPRESSIONS = ("NONE", "GZIP")


def serialize_example(labels, feature_ids, feature_values, text: bytes | None = None) -> bytes:
    """One point as a serialized ``tf.train.Example`` (the package's TFRecord schema)."""
    from tensorflow.core.example import example_pb2, feature_pb2

    feat = {
        "feature_ids": feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=feature_ids)),
        "feature_values": feature_pb2.Feature(
            float_list=feature_pb2.FloatList(value=feature_values)),
        "labels": feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=labels)),
    }
    if text is not None:
        feat["text"] = feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[text]))
    # Deterministic: the map of features in key order. Protobuf otherwise orders map
    # entries per process, so the same point would get other bytes in another process,
    # and the validation split (a keyed hash of each record's bytes) would move with them.
    return example_pb2.Example(
        features=feature_pb2.Features(feature=feat)).SerializeToString(deterministic=True)


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative int64s are ten bytes of two's complement
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (``tag`` = field number << 3 | 2)."""
    return bytes([tag]) + _varint(len(payload)) + payload


def serialize_dense_example(labels, embedding) -> bytes:
    """One dense point (``labels`` and an ``embedding`` of length d, stored as float32) as
    a serialized ``tf.train.Example`` with ``embedding`` and ``labels``.

    The bytes are written directly (the protobuf wire format of ``Example``: a map entry
    per feature, packed ``FloatList`` / ``Int64List`` values): building a message of d
    Python floats per row would be the conversion's bottleneck. A test checks them against
    the protobuf library's own ``Example``.
    """
    floats = np.ascontiguousarray(embedding, dtype="<f4").tobytes()
    ids = b"".join(_varint(int(x)) for x in labels)
    entries = ((b"embedding", _field(0x12, _field(0x0A, floats))),  # Feature.float_list
               (b"labels", _field(0x1A, _field(0x0A, ids))))  # Feature.int64_list
    features = b"".join(_field(0x0A, _field(0x0A, key) + _field(0x12, value))
                        for key, value in entries)
    return _field(0x0A, features)


def check_point(index: int, labels, feature_ids, feature_values, num_features: int,
                num_labels: int) -> None:
    """The text parser's rules for a point built in memory (see :func:`write_examples`)."""
    where = f"point {index}"
    if len(feature_ids) != len(feature_values):
        raise ValueError(f"{where}: {len(feature_ids)} feature ids but "
                         f"{len(feature_values)} feature values")
    for what, ids, limit in (("feature", feature_ids, num_features),
                             ("label", labels, num_labels)):
        for x in ids:
            if not 0 <= int(x) < limit:
                raise ValueError(f"{where}: {what} id {int(x)} outside [0, {limit})")
    if len(set(int(x) for x in feature_ids)) != len(feature_ids):
        raise ValueError(f"{where}: repeated feature ids {list(feature_ids)}")
    for v in feature_values:
        if not math.isfinite(v) or abs(v) >= FLOAT32_OVERFLOW:
            raise ValueError(f"{where}: feature value {v!r} is not finite in float32")


class ShardedWriter:
    """Writes serialized examples round-robin to N shards, atomically.

    Use as a context manager: on a clean exit the temporary shards are renamed into place
    (after removing the manifest of an earlier conversion of the prefix); on an exception
    they are deleted. The caller writes the new manifest afterwards.
    """

    def __init__(self, prefix: str, num_shards: int = 1, compression: str = "NONE"):
        import tensorflow as tf

        compression = compression.upper()
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.prefix = prefix = expand_path(prefix)
        self.compression = compression
        self.names = shard_names(prefix, num_shards, compression)
        parent = os.path.dirname(os.path.abspath(prefix))
        tf.io.gfile.makedirs(parent)
        self._tmp = [atomic.temp_path(os.path.join(parent, n)) for n in self.names]
        opts = tf.io.TFRecordOptions(compression_type="GZIP" if compression == "GZIP" else "")
        self._writers = [tf.io.TFRecordWriter(p, opts) for p in self._tmp]
        self.counts = [0] * num_shards
        self.sizes: list[int] = []  # bytes per shard, known after a clean exit
        self._next = 0

    def write(self, record: bytes) -> None:
        i = self._next
        self._writers[i].write(record)
        self.counts[i] += 1
        self._next = (i + 1) % len(self._writers)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        import tensorflow as tf

        for w in self._writers:
            w.close()
        parent = os.path.dirname(os.path.abspath(self.prefix))
        if exc_type is not None:
            for p in self._tmp:
                atomic.discard(p)
            return False
        self.sizes = [tf.io.gfile.stat(p).length for p in self._tmp]
        # A manifest left by an earlier conversion of this prefix would describe the old
        # shards: it goes first, so that no moment exists where it looks complete beside
        # new shards. The new manifest is written last, by the caller.
        old = manifest_path(self.prefix)
        if tf.io.gfile.exists(old):
            tf.io.gfile.remove(old)
        try:
            for p, name in zip(self._tmp, self.names):
                atomic.publish(p, os.path.join(parent, name))
        except BaseException:
            for p in self._tmp:
                atomic.discard(p)
            raise
        return False


class _Progress:
    """A light progress line on stderr (only when it is a terminal, or when forced)."""

    def __init__(self, label: str, enabled: bool | None = None, every_s: float = 1.0):
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.every_s = every_s
        self._t0 = self._last = time.monotonic()

    def update(self, n: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            rate = n / max(now - self._t0, 1e-9)
            sys.stderr.write(f"\r{self.label}: {n:,} points ({rate:,.0f}/s)")
            sys.stderr.flush()
            self._last = now

    def close(self, n: int) -> None:
        if self.enabled:
            self.update(n, force=True)
            sys.stderr.write("\n")


def convert(input_path, prefix: str, fmt: str = "xmc", num_shards: int = 1,
            compression: str = "NONE", num_features: int | None = None,
            num_labels: int | None = None, on_error: str = "fail",
            progress: bool | None = None,
            log: Callable[[str], None] | None = None,
            labels_path=None) -> Manifest:
    """Converts an XMC, libsvm or text-format file, or a ``.npy`` matrix of dense vectors
    and its label file, into sharded TFRecords and a manifest.

    Args:
        input_path: Text file (plain or gzip); for ``fmt="dense"`` the ``[N, d]`` float
            matrix (``numpy.save`` format, memory-mapped and read in chunks).
        prefix: Output prefix; shards are ``PREFIX-0000i-of-0000N.tfrecord[.gz]`` and the
            manifest ``PREFIX.manifest.json``.
        fmt: ``"xmc"``, ``"libsvm"`` or ``"text"`` (``labels<TAB>text`` lines, see
            :mod:`tfrecords_tools.text_format`: each record holds the raw text in ``text``
            and no sparse features), or ``"dense"`` (see :mod:`tfrecords_tools.dense`:
            each record holds ``embedding``, float32 ``[d]``; the manifest records
            ``embedding_dim``).
        num_shards: Number of output shards.
        compression: ``"NONE"`` or ``"GZIP"``.
        num_features: Feature dimension (libsvm: checked, or inferred when omitted).
        num_labels: Label dimension (libsvm: checked, or inferred when omitted).
        on_error: ``"fail"`` or ``"skip"`` (bad lines recorded in the manifest).
        progress: Show a progress line on stderr (default: when stderr is a terminal).
        log: Called with a one-line summary of skipped lines, if any.
        labels_path: For ``fmt="dense"`` (and only then): the label file, one line of
            comma-separated label ids per row of the matrix.

    Returns:
        The written :class:`Manifest`.

    Raises:
        DataFormatError: naming the file and line of the first fault (``on_error="fail"``).
    """
    input_path, prefix = expand_path(input_path), expand_path(prefix)
    is_text, is_dense = fmt == "text", fmt == "dense"
    if (labels_path is not None) != is_dense:
        raise ValueError("labels_path is required with format 'dense' and applies to it "
                         "only (the other formats hold their labels in the input)")
    if is_dense:
        if num_features is not None:
            raise ValueError("num_features does not apply to --format dense: its width is "
                             "the matrix's number of columns")
        reader = DenseReader(input_path, labels_path, num_labels=num_labels,
                             on_error=on_error)
    elif is_text:
        if num_features is not None:
            raise ValueError("num_features does not apply to --format text: text has no "
                             "feature ids (the featuriser's hash dimension is chosen when "
                             "training, 'mach-tf train --text-features D')")
        reader = QueryReader(input_path, num_labels=num_labels, on_error=on_error)
    else:
        reader = SparseReader(input_path, fmt, num_features=num_features,
                              num_labels=num_labels, on_error=on_error)
    bar = _Progress(f"convert {os.path.basename(os.fspath(input_path))}", progress)
    n = nnz = nlab = 0
    with ShardedWriter(prefix, num_shards, compression) as writer:
        for p in reader:
            if is_dense:
                writer.write(serialize_dense_example(p.labels, p.embedding))
            elif is_text:
                writer.write(serialize_example(p.labels, [], [], p.text.encode("utf-8")))
            else:
                writer.write(serialize_example(p.labels, p.feature_ids, p.feature_values))
                nnz += len(p.feature_ids)
            n += 1
            nlab += len(p.labels)
            if n % 4096 == 0:
                bar.update(n)
        bar.close(n)
        if n + len(reader.skipped) != reader.lines_read:  # the accounting promise
            raise RuntimeError(f"{input_path}: {n} converted + {len(reader.skipped)} skipped "
                               f"!= {reader.lines_read} lines read")
    nf, nl = reader.dimensions()
    manifest = Manifest(
        num_examples=n, num_features=nf, num_labels=nl,
        shards=list(writer.names), shard_counts=list(writer.counts),
        shard_bytes=list(writer.sizes), compression=writer.compression,
        format_version=FORMAT_VERSION,
        source={"path": os.path.abspath(os.fspath(input_path)), "format": fmt,
                **({"labels_path": os.path.abspath(os.fspath(reader.path)),
                    "dtype": str(reader.dtype)} if is_dense else {})},
        lines_read=reader.lines_read,
        skipped=[{"line": ln, "reason": r} for ln, r in reader.skipped],
        stats={**({} if is_dense else {"avg_features_per_point": nnz / max(n, 1)}),
               "avg_labels_per_point": nlab / max(n, 1),
               **({"avg_chars_per_text": reader.chars / max(n, 1),
                   "avg_words_per_text": reader.words / max(n, 1)} if is_text else {})},
        text=is_text, embedding_dim=reader.dim if is_dense else None)
    atomic.write_json(manifest_path(prefix), manifest.to_dict())
    manifest.prefix = os.fspath(prefix)
    if reader.skipped and log is not None:
        log(skip_summary(os.fspath(input_path), manifest))
    return manifest


def skip_summary(source: str, manifest: Manifest, show: int = 3) -> str:
    """One line: how many lines were skipped, where they are listed, the first reasons."""
    first = "; ".join(f"line {s['line']}: {s['reason']}" for s in manifest.skipped[:show])
    more = f" (+{len(manifest.skipped) - show} more)" if len(manifest.skipped) > show else ""
    return (f"{source}: converted {manifest.num_examples} and skipped "
            f"{len(manifest.skipped)} of {manifest.lines_read} lines (all listed in "
            f"{manifest.path}); first: {first}{more}")


def write_examples(prefix: str, points: Iterable[tuple], num_features: int, num_labels: int,
                   num_shards: int = 1, compression: str = "NONE",
                   source: dict | None = None) -> Manifest:
    """Writes in-memory points ``(labels, ids, values[, text])`` as a converted dataset.

    Raises:
        ValueError: naming the first point (0-based) that breaks the schema: ids outside
            ``[0, num_features)`` / ``[0, num_labels)``, repeated feature ids, as many
            values as ids, values finite in float32. Nothing is written then.
    """
    n = 0
    has_text = False
    with ShardedWriter(prefix, num_shards, compression) as writer:
        for p in points:
            check_point(n, p[0], p[1], p[2], num_features, num_labels)
            writer.write(serialize_example(*p))
            has_text = has_text or (len(p) > 3 and p[3] is not None)
            n += 1
    manifest = Manifest(num_examples=n, num_features=num_features, num_labels=num_labels,
                        text=has_text,
                        shards=list(writer.names), shard_counts=list(writer.counts),
                        shard_bytes=list(writer.sizes), compression=writer.compression,
                        format_version=FORMAT_VERSION,
                        source=source or {"format": "python"}, lines_read=n)
    atomic.write_json(manifest_path(prefix), manifest.to_dict())
    manifest.prefix = os.fspath(prefix)
    return manifest
