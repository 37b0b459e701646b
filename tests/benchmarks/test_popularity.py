"""The popularity benchmark scores a trained run's held-out split per penalty; without a
penalty its figures are the run's own merged validation."""

import pytest

from benchmarks.popularity import score_penalties
from mach_tf.training.tensorboard import final_validation


def test_without_penalty_it_is_the_runs_merged_validation(tiny_run):
    out = score_penalties(tiny_run, [0.0, 0.5])
    final = final_validation(tiny_run)
    for k in ("p@1", "p@3", "p@5"):
        assert out["by_penalty"]["0.0"][k] == pytest.approx(final[k], abs=1e-4)
    assert set(out["by_penalty"]) == {"0.0", "0.5"} and out["num_dev"] > 0
