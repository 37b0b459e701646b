"""The popularity benchmark scores a trained run's held-out split per penalty; without a
penalty its figures are the run's own merged validation."""

import pytest

from benchmarks.popularity import dev_centroid_similarity, precision, score_penalties
from mach_tf import rundir
from mach_tf.training.callbacks import merged_metrics
from mach_tf.training.tensorboard import final_validation
from mach_tf.training.validation import DataSplit, load_sample


def test_without_penalty_it_is_the_runs_merged_validation(tiny_run):
    out = score_penalties(tiny_run, [0.0, 0.5])
    final = final_validation(tiny_run)
    for k in ("p@1", "p@3", "p@5"):
        assert out["by_penalty"]["0.0"][k] == pytest.approx(final[k], abs=1e-4)
    assert set(out["by_penalty"]) == {"0.0", "0.5"} and out["num_dev"] > 0


def test_the_first_r_repetitions_are_scored_as_their_own_merge(tiny_run):
    config = rundir.load_config(tiny_run)
    full = config.num_repetitions
    out = score_penalties(tiny_run, [0.0], repetitions=[1, full])
    assert out["by_repetitions"][str(full)] == out["by_penalty"]
    # Repetition 0 alone, scored the way training's merged validation scores a group.
    split = DataSplit.from_dict(rundir.read_json(rundir.validation_path(tiny_run)))
    config, models = rundir.load_repetitions(tiny_run, [0], served=False)
    alone = merged_metrics(config, load_sample(split, 10 ** 9), models, [0])
    for k in ("p@1", "p@3", "p@5"):
        assert out["by_repetitions"]["1"]["0.0"][k] == pytest.approx(alone[k], abs=1e-4)
    with pytest.raises(ValueError, match="--repetitions must be in 1.."):
        score_penalties(tiny_run, [0.0], repetitions=[full + 1])


def test_label_centroids_are_scored_from_the_training_side_only(tiny_run):
    config = rundir.load_config(tiny_run)
    out = score_penalties(tiny_run, [0.0], centroid_weights=[0.0, 1e6])
    full = str(config.num_repetitions)
    # Weight 0 is the plain merge; a huge weight ranks by the centroid cosine alone.
    assert out["by_centroid_weight"]["0.0"][full] == out["by_penalty"]
    split = DataSplit.from_dict(rundir.read_json(rundir.validation_path(tiny_run)))
    sample = load_sample(split, 10 ** 9)
    sim = dev_centroid_similarity(tiny_run, config, sample, out["centroid_features"])
    alone = precision(sim, sample.labels)
    for k in ("p@1", "p@3", "p@5"):
        assert out["by_centroid_weight"]["1000000.0"][full]["0.0"][k] == \
            pytest.approx(alone[k], abs=2e-3)
    assert alone["p@1"] > 0.2  # the centroids alone carry real signal on the tiny set
