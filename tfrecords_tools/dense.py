"""Dense vectors: a ``.npy`` matrix of embeddings and a label file, row by row.

``FEATURES.npy`` holds one float row per point (``[N, d]``, written by ``numpy.save``);
``LABELS.txt`` holds one line per row::

    line    := labels?               an empty line (or only white space): no labels
    labels  := id ("," id)*          0-based, unique, below --num-labels when given

The matrix is memory-mapped and read in chunks of rows, never whole, so files larger than
memory convert in constant memory. float16 and float64 rows are stored as float32 (float64
values beyond float32's range are faults, not infinities).

Faults are :class:`~tfrecords_tools.parse.DataFormatError` naming the file and the 1-based
row (the line of the label file, the row of the matrix; columns are 1-based too): NaN or
Inf in a row, float64 values that overflow float32, malformed, negative, duplicate or
out-of-range labels. Faults of a whole file always raise: a file that is missing, not a
``.npy`` array, not 2-D, not of a float dtype, without rows or columns, and a label file
whose line count differs from the matrix's row count (named before anything is written).
With ``on_error="skip"`` bad rows are recorded in :attr:`DenseReader.skipped` instead, so
that ``converted + skipped == lines_read`` always holds.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Iterator

import numpy as np

from tfrecords_tools.parse import (FLOAT32_OVERFLOW, MAX_LINE_BYTES, DataFormatError, SparseReader,
                                   check_characters, parse_label_list)
from tfrecords_tools.paths import expand_path

# Bytes of the matrix read (and copied) at a time.
CHUNK_BYTES = 16 << 20
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclasses.dataclass
class DensePoint:
    """One row: its 1-based number, its labels and its embedding (float32 ``[d]``)."""

    line: int
    labels: list[int]
    embedding: np.ndarray


def parse_label_line(text: str, num_labels: int | None = None) -> list[int]:
    """Parses one line of a dense dataset's label file (without its line end).

    Returns:
        The label ids (empty for a line that is empty or only white space).

    Raises:
        ValueError: with the reason, when the line breaks the grammar.
    """
    check_characters(text)
    text = text.strip(" \t")
    if not text:
        return []
    return parse_label_list(text, num_labels)


def _row_fault(values: np.ndarray, col: int) -> str:
    """Why column ``col`` (0-based) of a row is refused: NaN, infinite, or beyond float32."""
    v = values[col]
    where = f"column {col + 1} of {len(values)}"
    if np.isnan(v):
        return f"NaN at {where}"
    if np.isinf(v):
        return f"infinite value {float(v)!r} at {where}"
    return (f"value {float(v)!r} at {where} overflows float32 (|value| must be below "
            f"3.4028235e+38)")


class DenseReader(SparseReader):
    """Iterates the rows of a ``.npy`` matrix and their label lines, streaming.

    Args:
        features_path: The ``[N, d]`` float matrix (``numpy.save`` format).
        labels_path: The label file, one line per row (plain text or gzip).
        num_labels: Label ids must be below this, when given; otherwise inferred as
            ``max id + 1``.
        on_error: ``"fail"`` raises on the first bad row, ``"skip"`` records it in
            :attr:`skipped` and goes on.
        chunk_rows: Rows read from the memory map at a time (default: about 16 MiB).
        max_line_bytes: Longer label lines are faults.

    Attributes (valid after iteration): as :class:`~tfrecords_tools.parse.SparseReader`
    (``lines_read`` counts rows), plus ``features_path``, ``num_rows``, ``dim`` (d) and
    ``dtype`` (the matrix's own dtype).
    """

    def __init__(self, features_path, labels_path, num_labels: int | None = None,
                 on_error: str = "fail", chunk_rows: int | None = None,
                 max_line_bytes: int = MAX_LINE_BYTES):
        super().__init__(labels_path, "libsvm", num_features=None, num_labels=num_labels,
                         on_error=on_error, max_line_bytes=max_line_bytes)
        self.fmt = "dense"
        self.features_path = expand_path(features_path)
        self.chunk_rows = chunk_rows
        self.num_rows: int | None = None
        self.dim: int | None = None
        self.dtype: np.dtype | None = None

    # -- the matrix ----------------------------------------------------------------------
    def _features_fault(self, line: int | None, reason: str) -> DataFormatError:
        return DataFormatError(self.features_path, line, reason)

    def _read_header(self) -> tuple[tuple, np.dtype]:
        """The matrix's shape and dtype, from its ``.npy`` header (before mapping it)."""
        try:
            with open(self.features_path, "rb") as f:
                magic = f.read(len(_NPY_MAGIC))
                if magic != _NPY_MAGIC:
                    what = ("a .npz archive (save one array with numpy.save)"
                            if magic.startswith(_ZIP_MAGIC) else
                            "not a .npy file (expected an array written by numpy.save)")
                    raise self._features_fault(None, f"is {what}")
                f.seek(0)
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                        np.lib.format.read_array_header_2_0)  # 2.0 and 3.0: same layout
                shape, _, dtype = read(f)
        except DataFormatError:
            raise
        except FileNotFoundError:
            raise self._features_fault(None, "no such file") from None
        except IsADirectoryError:
            raise self._features_fault(None, "is a directory, expected a .npy file") from None
        except (OSError, ValueError) as e:
            raise self._features_fault(None, f"unreadable .npy file: {e}") from None
        return shape, dtype

    def _open_features(self) -> np.ndarray:
        shape, dtype = self._read_header()
        if len(shape) != 2:
            raise self._features_fault(None, f"holds an array of shape {shape}; expected a "
                                             f"2-D matrix [rows, d] (one row per point)")
        if dtype.kind != "f":
            raise self._features_fault(None, f"holds {dtype} values; expected a float dtype "
                                             f"(float16, float32 or float64)")
        if shape[0] == 0:
            raise self._features_fault(None, "empty matrix: no rows")
        if shape[1] == 0:
            raise self._features_fault(None, f"matrix of shape {shape} has no columns")
        try:
            mem = np.load(self.features_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:  # e.g. a truncated file
            raise self._features_fault(None, f"unreadable .npy file: {e}") from None
        self.num_rows, self.dim = int(shape[0]), int(shape[1])
        self.dtype = dtype
        return mem

    def _count_label_lines(self) -> int:
        """Lines of the label file, counted as :meth:`_raw_lines` reads them."""
        n = 0
        last = b"\n"
        try:
            with self._open() as f:
                while True:
                    block = f.read(1 << 20)
                    if not block:
                        break
                    n += block.count(b"\n")
                    last = block[-1:]
        except DataFormatError:
            raise
        except (OSError, EOFError, ValueError, zlib.error) as e:
            raise self._fault(None, f"unreadable input: {e}") from None
        return n + (last != b"\n")

    def _check_counts(self) -> None:
        rows, lines = self.num_rows, self._count_label_lines()
        if lines == rows:
            return
        both = (f"{self.path} has {lines} lines but {self.features_path} has {rows} rows "
                f"(one label line per row; an empty line is a row without labels)")
        if lines < rows:
            raise self._features_fault(lines + 1, f"row {lines + 1} has no label line: {both}")
        raise self._fault(rows + 1, both)

    # -- iteration -----------------------------------------------------------------------
    def _bad_row(self, path: str, n: int, reason: str) -> None:
        if self.on_error == "fail":
            raise DataFormatError(path, n, reason)
        self.skipped.append((n, f"{os.path.basename(path)}: {reason}"))

    def __iter__(self) -> Iterator[DensePoint]:
        mem = self._open_features()
        self._check_counts()
        rows, d = self.num_rows, self.dim
        step = self.chunk_rows or max(1, CHUNK_BYTES // (d * mem.dtype.itemsize))
        wide = mem.dtype.itemsize > 4  # float64 (or wider) may overflow float32
        lines = self._raw_lines()
        for start in range(0, rows, step):
            block = np.asarray(mem[start:start + step])
            bad = ~np.isfinite(block)
            with np.errstate(invalid="ignore", over="ignore"):  # bad rows are not yielded
                if wide:
                    bad |= np.abs(block) >= FLOAT32_OVERFLOW
                emb = block.astype(np.float32)
            bad_rows = bad.any(axis=1)
            for i in range(block.shape[0]):
                n = start + i + 1
                got = next(lines, None)
                if got is None:  # the label file shrank while it was read
                    raise self._features_fault(n, f"row {n} has no label line: {self.path} "
                                                  f"ended after {n - 1} lines")
                self.lines_read += 1
                if bad_rows[i]:
                    col = int(np.argmax(bad[i]))
                    self._bad_row(self.features_path, n, _row_fault(block[i], col))
                    continue
                text = got[1]
                if text is None:
                    self._bad_row(self.path, n, f"line longer than {self.max_line_bytes} "
                                                f"bytes")
                    continue
                try:
                    labels = parse_label_line(text, self.num_labels)
                except ValueError as e:
                    self._bad_row(self.path, n, str(e))
                    continue
                if labels:
                    self.max_label_id = max(self.max_label_id, max(labels))
                yield DensePoint(n, labels, emb[i])
        if next(lines, None) is not None:  # the label file grew while it was read
            raise self._fault(rows + 1, f"more lines than the {rows} rows of "
                                        f"{self.features_path}")

    def dimensions(self) -> tuple[int, int]:
        """``(0, num_labels)``: dense data has no sparse features (its width is
        :attr:`dim`)."""
        nl = self.num_labels if self.num_labels is not None else self.max_label_id + 1
        return 0, max(nl, 0)
