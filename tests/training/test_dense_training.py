"""Training on dense vectors, with and without the user's own Keras encoder: the run's
config records the encoder, every worker builds the same network, frozen encoders stay as
they were, and a bad or changed encoder is refused by name."""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import keras
import numpy as np
import pytest

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.data import config_for_data
from mach_tf.errors import EncoderError, RunDirError
from mach_tf.inference.evaluation import evaluate, popularity_baseline
from mach_tf.launch.extension import extend
from mach_tf.launch.local import train
from mach_tf.model.encoders import build_encoders
from mach_tf.training.tuning import tune
from tests.helpers import run_cli

QUIET = {"verbose": 0, "log": lambda msg: None}


def _encoder(dim=32, width=24, seed=0):
    return keras.Sequential([
        keras.Input((dim,)),
        keras.layers.Dense(width, activation="relu",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=seed)),
        keras.layers.LayerNormalization()], name="user_tower")


def _floor(run, test):
    return popularity_baseline(rundir.load_label_counts(run), test)["p@1"]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, dense_data):
    run = str(tmp_path_factory.mktemp("dense") / "run")
    config = config_for_data(dense_data["train"], num_repetitions=4, num_buckets=32,
                             epochs=4, group_size=2, seed=3)
    train(run, dense_data["train"], config=config, **QUIET)
    return run


def test_dense_run_trains_and_scores(dense_run, dense_data):
    config = rundir.load_config(dense_run)
    assert (config.input_format, config.num_features, config.feature_norm) == \
        ("dense", 32, "none")
    result = evaluate(dense_run, dense_data["test"])
    assert result["p@1"] > 3 * _floor(dense_run, dense_data["test"])
    assert result["p@1"] > 0.4


def test_dense_data_and_a_sparse_run_refuse_each_other(dense_run, dense_data, tiny_data,
                                                       tiny_run):
    with pytest.raises(RunDirError, match="dense vectors"):
        evaluate(dense_run, tiny_data["test"])
    with pytest.raises(RunDirError, match="dense embeddings"):
        evaluate(tiny_run, dense_data["test"])


def test_frozen_encoder_file_is_shared_and_kept(tmp_path, dense_data):
    enc = _encoder(seed=4)
    enc.save(tmp_path / "tower.keras")
    config = config_for_data(dense_data["train"], num_repetitions=4, num_buckets=32,
                             epochs=2, seed=3, encoder_file=str(tmp_path / "tower.keras"),
                             freeze_encoder=True)
    assert config.group_size == 4 and config.encoder["trainable"] is False
    assert config.encoder["output_dim"] == 24
    run = str(tmp_path / "run")
    train(run, dense_data["train"], config=config, **QUIET)
    assert os.path.exists(os.path.join(run, "encoder.keras"))
    _, models = rundir.load_repetitions(run, served=False)
    for m in models:
        for got, want in zip(m.encoders[0].get_weights(), enc.get_weights()):
            np.testing.assert_array_equal(got, want)
    _, stacked = rundir.load_all(run)
    assert len(stacked.encoders) == 1  # one shared encoder serves all four
    assert evaluate(run, dense_data["test"])["p@1"] > 3 * _floor(run, dense_data["test"])


def test_trainable_encoder_file_fine_tunes_a_copy_per_repetition(tmp_path, dense_data):
    enc = _encoder(seed=4)
    enc.save(tmp_path / "tower.keras")
    config = config_for_data(dense_data["train"], num_repetitions=2, num_buckets=32,
                             epochs=2, seed=3, encoder_file=str(tmp_path / "tower.keras"))
    assert config.group_size == 1 and config.encoder["trainable"] is True
    run = str(tmp_path / "run")
    train(run, dense_data["train"], config=config, **QUIET)
    _, models = rundir.load_repetitions(run, served=False)
    first = [m.encoders[0].get_weights()[0] for m in models]
    assert not np.allclose(first[0], enc.get_weights()[0])
    assert not np.allclose(first[0], first[1])
    _, stacked = rundir.load_all(run)
    assert len(stacked.encoders) == 2
    # A changed encoder file is refused before anything trains with it.
    _encoder(seed=9).save(os.path.join(run, "encoder.keras"))
    with pytest.raises(RunDirError, match="encoder file changed"):
        build_encoders(config.encoder, [1, 2], run)


