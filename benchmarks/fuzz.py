"""Property-based fuzzing of the text parser (hypothesis).

    python -m benchmarks.fuzz --examples 100000 [--seed S] [--json]

Four properties, each run for its share of ``--examples``:

* ``bytes``: any bytes, read as an XMC or libsvm file in fail or skip mode, give points or a
  :class:`DataFormatError` naming the file, never another exception; with skip,
  converted + skipped == lines read.
* ``lines``: any line over a grammar-biased alphabet (digits, signs, separators, NaN/Inf
  words, NUL, non-ASCII digits and spaces, bytes that are not UTF-8), and well-formed lines
  with parts swapped for edge cases (int64 and float32 borders, odd separators, exponents),
  are accepted by :func:`parse_line` exactly when an independent regular-expression
  reference accepts them, with the same ids and values.
* ``files``: structured files (headers right and wrong, blank lines, CRLF, BOM, missing
  final newline, gzip) give the reference reader's points, skipped lines, or the error at
  the reference's line.
* ``round_trip``: random valid points, formatted with random harmless variations, parse
  back exactly.

The suite (``tests/test_fuzz.py``) runs the same properties under the derandomized
``mach-tf-fast`` profile. The last stdout line is one JSON object: examples run per
property, failures (with the falsifying example), seconds, and the settings.
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import json
import math
import os
import re
import shutil
import tempfile
import time
import zlib

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tfrecords_tools.parse import (FLOAT32_OVERFLOW, INT64_MAX, DataFormatError, SparseReader,
                                   parse_line)

settings.register_profile(
    "mach-tf-fast", max_examples=300, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- an independent reference of the grammar (regular expressions, whole file in memory) ---
_ID = r"[0-9]+"
_VALUE = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_FEATURE = rf"{_ID}:{_VALUE}"
_WITH_LABELS = re.compile(rf"(?:{_ID}(?:,{_ID})*)?(?:[ \t]+{_FEATURE})*")
_FEATURES_FIRST = re.compile(rf"{_FEATURE}(?:[ \t]+{_FEATURE})*")
_HEADER = re.compile(rf"[ \t]*({_ID})[ \t]+({_ID})[ \t]+({_ID})[ \t]*")
_CODECS = (b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"PK\x03\x04")


def _ref_id(tok: str, limit: int | None) -> int | None:
    digits = tok.lstrip("0") or "0"
    if len(digits) > 19 or int(digits) > INT64_MAX:
        return None
    v = int(digits)
    return None if limit is not None and v >= limit else v


def reference_line(text: str, num_features=None, num_labels=None):
    """``(labels, ids, values)`` when the grammar accepts ``text``, else ``None``."""
    if re.search(r"[^\t\x20-\x7e]", text):
        return None
    body = text.rstrip(" \t")
    if not body or not (_WITH_LABELS.fullmatch(body) or _FEATURES_FIRST.fullmatch(body)):
        return None
    labels, ids, values = [], [], []
    for tok in body.replace("\t", " ").split(" "):
        if not tok:
            continue
        if ":" in tok:
            fid, val = tok.split(":")
            v = float(val)
            if not math.isfinite(v) or abs(v) >= FLOAT32_OVERFLOW:
                return None
            ids.append(_ref_id(fid, num_features))
            values.append(v)
        else:
            labels = [_ref_id(t, num_labels) for t in tok.split(",")]
    if None in ids or None in labels or len(set(ids)) < len(ids) or \
            len(set(labels)) < len(labels):
        return None
    return labels, ids, values


def reference_file(data: bytes, fmt: str, on_error: str, num_features=None, num_labels=None):
    """What reading ``data`` must give: ``("ok", points, skipped_lines)`` or
    ``("error", line)`` (``line`` None for faults of the whole file)."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return ("error", "any")
    elif data.startswith(_CODECS):
        return ("error", None)
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]
    texts = [x.decode("utf-8", "surrogateescape").rstrip("\r\n") for x in lines]
    numbered = list(enumerate(texts, start=1))
    nf, nl, declared = num_features, num_labels, None
    if fmt == "xmc":
        if not numbered:
            return ("error", None)
        m = _HEADER.fullmatch(numbered[0][1])
        if m is None or any(_ref_id(g, None) is None for g in m.groups()):
            return ("error", 1)
        declared, nf, nl = (int(g) for g in m.groups())
        if nf < 1 or nl < 1 or (num_features not in (None, nf)) or \
                (num_labels not in (None, nl)):
            return ("error", 1)
        numbered = numbered[1:]
    while numbered and not numbered[-1][1].strip(" \t"):
        numbered.pop()  # blank lines at the end hold no point
    points, skipped = [], []
    for count, (n, text) in enumerate(numbered, start=1):
        blank = not text.strip(" \t")
        if not blank and declared is not None and count > declared:
            return ("error", n)
        parsed = None if blank else reference_line(text, nf, nl)
        if parsed is None:
            if on_error == "fail":
                return ("error", n)
            skipped.append(n)
        else:
            points.append((n, *parsed))
    if declared is not None and len(numbered) != declared:
        return ("error", 1)
    if fmt == "libsvm" and not numbered:
        return ("error", None)
    return ("ok", points, skipped)


