"""The signature-latency benchmark calls one signature of two exports alternately and
reports each pass's medians, filtered signatures fed their filters."""

import json

import pytest

from benchmarks.signature_latency import main


@pytest.mark.parametrize("signature", ["serving_default", "serving_default_filtered"])
def test_times_both_exports_for_every_batch_and_pass(tiny_export, capsys, signature):
    path = tiny_export[0]
    out = main([path, path, "--signature", signature, "--batch", "1", "4", "--queries", "6",
                "--passes", "2", "--nonzeros", "3", "--exclude", "1", "2", "--json"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert out["exports"] == [path, path]
    for batch in (1, 4):
        passes = out[f"batch{batch}_p50_ms"]
        assert len(passes) == 2 and all(len(p) == 2 and min(p) > 0 for p in passes)
