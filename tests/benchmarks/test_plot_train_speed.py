"""The training-speed plot is made from train_speed's JSON results."""

import json

import pytest

from benchmarks.plot_train_speed import main, series


def _row(k, full_ms=None, **extra):
    row = {"classes": k, "features": 20_000, "hidden": 128, "batch_size": 256,
           "mach_step_ms": 100.0 + k / 1e4, "mach_params": 3e7, **extra}
    if full_ms is not None:
        row.update(full_step_ms=full_ms, full_params=1.3e8, speedup=full_ms / 100.0)
    return row


def test_plot_from_results(tmp_path):
    rows = [_row(1_000_000, 1600.0), _row(100_000, 360.0), _row(10_000_000)]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(rows))
    out = tmp_path / "plot.png"
    res = main([str(path), "--output", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["classes"] == [1_000_000, 100_000, 10_000_000]
    # the full softmax's series skips the K where it did not run; sorted by K
    assert series(rows, "full_step_ms") == ([100_000, 1_000_000], [360.0, 1600.0])
    assert series(rows, "mach_step_ms")[0] == [100_000, 1_000_000, 10_000_000]


def test_empty_results_are_refused(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("[]")
    with pytest.raises(SystemExit, match="non-empty JSON list"):
        main([str(path), "--output", str(tmp_path / "p.png")])