# -- the properties ------------------------------------------------------------------------
_SCRATCH: list[str] = []  # one reusable input file for all examples of a process


def _scratch_write(data: bytes) -> str:
    if not _SCRATCH:
        folder = tempfile.mkdtemp(prefix="mach-fuzz-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _SCRATCH.append(os.path.join(folder, "input.txt"))
    with open(_SCRATCH[0], "wb") as f:
        f.write(data)
    return _SCRATCH[0]


def read(data: bytes, fmt: str, on_error: str, **dims):
    """``(reader, points)`` or the DataFormatError; anything else propagates."""
    path = _scratch_write(data)
    reader = SparseReader(path, fmt, on_error=on_error, **dims)
    try:
        return reader, list(reader)
    except DataFormatError as e:
        assert e.path == path and str(e).startswith(path), str(e)
        assert e.line is None or e.line >= 1
        return reader, e


def check_bytes(data: bytes, fmt: str, on_error: str) -> None:
    reader, out = read(data, fmt, on_error)
    if not isinstance(out, DataFormatError):
        assert len(out) + len(reader.skipped) == reader.lines_read
        for p in out:
            assert all(0 <= i < reader.dimensions()[0] for i in p.feature_ids)
            assert all(math.isfinite(v) and abs(v) < FLOAT32_OVERFLOW
                       for v in p.feature_values)


def check_line(text: str) -> None:
    for limits in ((1000, 50), (None, None)):
        expected = reference_line(text, *limits)
        try:
            got = parse_line(text, *limits)
        except ValueError:
            got = None
        assert got == expected, (text, limits, got, expected)


def check_file(data: bytes, fmt: str, on_error: str) -> None:
    expected = reference_file(data, fmt, on_error)
    reader, out = read(data, fmt, on_error)
    if expected[0] == "error":
        assert isinstance(out, DataFormatError), (expected, out)
        if expected[1] != "any":
            assert out.line == expected[1], (expected, str(out))
        return
    assert not isinstance(out, DataFormatError), (expected, str(out))
    got = [(p.line, p.labels, p.feature_ids, p.feature_values) for p in out]
    assert got == [tuple(p) for p in expected[1]], (got, expected)
    assert [ln for ln, _ in reader.skipped] == expected[2], (reader.skipped, expected)
    assert len(out) + len(reader.skipped) == reader.lines_read


def check_round_trip(points, style) -> None:
    sep, eol, bom, final_eol, zeros, fmt_value, header, gz = style
    lines = []
    for labels, feats in points:
        lab = ",".join(("0" * zeros) + str(x) for x in labels)
        fs = sep.join(f"{'0' * zeros}{i}:{fmt_value(v)}" for i, v in feats.items())
        lines.append((lab + sep + fs) if lab else (sep + fs if fs else " "))
    lines = [x if x.strip() else "0" for x in lines]  # a point with nothing is not writable
    text = eol.join(([f"{len(lines)} 100000 1000"] if header else []) + lines)
    data = (b"\xef\xbb\xbf" if bom else b"") + (text + (eol if final_eol else "")).encode()
    if gz:
        data = gzip.compress(data)
    fmt = "xmc" if header else "libsvm"
    reader, out = read(data, fmt, "fail", **({} if header else {"num_features": 100000,
                                                                "num_labels": 1000}))
    assert not isinstance(out, DataFormatError), str(out)
    expect = [((lab if (lab or feats) else [0]), list(feats), list(feats.values()))
              for lab, feats in points]
    assert [(p.labels, p.feature_ids, p.feature_values) for p in out] == expect


# -- strategies ----------------------------------------------------------------------------
_PIECES = ["0", "1", "7", "9", "42", "007", "12345678901234567890", "-", "+", ".", "e", "E",
           ",", ":", ":", " ", " ", "\t", "  ", "nan", "inf", "Infinity", "1e400", "3.5e38",
           "3.4e38", "1e-50", "_", "x", "\x00", "\x0b", "\r", "\u0663", "\uff11", "\u00a0",
           "\udcff", "\udc80"]
line_texts = st.lists(st.sampled_from(_PIECES), max_size=14).map("".join)
valid_lines = st.builds(
    lambda labels, feats, sep: ",".join(map(str, labels)) + "".join(
        f"{sep}{i}:{v!r}" for i, v in feats.items()),
    st.lists(st.integers(0, 60), max_size=3, unique=True),
    st.dictionaries(st.integers(0, 1100), st.floats(-1e6, 1e6, allow_nan=False, width=32),
                    max_size=4),
    st.sampled_from([" ", "\t", "  "]))
# Lines that are mostly well-formed, with one or two parts swapped for an edge case: where
# the grammar's borders are (int64, float32, separators, signs, exponents, characters).
_ID_EDGES = ["0", "007", "49", "50", "999", "1000", "-1", "-0", "+1", "", "a", "1.0",
             "9223372036854775807", "9223372036854775808", "0" * 30 + "7", "\u0663", "\uff11",
             "1\x00"]
_VALUE_EDGES = ["1", "-0", ".5", "5.", "+.5e-3", "1E5", "nan", "NaN", "inf", "-Infinity",
                "1e400", "3.4028234e38", "3.4028236e38", "-3.5e38", "1e-50", "1_0", "0x10", "",
                ".", "e5", "1e", "--1", "\u0663", "1\xa0"]
_SEPS = [" "] * 20 + ["\t", "  ", " \t", "\xa0", "\x0b", "\x0c", "\r", "\x00", "\u2003",
                      "\x1c", ","]


def _mostly(usual, edge, odds: int = 5):
    """``usual``, and one time in ``odds + 1`` an edge case."""
    return st.one_of(*([usual] * odds), edge)


def _with_char(tokens):
    """A token with one character put in somewhere (a typo, a stray byte)."""
    return st.builds(lambda tok, i, ch: tok[:i % (len(tok) + 1)] + ch + tok[i % (len(tok) + 1):],
                     tokens, st.integers(0, 40), st.sampled_from(list("_+-.eE,: \t0x") +
                                                                 ["\xa0", "\x00", "\u0663"]))


_plain_ids = st.integers(0, 1100).map(str)
_plain_values = st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr)
_near_float32_max = st.floats(3.3e38, 3.5e38)
_ids = _mostly(_plain_ids, st.one_of(st.sampled_from(_ID_EDGES), _with_char(_plain_ids),
                                     st.integers(2**63 - 3, 2**63 + 3).map(str)), odds=4)
