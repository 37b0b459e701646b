"""Reading a converted dataset back in full, and naming the shard when a read fails.

:meth:`Manifest.load` checks what is cheap (existence, sizes, the manifest's own
consistency). What only reading can find is checked here: TFRecord CRCs (a corrupt or
truncated shard), the records' schema, ids within the manifest's dimensions, and the
record count of every shard against the manifest.

tf.data reports a damaged record as a bare ``DataLossError`` ("corrupted record at
4750") without the file, and training interleaves many shards. :func:`located_read_errors`
wraps a read (a loop over batches, or ``model.fit``): when such an error escapes, it
verifies the datasets being read and raises a :class:`ShardError` naming the shard and
record instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time

import numpy as np
import tensorflow as tf

from tfrecords_tools.dataset import parse_batch
from tfrecords_tools.manifest import Manifest, ShardError

_BATCH = 1024
# Messages of tf.io.parse_example about the records' contents (a schema mismatch).
_PARSE_FAULT = re.compile(r"Key: (feature_ids|feature_values|labels|text|embedding)|"
                          r"Could not parse example")


@dataclasses.dataclass
class VerifyReport:
    """What :func:`verify` read.

    Attributes:
        prefix: The dataset prefix.
        num_examples: Records read in all shards.
        shards: ``[{"name", "records", "bytes"}]`` per shard.
        faults: One message per faulty shard (empty when the dataset is sound).
        seconds: Time taken.
    """

    prefix: str
    num_examples: int
    shards: list[dict]
    faults: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.faults

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        return d


def tf_reason(error: Exception) -> str:
    """TensorFlow's own reason from an OpError, without graph-node decorations."""
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{[^}]*\}\}", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\].*", "", text, flags=re.S)
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(("Graph execution error",
                                                          "Detected at node", "[[", "File ",
                                                          "<stack traces"))]
    return (lines[-1] if lines else type(error).__name__).strip(" .")


def _records(path: str, compression: str) -> tf.data.Dataset:
    return tf.data.TFRecordDataset(path, compression_type="GZIP" if compression == "GZIP"
                                   else "", buffer_size=1 << 20)


def _first_unreadable(path: str, compression: str) -> int:
    """Index of the first record that cannot be read (the shard is read again, one record
    at a time, only after a failure)."""
    i = 0
    try:
        for _ in _records(path, compression):
            i += 1
    except tf.errors.OpError:
        return i
    return i


def _parse(batch: tf.Tensor, m: Manifest) -> dict:
    """A batch as verification reads it: dense records with a ragged ``embedding``, so that
    a record of another length is named rather than refused by the fixed-length parse."""
    if m.embedding_dim is None:
        return parse_batch(batch, with_text=m.text)
    spec = {k: tf.io.RaggedFeature(dtype, row_splits_dtype=tf.int64)
            for k, dtype in (("embedding", tf.float32), ("labels", tf.int64))}
    return tf.io.parse_example(batch, spec)


def _first_unparsable(batch: tf.Tensor, m: Manifest) -> tuple[int, str]:
    for j in range(int(batch.shape[0])):
        try:
            _parse(batch[j:j + 1], m)
        except tf.errors.InvalidArgumentError as e:
            return j, tf_reason(e)
    return 0, "unparsable batch"


def _check_labels(labels: tf.RaggedTensor, m: Manifest) -> tuple[int, str] | None:
    lab = labels.flat_values.numpy()
    lab_rows = np.repeat(np.arange(labels.nrows().numpy()), labels.row_lengths().numpy())
    out = (lab < 0) | (lab >= m.num_labels)
    if out.any():
        return int(lab_rows[np.argmax(out)]), (f"a label id outside [0, {m.num_labels}) "
                                               f"(num_labels of the manifest)")
    return None


def _check_batch(parsed: dict, m: Manifest) -> tuple[int, str] | None:
    """``(row, reason)`` of the first record that breaks the schema, or ``None``."""
    if m.embedding_dim is not None:
        return _check_dense_batch(parsed, m)
    ids, vals, labels = parsed["feature_ids"], parsed["feature_values"], parsed["labels"]
    n_ids = ids.row_lengths().numpy()
    n_vals = vals.row_lengths().numpy()
    bad = np.flatnonzero(n_ids != n_vals)
    if bad.size:
        r = int(bad[0])
        return r, f"{n_ids[r]} feature_ids but {n_vals[r]} feature_values"
    rows = np.repeat(np.arange(len(n_ids)), n_ids)
    fid = ids.flat_values.numpy()
    v = vals.flat_values.numpy()
    checks = [(fid < 0) | (fid >= m.num_features), ~np.isfinite(v)]
    reasons = [f"a feature id outside [0, {m.num_features}) (num_features of the manifest)",
               "a feature value that is NaN or infinite"]
    for mask, why in zip(checks, reasons):
        if mask.any():
            return int(rows[np.argmax(mask)]), why
    fault = _check_labels(labels, m)
    if fault is not None:
        return fault
    if fid.size:
        order = np.lexsort((fid, rows))
        same = (rows[order][1:] == rows[order][:-1]) & (fid[order][1:] == fid[order][:-1])
        if same.any():
            return int(rows[order][1:][np.argmax(same)]), "a repeated feature id"
    if "text" in parsed:  # a text dataset: every record holds UTF-8 text
        for r, text in enumerate(parsed["text"].numpy()):
            if not text.strip():
                return r, "no text (a text dataset's records hold their text)"
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                return r, "text that is not UTF-8"
    return None


