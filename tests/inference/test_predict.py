"""``mach-tf predict`` and its library functions: one answer per input line, in order."""

import io
import json
import os

import pytest

from mach_tf.inference.predict import predict_lines
from tests.helpers import run_cli
from tfrecords_tools.parse import DataFormatError


def answers(out: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in out.getvalue().splitlines()]


def ask(model, lines, **kwargs) -> list[dict]:
    out = io.StringIO()
    assert predict_lines(model, lines, out, **kwargs) == len(answers(out))
    return answers(out)


def same(a: dict, b: dict) -> bool:
    """Same answer; scores to float32 rounding (batch shapes may change the last digit)."""
    return a["label_ids"] == b["label_ids"] and a["labels"] == b["labels"] and \
        a["scores"] == pytest.approx(b["scores"], abs=1e-5)


def test_an_empty_line_is_an_empty_query_and_answers_stay_aligned(tiny_export):
    model = tiny_export[0]
    got = ask(model, ["5:1\n", "\n", "7:1 9:0.5\n", "   \n"])
    assert len(got) == 4
    assert same(got[0], ask(model, ["5:1"])[0])
    assert same(got[2], ask(model, ["7:1 9:0.5"])[0])
    empty = ask(model, ["\n"])  # a batch of only empty queries: no features at all
    assert same(got[1], empty[0]) and same(got[3], empty[0])
    assert len(empty[0]["label_ids"]) == 5 and not same(got[1], got[0])


def test_batches_keep_the_input_order(tiny_export):
    lines = [f"{i}:1\n" if i % 3 else "\n" for i in range(20)]
    small, whole = ask(tiny_export[0], lines, batch_size=3), ask(tiny_export[0], lines)
    assert len(small) == 20 and all(same(a, b) for a, b in zip(small, whole))


def test_a_leading_xmc_header_is_skipped_and_said(tiny_export):
    said = []
    got = ask(tiny_export[0], ["3 300 10\n", "1,2 5:1\n", "7:1\n"], log=said.append)
    assert all(same(a, b) for a, b in zip(got, ask(tiny_export[0], ["5:1", "7:1"])))
    assert len(got) == 2
    assert len(said) == 1 and "is an XMC header" in said[0] and "'3 300 10'" in said[0]


def test_a_bad_line_is_named_after_the_lines_before_it_are_answered(tiny_export):
    out = io.StringIO()
    with pytest.raises(DataFormatError, match=r"^<stdin>:3: malformed feature"):
        predict_lines(tiny_export[0], ["5:1\n", "7:1\n", "5:1 oops\n", "8:1\n"], out)
    assert len(answers(out)) == 2


def test_a_run_directory_is_told_to_export_first(tiny_run):
    with pytest.raises(FileNotFoundError, match="is a run directory, and this needs an "
                                                "export") as info:
        predict_lines(tiny_run, ["5:1"], io.StringIO())
    assert f"mach-tf export --model-dir {tiny_run} --output BASE/NAME" in str(info.value)


def test_home_in_the_model_path_is_expanded(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    os.symlink(os.path.dirname(tiny_export[0]), tmp_path / "exports")
    assert same(ask("~/exports", ["5:1"])[0], ask(tiny_export[0], ["5:1"])[0])


def test_cli_answers_every_stdin_line(tiny_export):
    res = run_cli("predict", "--model", os.path.dirname(tiny_export[0]), "--json",
                  input_text="5:1\n\n7:1\n")
    assert res.returncode == 0, res.stderr
    out = res.stdout.strip().splitlines()
    assert json.loads(out[-1]) == {"queries": 3}
    assert len(out) == 4 and all("label_ids" in json.loads(x) for x in out[:3])
