"""keras-tuner search on tiny synthetic data, and training its best config for real."""

import json
import os

import pytest

from mach_tf import rundir
from mach_tf.config import MachConfig
from tests.helpers import run_cli

pytest.importorskip("keras_tuner")

SPACE = {"hidden_width": [8, 32], "learning_rate": [0.003, 0.03]}


@pytest.fixture(scope="module")
def tune_lines():
    """What the search below logged."""
    return []


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_data, tiny_config, tune_lines):
    from mach_tf.training.tuning import tune

    out = str(tmp_path_factory.mktemp("tune") / "search")
    base = tiny_config.replace(num_repetitions=2, epochs=3, early_stopping_patience=2,
                               validation_fraction=0.2)
    summary = tune(tiny_data["train"], out, base=base, tuner="bayesian", max_trials=3,
                   space=SPACE, seed=1, log=tune_lines.append)
    return out, base, summary


def test_search_writes_best_config_and_trials(tuned):
    out, base, summary = tuned
    trials = json.load(open(os.path.join(out, "trials.json")))
    assert summary["trials"] == len(trials) == 3
    scores = [t["score"] for t in trials]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert summary["best_score"] == max(scores) == trials[0]["score"]
    best = MachConfig.from_json(open(summary["config"]).read())
    hp = trials[0]["hyperparameters"]
    assert best.hidden_units == [hp["hidden_width"]]
    assert best.learning_rate == hp["learning_rate"]
    # Everything not searched is the base config's; one group holds all R repetitions.
    assert best.hashing == base.hashing and best.num_buckets == base.num_buckets
    assert best.group_size == best.num_repetitions == 2
    # The trials differ in what was searched.
    assert len({json.dumps(t["hyperparameters"], sort_keys=True) for t in trials}) > 1


def test_a_line_for_every_epoch_and_every_trial(tuned, tune_lines):
    out, base, summary = tuned
    lines = tune_lines
    trials = [ln for ln in lines if ln.startswith("tune trial") and " -> " in ln]
    assert [ln.split(":")[0] for ln in trials] == [f"tune trial {i}/3" for i in (1, 2, 3)]
    # the first trial is the base config; each line names its values, score and time
    assert trials[0].startswith(f"tune trial 1/3: hidden_width={base.hidden_units[0]} "
                                f"learning_rate={base.learning_rate:g} -> merged_p@1 0.")
    assert all(" (best 0." in ln and ln.endswith(" s") for ln in trials)
    assert f"(best {summary['best_score']:.4f})" in trials[-1]
    epochs = [ln for ln in lines if ln.startswith("tune trial 1/3 epoch ")]
    assert epochs and epochs[0].startswith("tune trial 1/3 epoch 1/3: loss ")
    assert "val P@1" in epochs[0]
    # epochs come before their trial's line
    assert lines.index(epochs[-1]) < lines.index(trials[0])


def test_first_trial_is_the_base_config(tuned):
    out, base, _ = tuned
    first = json.load(open(os.path.join(out, "tuner", "trial_0", "trial.json")))
    values = first["hyperparameters"]["values"]
    assert values == {"hidden_width": base.hidden_units[0],
                      "learning_rate": base.learning_rate}
    assert first["status"] == "COMPLETED"


def test_trials_are_logged_for_the_hparams_dashboard(tuned):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = tuned
    trial_dirs = sorted(os.listdir(os.path.join(out, "logs")))
    assert len(trial_dirs) == 3
    session = EventAccumulator(os.path.join(out, "logs", trial_dirs[0], "execution0"))
    session.Reload()
    assert "_hparams_/session_start_info" in session.Tags()["tensors"]
    scalars = EventAccumulator(os.path.join(out, "logs", trial_dirs[0], "execution0", "train"))
    scalars.Reload()
    assert "epoch_merged_p@1" in scalars.Tags()["tensors"]


def test_best_config_trains_with_cli_and_reproduces_the_score(tuned, tmp_path, tiny_data):
    out, _, summary = tuned
    run = tmp_path / "run"
    res = run_cli("train", "--train", tiny_data["train"], "--model-dir", run, "--config",
                  summary["config"], "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["complete"] == 2
    assert rundir.load_config(str(run)) == MachConfig.from_json(open(summary["config"]).read())
    # The run trains the trial again (same split, seeds and grouping): the merged
    # validation P@1 of the epoch it keeps is the tuner's best score.
    marker = rundir.completion(str(run), 0)
    # (Measured equal; the tolerance is one of the 160 validation points, should another
    # machine's thread count change a float reduction's order.)
    assert marker["merged_validation"]["p@1"] == pytest.approx(summary["best_score"],
                                                               abs=0.007)


def test_unknown_lever_is_refused(tiny_data, tiny_config, tmp_path):
    from mach_tf.training.tuning import tune

    with pytest.raises(ValueError, match="unknown levers"):
        tune(tiny_data["train"], str(tmp_path / "t"), base=tiny_config,
             space={"colour": ["blue"]})


def test_a_linear_base_config_tunes_its_layers(tmp_path):
    import keras_tuner

    from mach_tf.training.tuning import MachHyperModel

    base = MachConfig.from_data(50, 40, num_buckets=8, num_repetitions=2, hidden_units=[])
    model = MachHyperModel(base, "unused", None, str(tmp_path),
                           space={"hidden_layers": [0, 1], "hidden_width": [16]})
    hp = keras_tuner.HyperParameters()
    assert model.config_for(hp).hidden_units == []      # the first choice: 0 layers
    hp.values["hidden_layers"] = 1
    assert model.config_for(hp).hidden_units == [16]