ENCODER_MODULE = '''
import keras


def tower(input_dim, seed):
    return keras.Sequential([
        keras.Input((input_dim,)),
        keras.layers.Dense(WIDTH, activation="relu",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=seed))])
'''


def test_encoder_function_trains_with_two_workers_and_a_changed_one_is_refused(
        tmp_path, dense_data):
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "user_towers.py").write_text(textwrap.dedent(ENCODER_MODULE).replace("WIDTH", "20"))
    env = {"PYTHONPATH": f"{mod}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # In subprocesses: the module is found on their PYTHONPATH, and edited below
    run = tmp_path / "run"
    args = ["train", "--train", dense_data["train"], "--model-dir", run, "--repetitions", 2,
            "--buckets", 32, "--epochs", 3, "--seed", 3, "--encoder", "user_towers:tower"]
    res = run_cli(*args, "--workers", 2, env=env, process=True)
    assert res.returncode == 0, res.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["encoder"]["function"] == "user_towers:tower"
    assert config["encoder"]["output_dim"] == 20 and config["group_size"] == 1
    res = run_cli("evaluate", "--model", run, "--test", dense_data["test"], "--json",
                  env=env, process=True)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["p@1"] > \
        2 * _floor(str(run), dense_data["test"])
    # The function now builds another network: a rerun that trains more is refused, with
    # the run's own config ...
    (mod / "user_towers.py").write_text(textwrap.dedent(ENCODER_MODULE).replace("WIDTH", "28"))
    shutil.rmtree(run / "rep-001")
    res = run_cli("train", "--train", dense_data["train"], "--model-dir", run, env=env,
                  process=True)
    assert res.returncode != 0
    assert "builds another network than the run's config records" in res.stderr
    # ... and with the same command, whose config now records another encoder.
    res = run_cli(*args, env=env, process=True)
    assert res.returncode != 0
    assert "already holds a run with a different config" in res.stderr
    assert "encoder" in res.stderr


def test_bad_encoders_are_refused_by_name(tmp_path, dense_data, tiny_data):
    wrong = keras.Sequential([keras.Input((7,)), keras.layers.Dense(4)])
    wrong.save(tmp_path / "wrong.keras")
    with pytest.raises(EncoderError, match=r"wrong\.keras.*float32 \[batch, 32\]"):
        config_for_data(dense_data["train"], encoder_file=str(tmp_path / "wrong.keras"))
    with pytest.raises(EncoderError, match="no such encoder file"):
        config_for_data(dense_data["train"], encoder_file=str(tmp_path / "missing.keras"))
    with pytest.raises(EncoderError, match="cannot import 'no_such_module'"):
        config_for_data(dense_data["train"], encoder_function="no_such_module:f")
    with pytest.raises(EncoderError, match="--freeze-encoder applies to --encoder-file"):
        config_for_data(dense_data["train"], encoder_function="keras:Sequential",
                        freeze_encoder=True)
    with pytest.raises(ValueError, match="an encoder reads dense vectors"):
        config_for_data(tiny_data["train"], encoder_file=str(tmp_path / "wrong.keras"))


def test_tune_searches_dense_runs_without_idf(tmp_path, dense_data):
    base = config_for_data(dense_data["train"], num_repetitions=2, num_buckets=32, epochs=2)
    result = tune(dense_data["train"], str(tmp_path / "tune"), base=base, tuner="random",
                  max_trials=2, max_epochs=2, seed=1)
    assert result["trials"] == 2 and result["best_score"] > 0.2
    assert "feature_weighting" not in result["best_hyperparameters"]
    best = MachConfig.from_json((tmp_path / "tune" / "config.json").read_text())
    assert best.input_format == "dense" and best.num_features == 32
    with pytest.raises(ValueError, match="builds on an encoder"):
        tune(dense_data["train"], str(tmp_path / "tune2"),
             base=base.replace(encoder={"source": "function", "function": "m:f"},
                               group_size=1), max_trials=1)


def test_extend_refuses_a_dense_run_by_name(dense_run, dense_data, tmp_path):
    with pytest.raises(RunDirError, match="a run on dense vectors cannot be extended"):
        extend(dense_run, str(tmp_path / "run2"), 300, dense_data["train"])
