"""The popularity penalty: its default rule, its bucket frequencies, and that a served run
ranks classes by the trained scores minus ``p`` times the mean log frequency of their
buckets, in evaluation and in the exported SavedModel alike."""

import numpy as np
import pytest
import tensorflow as tf

from export.stitch import export_model
from mach_tf import rundir
from mach_tf.config import POPULARITY_PENALTY, MachConfig
from mach_tf.data import to_model_inputs
from mach_tf.inference.decoder import exact_scores
from mach_tf.inference.scorer import MergedScorer
from mach_tf.launch.local import train
from mach_tf.model.network import PRIOR_SMOOTHING, bucket_prior
from tfrecords_tools.dataset import make_dataset


def test_default_rule_follows_examples_per_class():
    rare = MachConfig.from_data(50_000, 20_000, 20_000)  # 0.4 examples per class
    assert rare.popularity_penalty == POPULARITY_PENALTY > 0
    assert MachConfig.from_data(159, 1836, 4880).popularity_penalty == 0.0  # 30 per class
    assert MachConfig.from_data(50_000, 20_000, 20_000, loss="sigmoid").popularity_penalty == 0
    assert MachConfig.from_data(50_000, 20_000).popularity_penalty == 0.0  # N unknown
    with pytest.raises(ValueError, match="popularity_penalty: needs loss='softmax'"):
        rare.replace(merge="prob")
    with pytest.raises(ValueError, match="popularity_penalty: must be >= 0"):
        rare.replace(popularity_penalty=-0.1)


def test_bucket_prior_is_the_penalised_log_bucket_share():
    config = MachConfig.from_data(6, 4, num_buckets=2, num_repetitions=3, seed=2,
                                  popularity_penalty=0.5)
    counts = np.array([10, 0, 3, 1, 0, 6])
    prior = bucket_prior(config, counts)
    share = (counts + PRIOR_SMOOTHING) / (counts.sum() + 6 * PRIOR_SMOOTHING)
    table = config.hash_family.table(6)
    for r in range(3):
        for b in range(2):
            want = -0.5 * np.log(share[table[r] == b].sum())
            assert prior[r, b] == pytest.approx(want, rel=1e-6)
    assert bucket_prior(config.replace(popularity_penalty=0.0), counts) is None
    with pytest.raises(ValueError, match="label counts for 5 classes"):
        bucket_prior(config, counts[:5])


@pytest.fixture(scope="module")
def penalised_run(tmp_path_factory, tiny_data, tiny_config):
    run = str(tmp_path_factory.mktemp("popularity") / "run")
    config = tiny_config.replace(popularity_penalty=0.3, epochs=2)
    train(run, tiny_data["train"], None, config, verbose=0, log=lambda m: None)
    return run


def test_served_scores_are_trained_scores_minus_the_penalty(penalised_run, tiny_data):
    config, trained = rundir.load_all(penalised_run, served=False)
    _, served = rundir.load_all(penalised_run)
    batch = next(iter(make_dataset(tiny_data["test"], 32, shuffle=False)))
    inputs = to_model_inputs({k: batch[k] for k in ("feature_ids", "feature_values")})
    table = tf.constant(config.hash_family.table(config.num_classes))
    before = exact_scores(MergedScorer(config, trained).bucket_scores(inputs), table).numpy()
    after = exact_scores(MergedScorer(config, served).bucket_scores(inputs), table).numpy()
    prior = bucket_prior(config, rundir.load_label_counts(penalised_run))
    offset = prior[np.arange(config.num_repetitions)[:, None],
                   config.hash_family.table(config.num_classes)].mean(axis=0)  # [K]
    assert np.ptp(offset) > 0.05  # the penalty moves classes against each other
    diff = after - before  # offset plus a constant per example
    np.testing.assert_allclose(diff - diff[:, :1],
                               np.broadcast_to(offset - offset[0], diff.shape), atol=2e-4)
    # the export serves the penalised scores: its answers are the served model's
    res = export_model(penalised_run, str(tiny_data["dir"]) + "/popularity_export",
                       top_k=5, decoder="exact")
    loaded = tf.saved_model.load(res.path)
    out = loaded.signatures["serving_default"](**inputs)
    _, ids = MergedScorer(config, served).topk(inputs, 5)
    np.testing.assert_array_equal(out["label_ids"].numpy(), ids.numpy())


def test_a_penalty_can_be_chosen_at_export_and_evaluation(penalised_run, tiny_data):
    """The penalty needs no retraining: export and evaluate take another value, and the
    export records the one it serves."""
    import json
    import os

    from mach_tf.inference.evaluation import evaluate

    _, none = rundir.load_all(penalised_run, popularity_penalty=0.0)
    _, trained = rundir.load_all(penalised_run, served=False)
    for a, b in zip(none.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(a, b)
    res = export_model(penalised_run, str(tiny_data["dir"]) + "/popularity_zero", top_k=5,
                       decoder="exact", popularity_penalty=0.0)
    info = json.load(open(os.path.join(res.path, "assets.extra", "mach_tf.json")))
    assert info["config"]["popularity_penalty"] == 0.0
    on_export = evaluate(res.path, tiny_data["test"])
    on_run = evaluate(penalised_run, tiny_data["test"], popularity_penalty=0.0)
    assert on_export["p@1"] == pytest.approx(on_run["p@1"], abs=1e-6)
    with pytest.raises(ValueError, match="an export serves the penalty it was made with"):
        evaluate(res.path, tiny_data["test"], popularity_penalty=0.1)


def test_cli_evaluate_takes_a_penalty(penalised_run, tiny_data):
    import json

    from mach_tf.inference.evaluation import evaluate
    from tests.helpers import run_cli

    res = run_cli("evaluate", "--model", penalised_run, "--test", tiny_data["test"],
                  "--popularity-penalty", "0", "--json")
    assert res.returncode == 0, res.stderr
    want = evaluate(penalised_run, tiny_data["test"], popularity_penalty=0.0)
    assert json.loads(res.stdout.strip().splitlines()[-1])["p@1"] == pytest.approx(
        want["p@1"], abs=1e-6)
    bad = run_cli("evaluate", "--model", penalised_run, "--test", tiny_data["test"],
                  "--popularity-penalty", "-1")
    assert bad.returncode != 0 and "popularity_penalty: must be >= 0" in bad.stderr