_values = _mostly(_plain_values,
                  st.one_of(st.sampled_from(_VALUE_EDGES), _with_char(_plain_values),
                            _near_float32_max.map(repr),
                            _near_float32_max.map(lambda v: repr(-v))), odds=3)
mutated_lines = st.builds(
    lambda labels, seps, feats, trail: labels + "".join(
        sep + feat for sep, feat in zip(seps, feats)) + trail,
    st.one_of(st.just(""), st.lists(_ids, min_size=1, max_size=3).map(",".join)),
    st.lists(st.sampled_from(_SEPS), min_size=4, max_size=4),
    st.lists(st.tuples(_ids, st.sampled_from([":"] * 6 + ["::", ""]), _values).map("".join),
             max_size=4),
    st.sampled_from([""] * 8 + [" ", "\t", "\x0b", "\xa0"]))
any_line = st.one_of(line_texts, valid_lines, mutated_lines)


@st.composite
def structured_files(draw):
    lines = draw(st.lists(any_line, max_size=8))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    head = draw(st.sampled_from(["exact", "more", "fewer", "garbage", "none"]))
    n = len(lines) + {"more": 1, "fewer": -1}.get(head, 0)
    header = {"garbage": draw(line_texts), "none": None}.get(head, f"{max(n, 0)} 1000 50")
    blanks = draw(st.sampled_from(["", eol, eol + " " + eol]))
    text = eol.join(([header] if header is not None else []) + lines)
    data = text.encode("utf-8", "surrogateescape")
    data += (eol.encode() if draw(st.booleans()) and data else b"") + blanks.encode()
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 9)) == 0:
        data = gzip.compress(data)
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
    return data


