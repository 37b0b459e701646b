"""benchmarks/plots.py turns recorded benchmark JSON into PNGs."""

import json
import os

import pytest

pytest.importorskip("matplotlib")

from benchmarks.plots import RECORDED, make_plots  # noqa: E402


def test_plots_from_recorded_json(tmp_path):
    rec = tmp_path / "recorded"
    rec.mkdir()
    with open(os.path.join(RECORDED, "serving.json")) as f:  # the shipped record
        (rec / "serving.json").write_text(f.read())
    (rec / "plot_repetitions.json").write_text(json.dumps({
        "dataset": "toy", "rows": [{"repetitions": r, "p@1": 0.3 + r / 100,
                                    "p@3": 0.2, "p@5": 0.1} for r in (1, 2, 4)]}))
    out = make_plots(str(rec), str(tmp_path / "plots"))
    assert out["skipped"] == {}
    assert sorted(os.path.basename(p) for p in out["written"]) == [
        "latency_vs_classes.png", "p_at_k_vs_repetitions.png"]
    for p in out["written"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    (rec / "plot_repetitions.json").unlink()
    out = make_plots(str(rec), str(tmp_path / "plots2"))
    assert list(out["skipped"]) == ["p_at_k_vs_repetitions.png"]