def _check_dense_batch(parsed: dict, m: Manifest) -> tuple[int, str] | None:
    """:func:`_check_batch` for dense records: an ``embedding`` of the manifest's length,
    finite, and labels within its dimension."""
    emb = parsed["embedding"]
    lengths = emb.row_lengths().numpy()
    wrong = np.flatnonzero(lengths != m.embedding_dim)
    if wrong.size:
        r = int(wrong[0])
        return r, (f"an embedding of length {lengths[r]}, the manifest's embedding_dim is "
                   f"{m.embedding_dim}")
    finite = np.isfinite(emb.flat_values.numpy()).reshape(len(lengths), m.embedding_dim)
    if not finite.all():
        return int(np.argmax(~finite.all(axis=1))), "an embedding value that is NaN or infinite"
    return _check_labels(parsed["labels"], m)


def verify_shard(m: Manifest, index: int) -> dict:
    """Reads shard ``index`` of a loaded manifest in full.

    Returns:
        ``{"name", "records", "bytes"}``.

    Raises:
        ShardError: naming the shard (and the record) at fault.
    """
    path = m.shard_paths[index]
    count = 0
    try:
        for batch in _records(path, m.compression).batch(_BATCH):
            try:
                parsed = _parse(batch, m)
            except tf.errors.InvalidArgumentError:
                row, why = _first_unparsable(batch, m)
                raise ShardError(path, f"not a tf.train.Example of the mach-tf schema: {why}",
                                 count + row) from None
            fault = _check_batch(parsed, m)
            if fault is not None:
                raise ShardError(path, f"record holds {fault[1]}", count + fault[0])
            count += int(batch.shape[0])
    except tf.errors.OpError as e:
        bad = _first_unreadable(path, m.compression)
        raise ShardError(path, f"corrupt or truncated shard ({tf_reason(e)}); convert the "
                               f"data again", bad) from None
    if m.shard_counts and count != m.shard_counts[index]:
        raise ShardError(path, f"holds {count} records, {m.path} says "
                               f"{m.shard_counts[index]}")
    return {"name": m.shards[index], "records": count,
            "bytes": int(tf.io.gfile.stat(path).length)}


def verify(data, raise_on_fault: bool = True) -> VerifyReport:
    """Reads every record of a converted dataset and checks it against its manifest.

    Args:
        data: A dataset prefix or a loaded :class:`Manifest`.
        raise_on_fault: Raise on a fault (the first one found), instead of listing every
            faulty shard in the report.

    Returns:
        A :class:`VerifyReport`.

    Raises:
        FileNotFoundError, ManifestError, ShardError: naming the manifest or shard at
            fault (see :meth:`Manifest.load`); with ``raise_on_fault`` also a shard that is
            corrupt, truncated, breaks the schema or holds another record count than the
            manifest says.
    """
    t0 = time.time()
    m = data if isinstance(data, Manifest) else Manifest.load(data)
    shards, faults = [], []
    for i in range(len(m.shards)):
        try:
            shards.append(verify_shard(m, i))
        except ShardError as e:
            if raise_on_fault:
                raise
            faults.append(str(e))
            shards.append({"name": m.shards[i], "records": None, "fault": str(e)})
    total = sum(s["records"] or 0 for s in shards)
    if not faults and total != m.num_examples:
        fault = ShardError(m.prefix or "", f"shards hold {total} records, {m.path} says "
                                           f"num_examples={m.num_examples}")
        if raise_on_fault:
            raise fault
        faults.append(str(fault))
    return VerifyReport(m.prefix or "", total, shards, faults, round(time.time() - t0, 3))


def locate(data, error: Exception | None = None) -> Exception:
    """The located error for a failed read of one or more datasets.

    Verifies each dataset (``None`` entries are ignored) and returns the first
    :class:`ShardError` found; when every dataset verifies, a :class:`ShardError` naming
    the datasets with TensorFlow's reason.
    """
    prefixes = [d for d in (data if isinstance(data, (list, tuple)) else [data]) if d]
    for d in prefixes:
        try:
            verify(d)
        except (ShardError, FileNotFoundError, ValueError) as e:
            return e
    reason = tf_reason(error) if error is not None else "read failed"
    return ShardError(", ".join(str(getattr(d, "prefix", d)) for d in prefixes),
                      f"reading failed ({reason}), but every shard verifies")


@contextlib.contextmanager
def located_read_errors(*data):
    """Names the shard when reading ``data`` (prefixes or manifests) fails.

    A ``DataLossError`` (corrupt or truncated records), or an ``InvalidArgumentError`` of
    ``tf.io.parse_example`` about the records, escaping the block is replaced by the
    :class:`ShardError` that :func:`verify` finds. Other errors pass through unchanged.

    Example::

        with located_read_errors(train, valid):
            model.fit(training_dataset(train, ...), validation_data=...)
    """
    try:
        yield
    except tf.errors.DataLossError as e:
        raise locate(list(data), e) from None
    except tf.errors.InvalidArgumentError as e:
        if not _PARSE_FAULT.search(str(e)):
            raise
        raise locate(list(data), e) from None
