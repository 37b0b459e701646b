"""The text format ('labels<TAB>text'): every fault names the file and line, harmless
variations are read, --on-error skip accounts for every line, and the converted records
hold the raw text."""

import gzip
import json

import pytest

from tests.helpers import run_cli
from tfrecords_tools.convert import convert
from tfrecords_tools.manifest import Manifest
from tfrecords_tools.parse import DataFormatError
from tfrecords_tools.text_format import QueryReader, parse_text_line, query_text


def text_file(tmp_path, lines, name="queries.tsv", raw=None):
    path = tmp_path / name
    path.write_bytes(raw if raw is not None else
                     "".join(x + "\n" for x in lines).encode("utf-8", "surrogateescape"))
    return str(path)


def expect_fault(path, line, message, **kw):
    with pytest.raises(DataFormatError, match=message) as info:
        list(QueryReader(path, **kw))
    err = info.value
    assert err.path == path and err.line == line, str(err)
    assert str(err).startswith(f"{path}:{line}: " if line else f"{path}: ")
    return err


GOOD = ["0,3\tRed running shoes", "2\tCrème brûlée  set", "\tno labels at all",
        "1\t中文 查询 😀", "4\t  padded text  "]


def test_reads_points_and_keeps_the_text(tmp_path):
    path = text_file(tmp_path, GOOD)
    reader = QueryReader(path, num_labels=5)
    points = list(reader)
    assert [(p.line, p.labels, p.text) for p in points] == [
        (1, [0, 3], "Red running shoes"), (2, [2], "Crème brûlée  set"),
        (3, [], "no labels at all"), (4, [1], "中文 查询 😀"), (5, [4], "padded text")]
    assert reader.dimensions() == (0, 5) and reader.lines_read == 5


LINE_FAULTS = [
    ("0 red shoes", r"no tab: expected 'labels<TAB>text' \(labels may be empty"),
    ("0,1", r"no tab: .*\(the text is empty\)"),
    ("0\t", "empty text after the tab"),
    ("0\t   ", "empty text after the tab"),
    ("0\tred\tshoes", "a second tab at column 6"),
    ("0\tred shoes\t12", "a second tab at column 12"),
    ("a\tred", "malformed label id 'a'"),
    ("1.5\tred", r"malformed label id '1\.5'"),
    ("0,\tred", "empty label id"),
    (" 0\tred", "malformed label id ' 0'"),
    ("-1\tred", "negative label id -1"),
    ("\u0663\tred", r"malformed label id '\u0663'"),
    ("0,2,0\tred", "duplicate label id 0"),
    ("5\tred", r"label id 5 out of range: num_labels=5 allows ids 0\.\.4"),
    ("99999999999999999999\tred", "beyond the int64 range"),
    ("0\tred\x00shoes", r"control character '\\x00' at column 6"),
    ("0\tred\rshoes", r"carriage return .* at column 6"),
    ("0\tred\x85shoes", r"control character '\\x85' \(U\+0085\) at column 6"),
    ("0\tred \udcff shoes", r"byte 0xFF \(not UTF-8\) at column 7"),
]


@pytest.mark.parametrize("line,message", LINE_FAULTS)
def test_line_faults_name_file_and_line(tmp_path, line, message):
    path = text_file(tmp_path, ["1\tgood line", line, "2\tanother"])
    expect_fault(path, 2, message, num_labels=5)
    # the same reason from the line parser itself
    with pytest.raises(ValueError, match=message):
        parse_text_line(line, 5)


def test_file_faults(tmp_path):
    expect_fault(text_file(tmp_path, [], raw=b""), None, "empty file")
    expect_fault(str(tmp_path / "missing.tsv"), None, "no such file")
    blank = text_file(tmp_path, ["0\ta", "", "1\tb"], name="blank.tsv")
    expect_fault(blank, 2, "blank line")
    xmc = text_file(tmp_path, ["0 1:1 2:1"], name="xmc.tsv")
    err = expect_fault(xmc, 1, "no tab")
    assert "use --format xmc or libsvm" in str(err)
    cut = gzip.compress("0\tred shoes\n".encode() * 200)[:-30]
    with pytest.raises(DataFormatError, match="truncated or corrupt gzip"):
        list(QueryReader(text_file(tmp_path, [], name="cut.gz", raw=cut)))


