"""The text format: one labelled query (or product title, or document) per line.

Grammar of a line::

    line    := labels? TAB text
    labels  := id ("," id)*        0-based label ids, unique, below --num-labels when given
    text    := UTF-8 text holding at least one character other than white space, and no
               tab and no control character

A point without labels starts with the tab. Tolerated, as in the other formats: CRLF line
ends, a UTF-8 byte-order mark, white space (spaces, tabs) at the end of the line, a missing
final newline, blank lines at the very end of the file. Leading and trailing spaces of the
text are dropped; everything else of it is kept as written (the featuriser lower-cases and
normalises it in the model, so training and serving see the same transformation).

Faults are :class:`~tfrecords_tools.parse.DataFormatError` naming the file and line (and
the column of a bad character): no tab, a second tab (a TSV file with more columns, whose
extra column would silently become words of the text), malformed, negative, duplicate or
out-of-range labels, bytes that are not UTF-8, control characters (NUL, a lone carriage
return, C1 controls), empty text, blank lines between points, lines over 64 MiB. With
``on_error="skip"`` bad lines are recorded instead and the rest converted.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator

from tfrecords_tools.parse import (MAX_LINE_BYTES, DataFormatError, SparseReader, _describe_char,
                                   parse_label_list)

# Control characters other than tab (C0, DEL, C1) and the surrogate escapes that stand for
# bytes that are not UTF-8.
_BAD_TEXT_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\udc80-\udcff]")
# A label prefix as the text format writes it: ids and commas, then a tab.
_LABEL_PREFIX = re.compile(r"[0-9,]*\t")


@dataclasses.dataclass
class TextPoint:
    """One parsed line of the text format."""

    line: int
    labels: list[int]
    text: str


def parse_text_line(line: str, num_labels: int | None = None) -> tuple[list[int], str]:
    """Parses one line of the text format (without its line end).

    Args:
        line: The line, decoded from UTF-8 with ``surrogateescape`` (bytes that are not
            UTF-8 appear as surrogate escapes and are reported).
        num_labels: Label ids must be below this, when given.

    Returns:
        ``(labels, text)`` with the text stripped of leading and trailing spaces.

    Raises:
        ValueError: with the reason, when the line breaks the grammar.
    """
    m = _BAD_TEXT_CHAR.search(line)
    if m:
        ch = m.group()
        what = f"control character {ch!r} (U+{ord(ch):04X})" if 0x80 <= ord(ch) <= 0x9F \
            else _describe_char(ch)
        raise ValueError(f"unexpected {what} at column {m.start() + 1}: "
                         f"text lines hold UTF-8 text and one tab")
    label_part, tab, text = line.partition("\t")
    text = text.rstrip(" \t")  # trailing white space is tolerated, tabs included
    if not tab:
        line = line.rstrip(" ")
        if not line:
            raise ValueError("blank line: expected 'labels<TAB>text'")
        hint = (" (the text is empty)" if re.fullmatch(r"[0-9,]+", line)
                else " (labels may be empty: '<TAB>text')")
        raise ValueError(f"no tab: expected 'labels<TAB>text'{hint}")
    if "\t" in text:
        raise ValueError(f"a second tab at column {len(label_part) + 2 + text.index(chr(9))}: "
                         f"expected 'labels<TAB>text' with no tab inside the text (a file "
                         f"with more columns needs them removed first)")
    labels = parse_label_list(label_part, num_labels) if label_part else []
    text = text.strip(" ")
    if not text.strip():
        raise ValueError("empty text after the tab: expected 'labels<TAB>text'")
    return labels, text


def query_text(line: str) -> str:
    """The query of a line given to ``predict --text`` or the request builders: the line
    itself, or its text when it starts with a label prefix of the text format
    (``1,7<TAB>red shoes`` -> ``red shoes``), so a test file can be piped in as is."""
    line = line.rstrip("\r\n")
    m = _LABEL_PREFIX.match(line)
    return line[m.end():] if m else line


class QueryReader(SparseReader):
    """Iterates the points of a text-format file, streaming (see module docstring).

    Args:
        path: The input file (plain text or gzip).
        num_labels: Label ids must be below this, when given; otherwise inferred as
            ``max id + 1``.
        on_error: ``"fail"`` raises on the first bad line, ``"skip"`` records it in
            :attr:`skipped` and goes on.
        max_line_bytes: Longer lines are faults.

    Attributes (valid after iteration): as :class:`~tfrecords_tools.parse.SparseReader`,
    plus ``chars`` and ``words`` (totals over the texts read, for the manifest's stats).
    """

    def __init__(self, path, num_labels: int | None = None, on_error: str = "fail",
                 max_line_bytes: int = MAX_LINE_BYTES):
        super().__init__(path, "libsvm", num_features=None, num_labels=num_labels,
                         on_error=on_error, max_line_bytes=max_line_bytes)
        self.fmt = "text"
        self.chars = 0
        self.words = 0

    def __iter__(self) -> Iterator[TextPoint]:
        blank: list[int] = []  # blank lines held back: faults unless the file ends here
        for n, line in self._raw_lines():
            if line is not None and not line.strip(" \t"):
                blank.append(n)
                continue
            for b in blank:
                self.lines_read += 1
                self._bad_line(b, "blank line: expected 'labels<TAB>text' (blank lines are "
                                  "allowed only at the end of the file)")
            blank.clear()
            self.lines_read += 1
            if line is None:
                self._bad_line(n, f"line longer than {self.max_line_bytes} bytes")
                continue
            try:
                labels, text = parse_text_line(line, self.num_labels)
            except ValueError as e:
                reason = str(e)
                if n == 1 and "no tab" in reason and ":" in line:
                    reason += "; this looks like XMC/libsvm data: use --format xmc or libsvm"
                self._bad_line(n, reason)
                continue
            if labels:
                self.max_label_id = max(self.max_label_id, max(labels))
            self.chars += len(text)
            self.words += len(text.split())
            yield TextPoint(n, labels, text)
        self.trailing_blank_lines = len(blank)
        if self.lines_read == 0:
            raise DataFormatError(self.path, None, "empty file: no data lines")

    def dimensions(self) -> tuple[int, int]:
        """``(0, num_labels)``: text data has no sparse features (the featuriser's hash
        dimension is chosen when training)."""
        nl = self.num_labels if self.num_labels is not None else self.max_label_id + 1
        return 0, max(nl, 0)
