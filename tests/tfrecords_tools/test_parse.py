"""The streaming text parser: well-formed inputs of both formats, and located errors."""

import gzip

import pytest

from tfrecords_tools.parse import DataFormatError, SparseReader, parse_line, read_points


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text)
    return str(p)


def test_parse_line_grammar():
    assert parse_line("3,1 0:1 5:0.5") == ([3, 1], [0, 5], [1.0, 0.5])
    assert parse_line(" 2:1.5 7:-2") == ([], [2, 7], [1.5, -2.0])
    assert parse_line("4") == ([4], [], [])
    assert parse_line("1:2e-3") == ([], [1], [0.002])


def test_xmc_file(tmp_path):
    path = write(tmp_path, "a.txt", "3 10 5\n0,4 1:1 3:0.25\n 2:2\n1 9:1\n")
    r = SparseReader(path, "xmc")
    pts = list(r)
    assert r.header.num_points == 3 and r.dimensions() == (10, 5)
    assert [p.labels for p in pts] == [[0, 4], [], [1]]
    assert [p.feature_ids for p in pts] == [[1, 3], [2], [9]]
    assert pts[0].feature_values == [1.0, 0.25]
    assert [p.line for p in pts] == [2, 3, 4]


def test_harmless_variations_are_accepted(tmp_path):
    text = "\ufeff2 10 5\r\n0,1 1:1   \r\n 3:1"  # BOM, CRLF, trailing spaces, no final \n
    path = write(tmp_path, "b.txt", text.encode("utf-8"), "wb")
    pts = read_points(path)
    assert [p.labels for p in pts] == [[0, 1], []]
    assert pts[1].feature_ids == [3]


def test_gzip_input(tmp_path):
    p = tmp_path / "c.txt.gz"
    with gzip.open(p, "wt") as f:
        f.write("1 4 2\n1 0:1 3:2\n")
    assert read_points(str(p))[0].feature_values == [1.0, 2.0]


def test_libsvm_infers_dimensions(tmp_path):
    path = write(tmp_path, "d.svm", "1,7 0:1 12:2\n3 4:1\n")
    r = SparseReader(path, "libsvm")
    assert len(list(r)) == 2
    assert r.dimensions() == (13, 8)


def test_libsvm_checks_given_dimensions(tmp_path):
    path = write(tmp_path, "e.svm", "1 0:1\n2 12:2\n")
    with pytest.raises(DataFormatError, match=r"e\.svm:2: feature id 12 out of range"):
        list(SparseReader(path, "libsvm", num_features=10))


@pytest.mark.parametrize("line, message", [
    ("0,a 1:1", "malformed label id 'a'"),
    ("0 x:1", "malformed feature id 'x'"),
    ("0 1:abc", "malformed value 'abc'"),
    ("0 1:nan", "non-finite value"),
    ("0 1:inf", "non-finite value"),
    ("0 1", "malformed feature '1'"),
    ("0 -1:2", "negative feature id -1"),
    ("-2 1:2", "negative label id -2"),
    ("0 1:1 1:2", "duplicate feature id 1"),
    ("0,0 1:1", "duplicate label id 0"),
    ("0 99:1", "feature id 99 out of range"),
    ("7 1:1", "label id 7 out of range"),
    ("0,,1 1:1", "empty label id"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "bad.txt", f"2 10 5\n1 2:1\n{line}\n")
    with pytest.raises(DataFormatError, match=message) as info:
        list(SparseReader(path, "xmc"))
    assert info.value.path == path and info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: ")


def test_header_faults(tmp_path):
    with pytest.raises(DataFormatError, match="malformed header"):
        list(SparseReader(write(tmp_path, "h1.txt", "0,1 2:1\n"), "xmc"))
    with pytest.raises(DataFormatError, match="header declares 3 points but the file has 1"):
        list(SparseReader(write(tmp_path, "h2.txt", "3 10 5\n1 2:1\n"), "xmc"))
    with pytest.raises(DataFormatError, match="empty file"):
        list(SparseReader(write(tmp_path, "h3.txt", ""), "xmc"))


def test_missing_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(DataFormatError, match="no such file") as info:
        list(SparseReader(missing))
    assert info.value.path == missing


def test_skip_mode_accounts_for_every_line(tmp_path):
    path = write(tmp_path, "s.txt", "4 10 5\n1 2:1\n1 2:x\n 3:1\n9 1:1\n")
    r = SparseReader(path, "xmc", on_error="skip")
    pts = list(r)
    assert len(pts) + len(r.skipped) == r.lines_read == 4
    assert [ln for ln, _ in r.skipped] == [3, 5]
