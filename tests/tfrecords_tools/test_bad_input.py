"""Bad text input, both formats: every fault names the file and line, every harmless
variation is read, and with --on-error skip every skipped line is accounted for."""

import bz2
import gzip
import json

import numpy as np
import pytest

from tests.helpers import run_cli
from tfrecords_tools.convert import convert
from tfrecords_tools.parse import DataFormatError, SparseReader, read_points

FORMATS = ["xmc", "libsvm"]
DIMS = {"num_features": 10, "num_labels": 5}


def data_file(tmp_path, fmt, lines, name=None, header=None):
    """Writes ``lines`` as a file of ``fmt`` (xmc gets a header declaring D=10, K=5).

    Returns ``(path, offset)``: the file line number of ``lines[i]`` is ``offset + i + 1``.
    """
    body = "".join(x + "\n" for x in lines).encode("utf-8", "surrogateescape")
    if fmt == "xmc":
        head = header if header is not None else f"{len(lines)} 10 5"
        body = (head + "\n").encode("utf-8") + body
    path = tmp_path / (name or f"data.{fmt}")
    path.write_bytes(body)
    return str(path), 1 if fmt == "xmc" else 0


def reader(path, fmt, **kw):
    if fmt == "libsvm":
        kw = {**DIMS, **kw}
    return SparseReader(path, fmt, **kw)


def expect_fault(path, fmt, line, message, **kw):
    with pytest.raises(DataFormatError, match=message) as info:
        list(reader(path, fmt, **kw))
    err = info.value
    assert err.path == path and err.line == line, str(err)
    assert str(err).startswith(f"{path}:{line}: " if line else f"{path}: ")
    return err


