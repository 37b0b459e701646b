"""Text normalisation as one table: every character maps to its folded form.

Stock TensorFlow has no Unicode normalisation op (``normalize_utf8`` lives in
tensorflow-text, which TensorFlow Serving does not ship), and ``tf.strings.lower`` follows
whichever ICU the binary was built with. The featuriser therefore normalises through a
table of its own, computed here from Python's Unicode database and carried in the model as
weights, so the serving graph needs only ``unicode_decode``, ``searchsorted``, ``gather``
and ``unicode_encode``, and every process that holds the model folds text identically.

The fold of a character ``c`` (applied until nothing changes):

1. compatibility decomposition (NFKD): ``ﬁ`` -> ``fi``, ``①`` -> ``1``, ``Ｓ`` -> ``S``,
   ``é`` -> ``e`` + U+0301;
2. case folding (``str.casefold``): ``S`` -> ``s``, ``ß`` -> ``ss``, ``Σ`` -> ``σ``;
3. the generic combining accents (U+0300..U+036F and the other *Combining Diacritical
   Marks* blocks) are dropped, so ``Crème`` and ``creme`` meet; script-specific marks
   (Devanagari vowel signs, Arabic harakat, ...) are kept as parts of their word;
4. letters (L*), numbers (N*) and the kept marks (M*) stay; every other character
   (punctuation, symbols, spaces, controls) becomes a space, which later splits words.

Because each step works character by character, ``fold(NFC(s)) == fold(NFD(s)) ==
fold(NFKC(s))``: the result does not depend on how the client normalised its text.

Stability: decomposition and categories come from ``unicodedata.ucd_3_2_0``, the Unicode
3.2 database that every Python 3 ships unchanged (for IDNA), and only characters assigned
in Unicode 3.2 are folded (later characters pass through unchanged). Case folding uses
``str.casefold`` on those characters, whose case mappings Unicode keeps stable. The
table's SHA-256 is recorded in a run's config when it is trained and checked whenever the
featuriser is rebuilt; ``tests/text/test_featurizer.py`` pins it.
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata

import numpy as np

_UCD = unicodedata.ucd_3_2_0
# Combining Diacritical Marks (+ Extended, Supplement, for Symbols) and Combining Half
# Marks: the accents of Latin, Greek and Cyrillic, dropped by the fold.
_DIACRITICS = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF),
               (0xFE20, 0xFE2F))
SPACE = 0x20


def _is_diacritic(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _DIACRITICS)


def _assigned(ch: str) -> bool:
    cat = _UCD.category(ch)
    return cat not in ("Cn", "Co", "Cs")


def _fold_once(ch: str) -> str:
    if not _assigned(ch):
        return ch
    out = []
    for d in _UCD.normalize("NFKD", ch):
        if not _assigned(d):
            out.append(d)
            continue
        for e in _UCD.normalize("NFKD", d.casefold()):
            if not _assigned(e):
                out.append(e)
            elif _is_diacritic(ord(e)):
                continue
            elif _UCD.category(e)[0] in "LNM":
                out.append(e)
            else:
                out.append(" ")
    return "".join(out)


def _fold_char(ch: str) -> str:
    result = _fold_once(ch)
    for _ in range(8):
        nxt = "".join(_fold_once(c) if c != " " else c for c in result)
        if nxt == result:
            return result
        result = nxt
    raise RuntimeError(f"folding U+{ord(ch):04X} does not settle")  # never seen; a guard


def _folds_to_itself(ch: str) -> bool:
    """Whether ``_fold_char(ch) == ch``, decided without folding, for the characters
    where that is plain: unassigned ones, and kept ones (a letter, number or mark that is
    no generic accent) that neither decompose nor case-fold. That is all but about 20,000
    of the 1.1 million code points, so the table is built in a fraction of the time (every
    process that builds a featuriser builds it)."""
    cat = _UCD.category(ch)
    if cat in ("Cn", "Co", "Cs"):
        return True
    return (cat[0] in "LNM" and not _is_diacritic(ord(ch)) and ch.casefold() == ch
            and _UCD.normalize("NFKD", ch) == ch)


@functools.lru_cache(maxsize=1)
def fold_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fold as sorted arrays: ``(keys, offsets, values)``, all int32.

    Character ``keys[i]`` folds to the code points ``values[offsets[i]:offsets[i + 1]]``
    (possibly none); characters not in ``keys`` fold to themselves.
    """
    keys, offsets, values = [], [0], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if _folds_to_itself(ch):
            continue
        folded = _fold_char(ch)
        if folded != ch:
            keys.append(cp)
            values.extend(ord(c) for c in folded)
            offsets.append(len(values))
    return (np.asarray(keys, np.int32), np.asarray(offsets, np.int32),
            np.asarray(values, np.int32))


def table_sha256(keys, offsets, values) -> str:
    """A checksum of a fold table (its three arrays as little-endian int32)."""
    h = hashlib.sha256()
    for a in (keys, offsets, values):
        arr = np.ascontiguousarray(np.asarray(a, dtype="<i4"))
        h.update(len(arr).to_bytes(8, "little"))
        h.update(arr.tobytes())
    return h.hexdigest()


def fold_text(text: str, table=None) -> str:
    """Folds ``text`` through ``table`` (default :func:`fold_table`), in pure Python.

    The reference for the graph's fold (:class:`mach_tf.text.TextFeaturizer`): the same
    table, looked up with a dict instead of ``searchsorted``.
    """
    keys, offsets, values = fold_table() if table is None else table
    mapping = _mapping(keys.tobytes(), offsets.tobytes(), values.tobytes()) \
        if table is not None else _default_mapping()
    return "".join(mapping.get(c, c) for c in text)


@functools.lru_cache(maxsize=1)
def _default_mapping() -> dict:
    keys, offsets, values = fold_table()
    return _build_mapping(keys, offsets, values)


@functools.lru_cache(maxsize=4)
def _mapping(keys: bytes, offsets: bytes, values: bytes) -> dict:
    return _build_mapping(np.frombuffer(keys, np.int32), np.frombuffer(offsets, np.int32),
                          np.frombuffer(values, np.int32))


def _build_mapping(keys, offsets, values) -> dict:
    return {chr(int(k)): "".join(chr(int(v)) for v in values[offsets[i]:offsets[i + 1]])
            for i, k in enumerate(keys)}
