"""Streaming parsers for the XMC repository and libsvm multi-label text formats.

Grammar of a data line (both formats)::

    line     := labels? (SEP feature)* SEP?   a point with no labels starts with SEP
    labels   := id ("," id)*
    feature  := id ":" value
    SEP      := (" " | "\\t")+
    id       := [0-9]+                       0-based, below the declared dimension
    value    := a decimal number, finite in float32 (|v| < 3.4e38; no NaN or Inf)

Feature ids are unique within a line, and so are label ids. The XMC repository format adds
a header line ``num_points num_features num_labels``.

Files are read line by line (never whole), plain or gzip-compressed (detected from the
magic bytes). Harmless variations are accepted: CRLF line ends, a UTF-8 byte-order mark,
trailing white space, a missing final newline, points without labels, blank lines at the
very end of the file (they hold no point and are not counted). Everything else is a
:class:`DataFormatError` naming the file, the line and what was expected: any character
outside printable ASCII and tab (NUL bytes, non-ASCII digits, invalid UTF-8), ids beyond
int64 or the declared dimensions, values that overflow float32, blank lines between
points. With ``on_error="skip"`` a bad data line is recorded in :attr:`SparseReader.skipped`
instead, so that ``converted + skipped == lines_read`` always holds; faults of the file
itself (missing, empty, compressed with an unsupported codec, a missing or malformed
header, a point count that disagrees with the header, a truncated or corrupt gzip stream)
always raise.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import re
import zlib
from typing import Iterator

from tfrecords_tools.paths import expand_path

FORMATS = ("xmc", "libsvm")
ON_ERROR = ("fail", "skip")
INT64_MAX = 2**63 - 1
# The smallest magnitude that rounds to infinity when stored as float32 (round to nearest
# even): half-way between FLT_MAX = (2 - 2^-23) * 2^127 and 2^128.
FLOAT32_OVERFLOW = 2.0**128 - 2.0**103
# One line is held in memory while it is parsed; longer lines are refused, not clipped.
MAX_LINE_BYTES = 64 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_OTHER_CODECS = ((b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
                 (b"PK\x03\x04", "zip"))
# Anything but tab and printable ASCII: control characters, NUL, non-ASCII (including
# the surrogate escapes that stand for bytes that are not UTF-8).
_BAD_CHAR = re.compile(r"[^\t\x20-\x7e]")


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


_HEADER_LINE = re.compile(r"[ \t]*\d+[ \t]+\d+[ \t]+\d+[ \t]*")
_TEXT_LINE = re.compile(r"[0-9,]*\t.*\S.*")


def is_header_line(text: str) -> bool:
    """Whether ``text`` is an XMC header ``num_points num_features num_labels``: three bare
    integers, which can never be a data line (features need ``id:value``)."""
    return _HEADER_LINE.fullmatch(text.rstrip("\r\n")) is not None


def text_format_hint(text: str) -> str | None:
    """A hint when a line that failed to parse has the text format's shape
    (``labels<TAB>text``), else ``None``."""
    if _TEXT_LINE.fullmatch(text.rstrip("\r\n")) is None:
        return None
    return "this looks like the text format 'labels<TAB>text': use --format text"


def _show(tok: str, limit: int = 40) -> str:
    """A token for a message: quoted, and shortened when long."""
    return repr(tok if len(tok) <= limit else tok[:limit] + "...")


def _describe_char(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a surrogate escape: a byte that is not UTF-8
        return f"byte 0x{code - 0xDC00:02X} (not UTF-8)"
    if ch == "\r":
        return "carriage return '\\r' (only CRLF or LF line ends are read)"
    if code < 0x20 or code == 0x7F:
        return f"control character {ch!r}"
    return f"non-ASCII character {ch!r} (U+{code:04X})"


def check_characters(text: str) -> None:
    """Raises ValueError naming the first character a line may not hold."""
    m = _BAD_CHAR.search(text)
    if m:
        raise ValueError(f"unexpected {_describe_char(m.group())} at column {m.start() + 1}: "
                         f"lines hold only ASCII digits, signs, '.', 'e', ',', ':', spaces "
                         f"and tabs")


def _parse_id(tok: str, what: str, limit: int | None) -> int:
    if not tok.isdigit():  # the line is ASCII (checked first), so only 0-9 pass
        if tok[:1] == "-" and tok[1:].isdigit():
            raise ValueError(f"negative {what} id {_show(tok)[1:-1]} (ids are 0-based, >= 0)")
        raise ValueError(f"malformed {what} id {_show(tok)}: expected a non-negative "
                         f"integer")
    if len(tok) <= 18:
        v = int(tok)
    else:  # int() refuses strings of > 4300 digits; ids must fit int64
        digits = tok.lstrip("0") or "0"
        if len(digits) > 19 or int(digits) > INT64_MAX:
            raise ValueError(f"{what} id {_show(tok)} is beyond the int64 range")
        v = int(digits)
    if limit is not None and v >= limit:
        allowed = f"ids 0..{limit - 1}" if limit > 0 else "no ids"
        raise ValueError(f"{what} id {v} out of range: num_{what}s={limit} allows {allowed}")
    return v


def _parse_value(tok: str, fid: str) -> float:
    if not tok or "_" in tok:
        raise ValueError(f"malformed value {_show(tok)} of feature {fid}: expected a decimal "
                         f"number")
    try:
        v = float(tok)
    except ValueError:
        raise ValueError(f"malformed value {_show(tok)} of feature {fid}: expected a decimal "
                         f"number") from None
    if math.isnan(v) or (math.isinf(v) and tok.lstrip("+-")[:1].isalpha()):
        raise ValueError(f"non-finite value {_show(tok)} of feature {fid}")
    if abs(v) >= FLOAT32_OVERFLOW:
        raise ValueError(f"value {_show(tok)} of feature {fid} overflows float32 "
                         f"(|value| must be below 3.4028235e+38)")
    return v


def parse_label_list(text: str, num_labels: int | None = None) -> list[int]:
    """The ids of a comma-separated label list (every format's label grammar).

    Raises:
        ValueError: for an empty or malformed id, one beyond ``num_labels``, or a repeat.
    """
    labels: list[int] = []
    for tok in text.split(","):
        if not tok:
            raise ValueError(f"malformed label list {_show(text)}: empty label id")
        if not tok.isascii():  # str.isdigit would take '٣' for 3
            raise ValueError(f"malformed label id {_show(tok)}: expected a non-negative "
                             f"integer (ASCII digits)")
        labels.append(_parse_id(tok, "label", num_labels))
    if len(set(labels)) != len(labels):
        seen: set[int] = set()
        dup = next(x for x in labels if x in seen or seen.add(x))
        raise ValueError(f"duplicate label id {dup} in label list")
    return labels


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
    check_characters(text)
    tokens = text.split()
    if not tokens:
        raise ValueError("blank line: expected a point 'labels id:value ...'")
    if text[0] in " \t" or ":" in tokens[0]:
        label_tok, feat_toks = None, tokens
    else:
        label_tok, feat_toks = tokens[0], tokens[1:]
    labels = parse_label_list(label_tok, num_labels) if label_tok is not None else []
    ids: list[int] = []
    values: list[float] = []
    for tok in feat_toks:
        fid, sep, val = tok.partition(":")
        if not sep or ":" in val:
            hint = " (labels go first, before any feature)" if sep == "" and "," in tok else ""
            raise ValueError(f"malformed feature {_show(tok)}: expected 'id:value'{hint}")
        ids.append(_parse_id(fid, "feature", num_features))
        values.append(_parse_value(val, fid))
    if len(set(ids)) != len(ids):
        seen = set()
        dup = next(x for x in ids if x in seen or seen.add(x))
        raise ValueError(f"duplicate feature id {dup} in one line")
    return labels, ids, values


class SparseReader:
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
        max_line_bytes: Longer lines are faults (a line is held in memory whole).

    Attributes (valid after iteration):
        header: The XMC header, or ``None`` for libsvm.
        lines_read: Data lines read (header and blank lines at the end excluded); always
            ``points yielded + len(skipped)``.
        skipped: ``[(line, reason), ...]`` of skipped lines.
        trailing_blank_lines: Blank lines at the end of the file (ignored).
        max_feature_id, max_label_id: Largest ids seen (-1 if none).
    """

    def __init__(self, path, fmt: str = "xmc", num_features: int | None = None,
                 num_labels: int | None = None, on_error: str = "fail",
                 max_line_bytes: int = MAX_LINE_BYTES):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.path = expand_path(path)
        self.fmt = fmt
        self.num_features = num_features
        self.num_labels = num_labels
        self.on_error = on_error
        self.max_line_bytes = int(max_line_bytes)
        self.header: Header | None = None
        self.lines_read = 0
        self.skipped: list[tuple[int, str]] = []
        self.trailing_blank_lines = 0
        self.max_feature_id = -1
        self.max_label_id = -1

    # -- file access ---------------------------------------------------------------------
    def _fault(self, line: int | None, reason: str) -> DataFormatError:
        return DataFormatError(self.path, line, reason)

    def _open(self) -> io.BufferedIOBase:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            raise self._fault(None, "no such file") from None
        except IsADirectoryError:
            raise self._fault(None, "is a directory, expected a file") from None
        except OSError as e:
            raise self._fault(None, f"cannot open: {e.strerror}") from None
        magic = f.peek(6)[:6]
        if magic[:2] == _GZIP_MAGIC:
            return gzip.GzipFile(fileobj=f, mode="rb")
        for prefix, codec in _OTHER_CODECS:
            if magic.startswith(prefix):
                f.close()
                raise self._fault(None, f"is {codec}-compressed; only plain text and gzip "
                                        f"are read (decompress it first)")
        return f

    def _raw_lines(self) -> Iterator[tuple[int, str | None]]:
        """Yields ``(line_number, text)`` with line ends and a leading BOM removed.

        ``text`` is ``None`` for a line longer than ``max_line_bytes`` (a line fault).
        Bytes that are not UTF-8 become surrogate escapes, refused by the line check.
        """
        f = self._open()
        n = 0
        limit = self.max_line_bytes
        try:
            with f:
                while True:
                    try:
                        raw = f.readline(limit + 1)
                        too_long = len(raw) > limit and not raw.endswith(b"\n")
                        while too_long and raw:  # consume the rest of the long line
                            raw = f.readline(limit + 1)
                            if raw.endswith(b"\n"):
                                break
                    except (EOFError, OSError, zlib.error) as e:
                        raise self._fault(n + 1, f"truncated or corrupt gzip input after "
                                                 f"{n} complete lines: {e}") from None
                    if not raw and not too_long:
                        return
                    n += 1
                    if too_long:
                        yield n, None
                        continue
                    if n == 1 and raw.startswith(_BOM):
                        raw = raw[len(_BOM):]
                    yield n, raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
        except DataFormatError:
            raise
        except (OSError, EOFError, zlib.error) as e:  # e.g. a gzip header that is garbage
            raise self._fault(None, f"unreadable input: {e}") from None

    # -- header --------------------------------------------------------------------------
    def _parse_header(self, n: int, text: str | None) -> Header:
        if text is None:
            raise self._fault(n, f"header line longer than {self.max_line_bytes} bytes")
        toks = text.split()
        shown = _show(text.strip(), 80)
        if _BAD_CHAR.search(text) or len(toks) != 3 or not all(
                t.isascii() and t.isdigit() for t in toks):
            hint = text_format_hint(text) or (
                "this looks like a data line: for files without a header use --format libsvm"
                if (":" in text or "," in text) else
                "for files without a header use --format libsvm")
            raise self._fault(n, f"malformed header {shown}: expected 'num_points "
                                 f"num_features num_labels' (three non-negative integers); "
                                 f"{hint}")
        counts = [t.lstrip("0") or "0" for t in toks]
        if any(len(c) > 19 or int(c) > INT64_MAX for c in counts):
            raise self._fault(n, f"header {shown} holds a count beyond the int64 range")
        h = Header(*(int(c) for c in counts))
        for name, declared in (("num_features", h.num_features), ("num_labels", h.num_labels)):
            if declared < 1:
                raise self._fault(n, f"header {shown} declares {name}=0; expected >= 1")
        for name, given, declared in (("num_features", self.num_features, h.num_features),
                                      ("num_labels", self.num_labels, h.num_labels)):
            if given is not None and given != declared:
                raise self._fault(n, f"header declares {name}={declared} but {given} was "
                                     f"requested")
        return h

    # -- iteration -----------------------------------------------------------------------
    def _bad_line(self, n: int, reason: str) -> None:
        if self.on_error == "fail":
            raise self._fault(n, reason)
        self.skipped.append((n, reason))

    def __iter__(self) -> Iterator[Point]:
        lines = self._raw_lines()
        nf, nl = self.num_features, self.num_labels
        header_line = None
        if self.fmt == "xmc":
            first = next(lines, None)
            if first is None:
                raise self._fault(None, "empty file: expected the header line "
                                        "'num_points num_features num_labels'")
            header_line = first[0]
            self.header = self._parse_header(*first)
            nf, nl = self.header.num_features, self.header.num_labels
        blank: list[int] = []  # blank lines held back: faults unless the file ends here
        for n, text in lines:
            if text is not None and not text.strip(" \t"):
                blank.append(n)
                continue
            for b in blank:
                self.lines_read += 1
                self._bad_line(b, "blank line: expected a point 'labels id:value ...' (blank "
                                  "lines are allowed only at the end of the file)")
            blank.clear()
            self.lines_read += 1
            if self.header is not None and self.lines_read > self.header.num_points:
                raise self._fault(n, f"the header (line {header_line}) declares "
                                     f"{self.header.num_points} points, but the file has "
                                     f"more data lines")
            if text is None:
                self._bad_line(n, f"line longer than {self.max_line_bytes} bytes")
                continue
            try:
                labels, ids, values = parse_line(text, nf, nl)
            except ValueError as e:
                reason = str(e)
                if n == 1 and self.fmt == "libsvm" and is_header_line(text):
                    reason += ("; line 1 looks like an XMC header 'num_points num_features "
                               "num_labels': use --format xmc")
                elif text_format_hint(text):
                    reason += f"; {text_format_hint(text)}"
                self._bad_line(n, reason)
                continue
            if ids:
                self.max_feature_id = max(self.max_feature_id, max(ids))
            if labels:
                self.max_label_id = max(self.max_label_id, max(labels))
            yield Point(n, labels, ids, values)
        self.trailing_blank_lines = len(blank)
        if self.header is not None and self.lines_read != self.header.num_points:
            raise self._fault(header_line, f"header declares {self.header.num_points} points "
                                           f"but the file has {self.lines_read} data lines")
        if self.fmt == "libsvm" and self.lines_read == 0:
            raise self._fault(None, "empty file: no data lines")

    def dimensions(self) -> tuple[int, int]:
        """``(num_features, num_labels)``: declared, given, or inferred (after iteration)."""
        if self.header is not None:
            return self.header.num_features, self.header.num_labels
        nf = self.num_features if self.num_features is not None else self.max_feature_id + 1
        nl = self.num_labels if self.num_labels is not None else self.max_label_id + 1
        return max(nf, 1), max(nl, 0)


def read_points(path, fmt: str = "xmc", **kwargs) -> list[Point]:
    """All points of a (small) file; for tests and tiny inputs."""
    return list(SparseReader(path, fmt, **kwargs))