# -- faults of one line ------------------------------------------------------------------
LINE_FAULTS = [
    ("a 1:1", "malformed label id 'a'"),
    ("0,b 1:1", "malformed label id 'b'"),
    ("0 x:1", "malformed feature id 'x'"),
    ("0 1:abc", "malformed value 'abc' of feature 1"),
    ("0 1:", "malformed value '' of feature 1"),
    ("0 :1", "malformed feature id ''"),
    ("0 1:2:3", "malformed feature '1:2:3'"),
    ("0 1", "malformed feature '1'"),
    ("0 1:1_0", "malformed value '1_0'"),
    ("0 1:0x10", "malformed value '0x10'"),
    ("0, 1:1", "empty label id"),
    ("0,,1 1:1", "empty label id"),
    ("0 1:1 2,3", "labels go first"),
    ("0 -1:2", "negative feature id -1"),
    ("-2 1:2", "negative label id -2"),
    ("0 10:1", r"feature id 10 out of range: num_features=10 allows ids 0\.\.9"),
    ("5 1:1", r"label id 5 out of range: num_labels=5 allows ids 0\.\.4"),
    ("0 99999999999999999999:1", "feature id '99999999999999999999' is beyond the int64"),
    ("0 1:1 3:2 1:5", "duplicate feature id 1 in one line"),
    ("0,2,0 1:1", "duplicate label id 0"),
    ("0 1:nan", "non-finite value 'nan' of feature 1"),
    ("0 1:NaN", "non-finite value 'NaN'"),
    ("0 1:inf", "non-finite value 'inf'"),
    ("0 1:-Infinity", "non-finite value '-Infinity'"),
    ("0 1:1e400", "value '1e400' of feature 1 overflows float32"),
    ("0 1:3.5e38", "value '3.5e38' of feature 1 overflows float32"),
    ("0 1:\u0663", r"non-ASCII character '\u0663' \(U\+0663\) at column 5"),
    ("\uff10 1:1", r"non-ASCII character .* \(U\+FF10\) at column 1"),
    ("0 1:1\u00a02:1", r"non-ASCII character .* \(U\+00A0\) at column 6"),
    ("0 1:1\x002:1", r"control character '\\x00' at column 6"),
    ("0 1:1\x0b2:1", r"control character '\\x0b' at column 6"),
    ("0 1:1\r2:1", r"carriage return .* at column 6"),
    ("0 1:1 \udcff", r"byte 0xFF \(not UTF-8\) at column 7"),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("line, message", LINE_FAULTS)
def test_line_fault_names_file_and_line(tmp_path, fmt, line, message):
    path, off = data_file(tmp_path, fmt, ["1 2:1", line, "2 3:1"])
    expect_fault(path, fmt, off + 2, message)


@pytest.mark.parametrize("fmt", FORMATS)
def test_blank_line_between_points_is_a_fault(tmp_path, fmt):
    path, off = data_file(tmp_path, fmt, ["1 2:1", "", "2 3:1"])
    expect_fault(path, fmt, off + 2, "blank line")
    path, off = data_file(tmp_path, fmt, ["1 2:1", " \t ", "2 3:1"], name="b2")
    expect_fault(path, fmt, off + 2, "blank line")


@pytest.mark.parametrize("fmt", FORMATS)
def test_long_lines_are_read_whole_or_refused(tmp_path, fmt):
    ids = list(range(0, 200_000, 2))
    long_line = "3 " + " ".join(f"{i}:0.5" for i in ids)
    path, off = data_file(tmp_path, fmt, ["1 2:1", long_line, "2 3:1"], header="3 200000 5")
    dims = {"num_features": 200_000} if fmt == "libsvm" else {}
    pts = list(reader(path, fmt, **dims))
    assert len(pts) == 3 and pts[1].feature_ids == ids  # nothing clipped
    # beyond the line limit: a located fault (skippable), never a silent cut
    small = len(long_line) - 10
    expect_fault(path, fmt, off + 2, f"line longer than {small} bytes", max_line_bytes=small,
                 **dims)
    r = reader(path, fmt, on_error="skip", max_line_bytes=small, **dims)
    assert [p.line for p in r] == [off + 1, off + 3]
    assert r.skipped == [(off + 2, f"line longer than {small} bytes")]


# -- faults of the whole file ------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_file_and_directory(tmp_path, fmt):
    missing = str(tmp_path / "nope.txt")
    expect_fault(missing, fmt, None, "no such file")
    expect_fault(str(tmp_path), fmt, None, "is a directory")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("compress", [False, True])
def test_empty_file(tmp_path, fmt, compress):
    p = tmp_path / ("e.gz" if compress else "e.txt")
    p.write_bytes(gzip.compress(b"") if compress else b"")
    expect_fault(str(p), fmt, None, "empty file")


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_or_truncated_gzip(tmp_path, fmt):
    lines = [f"{i % 5} {i % 10}:1" for i in range(2000)]
    text = ("2000 10 5\n" if fmt == "xmc" else "") + "".join(x + "\n" for x in lines)
    blob = gzip.compress(text.encode())
    cases = {"truncated": blob[: len(blob) * 2 // 3],
             "flipped": blob[:len(blob) // 2] + bytes([blob[len(blob) // 2] ^ 0xFF])
             + blob[len(blob) // 2 + 1:],
             "bad_crc": blob[:-8] + bytes([blob[-8] ^ 1]) + blob[-7:],
             "magic_only": blob[:2]}
    for name, data in cases.items():
        p = tmp_path / f"{name}.gz"
        p.write_bytes(data)
        with pytest.raises(DataFormatError, match="truncated or corrupt gzip|unreadable") as info:
            list(reader(str(p), fmt, on_error="skip"))  # a file fault even when skipping
        assert info.value.path == str(p) and str(info.value).startswith(f"{p}:"), name
        assert info.value.line is None or info.value.line >= 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_unsupported_compression_is_named(tmp_path, fmt):
    p = tmp_path / "d.bz2"
    p.write_bytes(bz2.compress(b"1 10 5\n0 1:1\n"))
    expect_fault(str(p), fmt, None, "is bzip2-compressed; only plain text and gzip")


@pytest.mark.parametrize("header, message", [
    ("", "malformed header ''"),
    ("3 10", "malformed header '3 10'"),
    ("3 10 5 7", "malformed header"),
    ("three 10 5", "malformed header"),
    ("3 -10 5", "malformed header"),
    ("3 10.0 5", "malformed header"),
    ("3 10 5x", "malformed header"),
    ("3 10 \u0665", "malformed header"),
    ("3 0 5", "declares num_features=0"),
    ("3 10 0", "declares num_labels=0"),
    ("3 99999999999999999999 5", "beyond the int64 range"),
])
def test_malformed_header(tmp_path, header, message):
    path, _ = data_file(tmp_path, "xmc", ["1 2:1", "2 3:1", "0 1:1"], header=header)
    expect_fault(path, "xmc", 1, message)


def test_missing_header_hints_libsvm(tmp_path):
    path, _ = data_file(tmp_path, "libsvm", ["1,2 2:1", "2 3:1"])
    err = expect_fault(path, "xmc", 1, "malformed header")
    assert "looks like a data line" in str(err) and "--format libsvm" in str(err)


def test_xmc_file_read_as_libsvm_hints_xmc(tmp_path):
    path, _ = data_file(tmp_path, "xmc", ["1 2:1", "2 3:1"])
    err = expect_fault(path, "libsvm", 1, "malformed feature '10'")
    assert "looks like an XMC header" in str(err) and "--format xmc" in str(err)


@pytest.mark.parametrize("fmt,line,message", [("xmc", 1, "malformed header"),
                                               ("libsvm", 1, "malformed feature 'red'")])
def test_text_format_file_hints_text(tmp_path, fmt, line, message):
    path = tmp_path / "queries.tsv"
    path.write_text("1,3\tred running shoes\n\tblue hat\n")
    err = expect_fault(str(path), fmt, line, message)
    assert "looks like the text format 'labels<TAB>text': use --format text" in str(err)


def test_tab_separated_xmc_lines_are_not_text(tmp_path):
    path = tmp_path / "tabs.txt"
    path.write_text("2 10 5\n1,2\t3:1\t4:2\n\t5:1\n")
    assert [p.feature_ids for p in reader(str(path), "xmc")] == [[3, 4], [5]]


def test_header_counts_disagree_with_the_data(tmp_path):
    few, _ = data_file(tmp_path, "xmc", ["1 2:1", "2 3:1"], header="3 10 5", name="few")
    expect_fault(few, "xmc", 1, "header declares 3 points but the file has 2 data lines")
    many, _ = data_file(tmp_path, "xmc", ["1 2:1", "2 3:1", "0 1:1"], header="2 10 5",
                        name="many")
    expect_fault(many, "xmc", 4, r"the header \(line 1\) declares 2 points, but the file has "
                                 r"more data lines")
    # the count is a fault of the file: skipping lines does not hide it
    expect_fault(few, "xmc", 1, "header declares 3 points", on_error="skip")
    # dimensions asked for must match the header's
    path, _ = data_file(tmp_path, "xmc", ["1 2:1"], name="dims")
    expect_fault(path, "xmc", 1, "header declares num_features=10 but 12 was requested",
                 num_features=12)


# -- harmless variations -----------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_harmless_variations_are_read(tmp_path, fmt):
    lines = ["0,4 1:1 3:0.25", " 2:2", "\t7:.5\t9:-1E3  ", "1", "2:1e-3 4:+1.5",
             "003 0007:1.0 8:-0"]
    header = "6 10 5"
    text = "\r\n".join(([header] if fmt == "xmc" else []) + lines) + "\r\n\r\n  \n"
    p = tmp_path / f"v.{fmt}"
    p.write_bytes(b"\xef\xbb\xbf" + text.encode()[:-1])  # BOM; trailing blanks; no final \n
    r = reader(str(p), fmt)
    pts = list(r)
    assert [x.labels for x in pts] == [[0, 4], [], [], [1], [], [3]]
    assert [x.feature_ids for x in pts] == [[1, 3], [2], [7, 9], [], [2, 4], [7, 8]]
    assert [x.feature_values for x in pts] == [[1.0, 0.25], [2.0], [0.5, -1000.0], [],
                                               [0.001, 1.5], [1.0, -0.0]]
    assert r.lines_read == 6 and r.skipped == [] and r.trailing_blank_lines == 2
    # gzip of the same bytes reads the same
    g = tmp_path / f"v.{fmt}.gz"
    g.write_bytes(gzip.compress(p.read_bytes()))
    assert [(x.labels, x.feature_ids, x.feature_values) for x in reader(str(g), fmt)] == \
        [(x.labels, x.feature_ids, x.feature_values) for x in pts]


def test_float32_limits(tmp_path):
    path, _ = data_file(tmp_path, "xmc", ["0 1:3.4028234e38 2:-3.4028234e38 3:1e-45"])
    pts = read_points(path)
    assert np.isfinite(np.float32(pts[0].feature_values)).all()


# -- --on-error skip ---------------------------------------------------------------------
SKIP_LINES = ["1 2:1", "1 2:x", "", "9 1:1", " 3:1", "0 1:1 1:2", "0 1:1\x00", "4 9:1"]
SKIPPED = {2: "malformed value 'x'", 3: "blank line", 4: "label id 9 out of range",
           6: "duplicate feature id 1", 7: "control character"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_skip_lists_every_bad_line(tmp_path, fmt):
    path, off = data_file(tmp_path, fmt, SKIP_LINES)
    r = reader(path, fmt, on_error="skip")
    pts = list(r)
    assert [p.line - off for p in pts] == [1, 5, 8]
    assert [ln - off for ln, _ in r.skipped] == sorted(SKIPPED)
    for (ln, reason) in r.skipped:
        assert SKIPPED[ln - off] in reason
    assert len(pts) + len(r.skipped) == r.lines_read == len(SKIP_LINES)


def test_convert_skip_lists_lines_in_manifest(tmp_path):
    path, off = data_file(tmp_path, "xmc", SKIP_LINES)
    m = convert(path, str(tmp_path / "out"), on_error="skip", log=None)
    d = json.loads((tmp_path / "out.manifest.json").read_text())
    assert d["num_examples"] == 3 and d["lines_read"] == 8
    assert [s["line"] - off for s in d["skipped"]] == sorted(SKIPPED)
    assert d["num_examples"] + len(d["skipped"]) == d["lines_read"] == m.lines_read


def test_cli_convert_skip_prints_summary_and_lists_lines(tmp_path):
    path, off = data_file(tmp_path, "xmc", SKIP_LINES)
    prefix = tmp_path / "out"
    res = run_cli("convert", path, prefix, "--on-error", "skip", "--verify", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert (out["num_examples"], out["skipped"], out["lines_read"]) == (3, 5, 8)
    assert out["verified"] is True
    summary = [ln for ln in res.stderr.splitlines() if "skipped" in ln]
    assert len(summary) == 1, res.stderr
    assert f"{path}: converted 3 and skipped 5 of 8 lines" in summary[0]
    assert f"{prefix}.manifest.json" in summary[0]
    assert f"line {off + 2}: malformed value 'x'" in summary[0]
    d = json.loads((tmp_path / "out.manifest.json").read_text())
    assert [s["line"] - off for s in d["skipped"]] == sorted(SKIPPED)

    # without --on-error skip the first fault stops it: one line, file and line named
    res = run_cli("convert", path, tmp_path / "strict")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"mach-tf convert: error: {path}:{off + 2}: malformed value 'x' of feature 2: "
        f"expected a decimal number")
    assert not (tmp_path / "strict.manifest.json").exists()
