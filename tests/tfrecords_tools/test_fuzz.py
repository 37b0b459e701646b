"""Property-based tests of the text parser (hypothesis, derandomized ``mach-tf-fast``
profile). ``python -m benchmarks.fuzz --examples 100000`` runs the same properties long."""

from hypothesis import example, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz import (any_line, check_bytes, check_file, check_line, check_round_trip,
                             formats, modes, point_lists, reference_line, structured_files, styles)

FAST = settings.get_profile("mach-tf-fast")


@FAST
@given(st.binary(max_size=200), formats, modes)
@example(b"", "xmc", "fail")
@example(b"\xef\xbb\xbf", "xmc", "skip")
@example(b"\x1f\x8b", "libsvm", "fail")
@example(b"1 2 3\n\n\n", "xmc", "skip")
@example(b"0" * 5000 + b"1:1\n", "libsvm", "fail")
@example(b"1 10 5\n" + b"0" * 5000 + b"1 2:1\n", "xmc", "fail")
def test_any_bytes_give_points_or_the_documented_error(data, fmt, mode):
    check_bytes(data, fmt, mode)


@FAST
@given(any_line)
@example("0" * 5000 + "1 2:1")
@example("1 2:" + "9" * 400)
@example("3 1:3.4028235e38")
@example("1,2:3")
def test_lines_agree_with_the_reference_grammar(text):
    check_line(text)


@FAST
@given(structured_files(), formats, modes)
@example(b"2 10 5\n1 1:1\n\n1 2:1\n", "xmc", "skip")
@example(b"1 10 5\n1 1:1\n\n\n1 2:1\n", "xmc", "fail")
def test_files_agree_with_the_reference_reader(data, fmt, mode):
    check_file(data, fmt, mode)


@FAST
@given(point_lists, styles)
def test_formatted_points_parse_back_exactly(points, style):
    check_round_trip(points, style)


def test_reference_is_not_vacuous():
    """The reference accepts and refuses what the grammar says (so agreement means
    something)."""
    assert reference_line("3,1 0:1 5:-2.5e3", 10, 5) == ([3, 1], [0, 5], [1.0, -2500.0])
    assert reference_line("\t2:.5 ", 10, 5) == ([], [2], [0.5])
    for bad in ("", " ", "1 1:1 1:2", "1,1 2:1", "9 1:1", "1 10:1", "1 1:nan", "1 1:1e39",
                "1 1:\u0663", "1 1:1\x00", "1 -1:1", "1 1"):
        assert reference_line(bad, 10, 5) is None, bad