point_lists = st.lists(st.tuples(
    st.lists(st.integers(0, 999), max_size=4, unique=True),
    st.dictionaries(st.integers(0, 99999),
                    st.floats(allow_nan=False, allow_infinity=False, width=32),
                    max_size=6)), min_size=1, max_size=6)


def _plus(v: float) -> str:
    return "+" + repr(v) if math.copysign(1, v) > 0 else repr(v)


# (separator, line end, BOM, final line end, leading zeros of ids, value format, XMC header,
# gzip): every combination is a harmless variation of the same points
styles = st.tuples(st.sampled_from([" ", "\t", "   ", " \t"]), st.sampled_from(["\n", "\r\n"]),
                   st.booleans(), st.booleans(), st.integers(0, 2),
                   st.sampled_from([repr, lambda v: format(v, ".17e"), _plus]),
                   st.booleans(), st.booleans())
formats = st.sampled_from(["xmc", "libsvm"])
modes = st.sampled_from(["fail", "skip"])

PROPERTIES = {
    "bytes": (check_bytes, (st.binary(max_size=200), formats, modes)),
    "lines": (check_line, (any_line,)),
    "files": (check_file, (structured_files(), formats, modes)),
    "round_trip": (check_round_trip, (point_lists, styles)),
}


# -- the long run --------------------------------------------------------------------------
def run_property(name: str, examples: int, seed_value: int) -> dict:
    check, strategies = PROPERTIES[name]
    count = [0]

    def counted(args):
        count[0] += 1
        check(*args)

    test = settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))(
        seed(seed_value)(given(st.tuples(*strategies))(counted)))
    t0 = time.time()
    failure = None
    try:
        test()
    except Exception as e:  # noqa: BLE001 - report the falsifying example, keep going
        first = e.exceptions[0] if isinstance(e, BaseExceptionGroup) else e
        failure = f"{type(first).__name__}: {first}"[:2000]
    return {"examples": count[0], "failure": failure, "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=100_000,
                    help="examples in all (split evenly over the properties)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--properties", default=",".join(PROPERTIES))
    ap.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    a = ap.parse_args(argv)
    names = [p for p in a.properties.split(",") if p]
    per = max(1, a.examples // len(names))
    t0 = time.time()
    results = {}
    for name in names:
        results[name] = run_property(name, per, a.seed)
        if not a.json:
            print(f"{name}: {results[name]}", flush=True)
    out = {"benchmark": "fuzz", "examples": sum(r["examples"] for r in results.values()),
           "failures": sum(r["failure"] is not None for r in results.values()),
           "properties": results, "seconds": round(time.time() - t0, 1),
           "settings": {"examples_requested": a.examples, "per_property": per,
                        "seed": a.seed, "hypothesis_profile": "derandomize=False, seeded"}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
