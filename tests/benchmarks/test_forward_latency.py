"""The forward-latency benchmark times the run's stacked repetitions on queries shaped like
its data, and reports each batch size it was given."""

import json

import numpy as np

from benchmarks.forward_latency import main, queries
from mach_tf import rundir


def test_queries_have_distinct_features_in_range():
    x = queries(np.random.default_rng(0), 50, 7, 4)
    ids = x["feature_ids"].numpy()
    assert ids.shape == (4, 7) and ids.min() >= 0 and ids.max() < 50
    assert all(len(set(row)) == 7 for row in ids)


def test_times_every_batch_size_on_the_runs_weights(tiny_run, capsys):
    out = main([tiny_run, "--batch", "1", "3", "--calls", "6", "--nonzeros", "4", "--json"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    config = rundir.load_config(tiny_run)
    assert out["repetitions"] == config.num_repetitions
    for batch in (1, 3):
        assert 0 < out[f"batch{batch}_p50_ms"] <= out[f"batch{batch}_p99_ms"]
