"""Streaming parsers for the XMC repository and libsvm multi-label text formats.

Grammar of a data line (both formats)::

    line     := labels? (SP feature)*      a point with no labels starts with a space
    labels   := id ("," id)*
    feature  := id ":" value
    id       := [0-9]+                     0-based
    value    := a finite decimal float

The XMC repository format adds a header line ``num_points num_features num_labels``.

Files are read line by line (never whole), plain or gzip-compressed (detected from the
magic bytes). Harmless variations are accepted: CRLF line ends, a UTF-8 byte-order mark,
trailing white space, a missing final newline, points without labels. Everything else is a
:class:`DataFormatError` naming the file, the line and what was expected. With
``on_error="skip"`` a bad data line is recorded in :attr:`TextReader.skipped` instead, so
that ``converted + skipped == lines read`` always holds; faults of the file itself (a
missing or malformed header, an unreadable or truncated file) always raise.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import zlib
from typing import Iterator

FORMATS = ("xmc", "libsvm")
ON_ERROR = ("fail", "skip")
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = "\ufeff"


class DataFormatError(ValueError):
    """A fault in an input file, located by path and (1-based) line number.

    Attributes:
        path: The file.
        line: 1-based line number, or ``None`` for faults of the whole file.
        reason: What was wrong and what was expected.
    """

    def __init__(self, path, line: int | None, reason: str):
        self.path = os.fspath(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


@dataclasses.dataclass
class Header:
    num_points: int
    num_features: int
    num_labels: int


@dataclasses.dataclass
class Point:
    """One parsed data line."""

    line: int
    labels: list[int]
    feature_ids: list[int]
    feature_values: list[float]


def _parse_id(tok: str, what: str, limit: int | None) -> int:
    if not (tok.isascii() and tok.isdigit()):
        if tok.startswith("-") and tok[1:].isdigit():
            raise ValueError(f"negative {what} id {tok} (ids are 0-based, >= 0)")
        raise ValueError(f"malformed {what} id {tok!r}: expected a non-negative integer")
    v = int(tok)
    if limit is not None and v >= limit:
        raise ValueError(f"{what} id {v} out of range: the header declares {limit} {what}s "
                         f"(ids 0..{limit - 1})")
    return v


def _parse_value(tok: str, fid: str) -> float:
    if not tok or "_" in tok or not tok.isascii():
        raise ValueError(f"malformed value {tok!r} of feature {fid}: expected a decimal number")
    try:
        v = float(tok)
    except ValueError:
        raise ValueError(f"malformed value {tok!r} of feature {fid}: "
                         f"expected a decimal number") from None
    if not math.isfinite(v):
        raise ValueError(f"non-finite value {tok!r} of feature {fid}")
    return v


def parse_line(text: str, num_features: int | None = None,
               num_labels: int | None = None) -> tuple[list[int], list[int], list[float]]:
    """Parses one data line (without its line end).

    Args:
        text: The line.
        num_features: Feature ids must be below this, when given.
        num_labels: Label ids must be below this, when given.

    Returns:
        ``(labels, feature_ids, feature_values)``.

    Raises:
        ValueError: with the reason, when the line breaks the grammar.
    """
    tokens = text.split()
    if not tokens:
        raise ValueError("blank line: expected 'labels feature:value ...'")
    if text[0] in " \t" or ":" in tokens[0]:
        label_tok, feat_toks = None, tokens
    else:
        label_tok, feat_toks = tokens[0], tokens[1:]
    labels: list[int] = []
    if label_tok is not None:
        for tok in label_tok.split(","):
            if not tok:
                raise ValueError(f"malformed label list {label_tok!r}: empty label id")
            labels.append(_parse_id(tok, "label", num_labels))
        if len(set(labels)) != len(labels):
            dup = next(x for x in labels if labels.count(x) > 1)
            raise ValueError(f"duplicate label id {dup} in label list")
    ids: list[int] = []
    values: list[float] = []
    for tok in feat_toks:
        fid, sep, val = tok.partition(":")
        if not sep or ":" in val:
            raise ValueError(f"malformed feature {tok!r}: expected 'id:value'")
        ids.append(_parse_id(fid, "feature", num_features))
        values.append(_parse_value(val, fid))
    if len(set(ids)) != len(ids):
        seen = set()
        dup = next(x for x in ids if x in seen or seen.add(x))
        raise ValueError(f"duplicate feature id {dup} in one line")
    return labels, ids, values


class TextReader:
    """Iterates the points of an XMC or libsvm file, streaming.

    Args:
        path: The input file (plain text or gzip).
        fmt: ``"xmc"`` (header line first) or ``"libsvm"`` (no header).
        num_features: For libsvm, the feature dimension when known (ids are checked
            against it); otherwise inferred as ``max id + 1``. For xmc, must agree with the
            header when given.
        num_labels: Likewise for labels.
        on_error: ``"fail"`` raises on the first bad line, ``"skip"`` records it in
            :attr:`skipped` and goes on.

    Attributes (valid after iteration):
        header: The XMC header, or ``None`` for libsvm.
        lines_read: Data lines read (header excluded).
        skipped: ``[(line, reason), ...]`` of skipped lines.
        max_feature_id, max_label_id: Largest ids seen (-1 if none).
    """

    def __init__(self, path, fmt: str = "xmc", num_features: int | None = None,
                 num_labels: int | None = None, on_error: str = "fail"):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.path = os.fspath(path)
        self.fmt = fmt
        self.num_features = num_features
        self.num_labels = num_labels
        self.on_error = on_error
        self.header: Header | None = None
        self.lines_read = 0
        self.skipped: list[tuple[int, str]] = []
        self.max_feature_id = -1
        self.max_label_id = -1

    # -- file access ---------------------------------------------------------------------
    def _open(self) -> io.BufferedIOBase:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            raise DataFormatError(self.path, None, "no such file") from None
        except IsADirectoryError:
            raise DataFormatError(self.path, None, "is a directory, expected a file") from None
        except OSError as e:
            raise DataFormatError(self.path, None, f"cannot open: {e.strerror}") from None
        magic = f.peek(2)[:2] if hasattr(f, "peek") else b""
        if magic == _GZIP_MAGIC:
            return gzip.GzipFile(fileobj=f, mode="rb")
        return f

    def _raw_lines(self) -> Iterator[tuple[int, str]]:
        """Yields ``(line_number, text)`` with line ends and a leading BOM removed."""
        f = self._open()
        n = 0
        try:
            with f:
                while True:
                    try:
                        raw = f.readline()
                    except (EOFError, OSError, zlib.error) as e:
                        raise DataFormatError(
                            self.path, n + 1 if n else None,
                            f"truncated or corrupt gzip input after line {n}: {e}") from None
                    if not raw:
                        return
                    n += 1
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise DataFormatError(self.path, n,
                                              f"invalid UTF-8 at byte {e.start}") from None
                    if n == 1 and text.startswith(_BOM):
                        text = text[1:]
                    yield n, text.rstrip("\r\n")
        except DataFormatError:
            raise
        except (OSError, EOFError, zlib.error) as e:  # e.g. a gzip header that is garbage
            raise DataFormatError(self.path, None, f"unreadable input: {e}") from None

    # -- header --------------------------------------------------------------------------
    def _parse_header(self, n: int, text: str) -> Header:
        toks = text.split()
        if len(toks) != 3 or not all(t.isascii() and t.isdigit() for t in toks):
            raise DataFormatError(
                self.path, n, f"malformed header {text.strip()[:80]!r}: expected "
                              f"'num_points num_features num_labels' (three non-negative "
                              f"integers); use --format libsvm for files without a header")
        h = Header(*(int(t) for t in toks))
        if h.num_features < 1:
            raise DataFormatError(self.path, n, "header declares 0 features")
        for name, given, declared in (("num_features", self.num_features, h.num_features),
                                      ("num_labels", self.num_labels, h.num_labels)):
            if given is not None and given != declared:
                raise DataFormatError(self.path, n, f"header declares {name}={declared} but "
                                                    f"{given} was requested")
        return h

    # -- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Point]:
        lines = self._raw_lines()
        nf, nl = self.num_features, self.num_labels
        header_line = None
        if self.fmt == "xmc":
            first = next(lines, None)
            if first is None:
                raise DataFormatError(self.path, None, "empty file: expected the header line "
                                                       "'num_points num_features num_labels'")
            header_line = first[0]
            self.header = self._parse_header(*first)
            nf, nl = self.header.num_features, self.header.num_labels
        for n, text in lines:
            self.lines_read += 1
            try:
                labels, ids, values = parse_line(text, nf, nl)
            except ValueError as e:
                if self.on_error == "fail":
                    raise DataFormatError(self.path, n, str(e)) from None
                self.skipped.append((n, str(e)))
                continue
            if ids:
                self.max_feature_id = max(self.max_feature_id, max(ids))
            if labels:
                self.max_label_id = max(self.max_label_id, max(labels))
            yield Point(n, labels, ids, values)
        if self.header is not None and self.lines_read != self.header.num_points:
            raise DataFormatError(
                self.path, header_line,
                f"header declares {self.header.num_points} points but the file has "
                f"{self.lines_read} data lines")
        if self.fmt == "libsvm" and self.lines_read == 0:
            raise DataFormatError(self.path, None, "empty file: no data lines")

    def dimensions(self) -> tuple[int, int]:
        """``(num_features, num_labels)``: declared, given, or inferred (after iteration)."""
        if self.header is not None:
            return self.header.num_features, self.header.num_labels
        nf = self.num_features if self.num_features is not None else self.max_feature_id + 1
        nl = self.num_labels if self.num_labels is not None else self.max_label_id + 1
        return max(nf, 1), max(nl, 0)


def read_points(path, fmt: str = "xmc", **kwargs) -> list[Point]:
    """All points of a (small) file; for tests and tiny inputs."""
    return list(TextReader(path, fmt, **kwargs))