def test_tolerated_variations(tmp_path):
    raw = ("\ufeff0\tred shoes\r\n1\tblue  \t \r\n2\tgreen").encode() + b"\n\n\n"
    points = list(QueryReader(text_file(tmp_path, [], raw=raw)))
    assert [(p.labels, p.text) for p in points] == [
        ([0], "red shoes"), ([1], "blue"), ([2], "green")]
    gz = text_file(tmp_path, [], name="q.gz", raw=gzip.compress(b"0\tred\n1\tblue\n"))
    assert [p.text for p in QueryReader(gz)] == ["red", "blue"]


def test_skip_lists_every_bad_line(tmp_path):
    lines = ["0\tred", "nolabels", "1\t", "2\tblue", "x\tgreen", "3\tbad \udcfe byte"]
    path = text_file(tmp_path, lines)
    m = convert(path, str(tmp_path / "out"), "text", on_error="skip")
    assert m.num_examples == 2 and m.lines_read == 6
    assert [s["line"] for s in m.skipped] == [2, 3, 5, 6]
    assert "no tab" in m.skipped[0]["reason"] and "not UTF-8" in m.skipped[3]["reason"]
    stored = json.load(open(m.path))
    assert stored["text"] is True and stored["skipped"] == m.skipped


def test_converted_records_hold_text_and_labels(tmp_path):
    from tfrecords_tools.dataset import make_dataset
    from tfrecords_tools.verification import verify

    path = text_file(tmp_path, GOOD)
    m = convert(path, str(tmp_path / "tfr" / "q"), "text", num_shards=2, compression="GZIP")
    assert m.text and m.num_features == 0 and m.num_labels == 5 and m.num_examples == 5
    assert m.stats["avg_words_per_text"] == pytest.approx(15 / 5)
    loaded = Manifest.load(str(tmp_path / "tfr" / "q"))
    assert loaded.text and verify(loaded).ok
    rows = []
    for b in make_dataset(loaded, 8, with_text=True):
        rows += [(t.decode("utf-8"), lab, n) for t, lab, n in zip(
            b["text"].numpy(), b["labels"].to_list(), b["feature_ids"].row_lengths().numpy())]
    assert sorted(rows) == sorted([("Red running shoes", [0, 3], 0),
                                   ("Crème brûlée  set", [2], 0), ("no labels at all", [], 0),
                                   ("中文 查询 😀", [1], 0), ("padded text", [4], 0)])


def test_num_features_does_not_apply(tmp_path):
    with pytest.raises(ValueError, match="num_features does not apply to --format text"):
        convert(text_file(tmp_path, GOOD), str(tmp_path / "o"), "text", num_features=10)


def test_query_text_strips_a_label_prefix():
    assert query_text("1,7\tred shoes\n") == "red shoes"
    assert query_text("\tred shoes") == "red shoes"
    assert query_text("red shoes\r\n") == "red shoes"
    assert query_text("size 10\tred") == "size 10\tred"


def test_cli_convert_text_names_the_bad_line(tmp_path):
    src = text_file(tmp_path, ["0\tred shoes", "1\tblue\tshoes"])
    res = run_cli("convert", src, tmp_path / "out", "--format", "text")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"{src}:2: a second tab at column 7" in res.stderr


def test_verify_names_a_record_without_text(tmp_path):
    from tfrecords_tools.convert import write_examples
    from tfrecords_tools.manifest import ShardError
    from tfrecords_tools.verification import verify

    m = write_examples(str(tmp_path / "t"), [([0], [], [], b"red"), ([1], [], [], b"\xff"),
                                             ([1], [], [], b"blue")], 0, 2)
    assert m.text
    with pytest.raises(ShardError, match=r"t-00000-of-00001.tfrecord: record 1: record holds "
                                         r"text that is not UTF-8"):
        verify(str(tmp_path / "t"))
