"""The patience benchmark reads a run's logged merged-validation curves and replays early
stopping on them: at the run's own patience it must find the epochs each group ran and
the epoch it kept."""

import pytest

from benchmarks.patience import group_curves, simulate, stop
from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.datasets.synthetic import SyntheticSpec, generate
from mach_tf.launch.local import train
from tfrecords_tools.convert import write_examples


def test_stop_is_keras_early_stopping():
    curve = [0.1, 0.3, 0.3, 0.2, 0.25, 0.4, 0.1, 0.1]
    assert stop(curve, 1) == (3, 1)  # epoch 2 ties (no gain): stops, keeps the first best
    assert stop(curve, 2) == (4, 1)
    assert stop(curve, 4) == (8, 5)  # the rise at epoch 5 comes in time
    assert stop([0.1, 0.2, 0.3], 2) == (3, 2)  # the cap ends it


def test_replay_at_the_runs_own_patience_matches_the_run(tmp_path):
    spec = SyntheticSpec(num_labels=40, num_features=200, avg_labels=1.5, seed=5)
    write_examples(str(tmp_path / "train"), list(generate(spec, 1200, seed=2)), 200, 40)
    config = MachConfig.from_data(40, 200, num_buckets=16, num_repetitions=4,
                                  hidden_units=[32], epochs=25, batch_size=64, group_size=2,
                                  learning_rate=1e-2, seed=1, early_stopping_patience=3)
    run = str(tmp_path / "run")
    train(run, str(tmp_path / "train"), None, config, verbose=0, log=lambda m: None)
    curves = group_curves(run, config.early_stopping_metric)
    assert len(curves) == 2
    out = simulate(run, [1, 2, 3])
    own = out["by"]["3"]
    assert own["epoch_share"] == 1.0
    kept_p1 = []
    for c, epochs, r in zip(curves.values(), own["epochs"], (0, 2)):
        assert epochs == len(c["watched"])
        done = rundir.completion(run, r)
        kept = done["best_epoch"] - 1  # 1-based in COMPLETE.json
        assert stop(c["watched"], 3) == (epochs, kept)
        # the kept epoch's dev P@1 is what the group recorded for it
        assert c["p@1"][kept] == pytest.approx(done["group_validation"]["p@1"], abs=1e-6)
        kept_p1.append(c["p@1"][kept])
    assert own["dev_p@1"] == pytest.approx(sum(kept_p1) / 2, abs=1e-4)
    assert any(n < 25 for n in own["epochs"])  # early stopping ended a group
    assert out["by"]["1"]["total_epochs"] <= out["by"]["2"]["total_epochs"] <= \
        own["total_epochs"]
    with pytest.raises(ValueError, match="patience 3; its curves cannot say"):
        simulate(run, [4])
