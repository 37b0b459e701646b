"""Evaluating the merge of a run's first r repetitions (what more repetitions buy)."""

import json

import pytest

from mach_tf.evaluate import evaluate


def test_subset_matches_an_independent_merge(tiny_run, tiny_data, tiny_config):
    from benchmarks.plot_repetitions import subset_metrics

    full = evaluate(tiny_run, tiny_data["test"])
    assert "repetitions" not in full
    assert evaluate(tiny_run, tiny_data["test"], repetitions=tiny_config.num_repetitions)[
        "p@1"] == full["p@1"]
    for r in (1, 2):
        mine = evaluate(tiny_run, tiny_data["test"], repetitions=r)
        ref = subset_metrics(tiny_run, tiny_data["test"], r)
        assert mine["repetitions"] == r
        for k in ("p@1", "p@5", "ndcg@5", "psp@1"):
            assert mine[k] == pytest.approx(ref[k], abs=1e-9), (r, k)
    with pytest.raises(ValueError, match="repetitions must be in"):
        evaluate(tiny_run, tiny_data["test"], repetitions=tiny_config.num_repetitions + 1)


def test_cli_repetitions(tiny_run, tiny_data, capsys):
    from mach_tf.cli import main

    assert main(["evaluate", "--model", tiny_run, "--test", tiny_data["test"],
                 "--repetitions", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["repetitions"] == 2 and {"p@1", "p@5", "ndcg@5", "psp@5"} <= set(out)
    assert main(["evaluate", "--model", tiny_run, "--test", tiny_data["test"],
                 "--repetitions", "0", "--json"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "mach-tf evaluate: error: repetitions must be in [1, 4], got 0"
