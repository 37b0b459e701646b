"""Where the output bias starts: ``output_bias_init="log_prior"`` sets each repetition's
bucket bias to what a network without input would learn from the label counts, and
training starts from it (a lower first loss than from zeros)."""

import numpy as np
import pytest
import tensorflow as tf

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.model.network import (EMPTY_BUCKET_SHARE, PRIOR_SMOOTHING, build_model,
                                   bucket_shares, compile_model, initial_output_bias)
from mach_tf.training.group import setup_group, training_label_counts
from mach_tf.training.pipeline import epochs_dataset
from mach_tf.training.prepare import count_labels


def _shares(config, counts):
    share = (counts + PRIOR_SMOOTHING) / (counts.sum() + PRIOR_SMOOTHING * counts.size)
    table = config.hash_family.table(config.num_classes)
    return np.array([[share[table[r] == b].sum() for b in range(config.num_buckets)]
                     for r in range(config.num_repetitions)])


def test_defaults_and_validation():
    # below 5 training examples per class only (docs/defaults.md)
    assert MachConfig.from_data(50_000, 20_000, 20_000).output_bias_init == "log_prior"
    assert MachConfig.from_data(50_000, 20_000, 20_000, loss="sigmoid").output_bias_init \
        == "log_prior"
    assert MachConfig.from_data(4130, 529, 2568).output_bias_init == "log_prior"  # seq_GO
    assert MachConfig.from_data(159, 1836, 4880).output_bias_init == "zeros"  # 31 per class
    assert MachConfig.from_data(50_000, 20_000).output_bias_init == "zeros"  # N unknown
    built = MachConfig(num_classes=10, num_features=5, num_buckets=4, num_repetitions=2)
    assert built.output_bias_init == "zeros"
    old = built.to_dict()
    del old["output_bias_init"]  # a config.json written before the field existed
    assert MachConfig.from_dict(old).output_bias_init == "zeros"
    with pytest.raises(ValueError, match="MachConfig.output_bias_init: must be one of"):
        built.replace(output_bias_init="prior")


def test_softmax_start_is_the_log_bucket_share():
    config = MachConfig.from_data(40, 8, num_buckets=8, num_repetitions=3, seed=4)
    counts = np.arange(40) % 7 * 3
    bias = initial_output_bias(config, counts, num_examples=50)
    want = _shares(config, counts)
    assert bias.shape == (3, 8) and bias.dtype == np.float32
    np.testing.assert_allclose(np.exp(bias), want, rtol=1e-5)
    np.testing.assert_allclose(bucket_shares(config, counts), want, rtol=1e-12)
    # softmax of the bias is the share itself: the bias-only optimum of the softmax loss
    np.testing.assert_allclose(tf.nn.softmax(bias).numpy(), want, rtol=1e-5)


def test_a_bucket_without_classes_starts_far_below_and_finite():
    config = MachConfig.from_data(3, 8, num_buckets=32, num_repetitions=2, seed=0)
    bias = initial_output_bias(config, np.array([5, 0, 2]), num_examples=7)
    table = config.hash_family.table(3)
    for r in range(2):
        empty = np.setdiff1d(np.arange(32), table[r])
        assert empty.size >= 29
        np.testing.assert_allclose(bias[r, empty], np.log(EMPTY_BUCKET_SHARE / 32), rtol=1e-6)
        assert bias[r, table[r]].min() > bias[r, empty].max() + 3
    assert np.isfinite(bias).all()


def test_sigmoid_start_is_the_log_odds_of_a_hit():
    config = MachConfig.from_data(40, 8, num_buckets=8, num_repetitions=2, seed=4,
                                  loss="sigmoid")
    counts = np.full(40, 5)  # 200 labels on 80 examples: 2.5 per example
    bias = initial_output_bias(config, counts, num_examples=80)
    hit = 1.0 - (1.0 - _shares(config, counts)) ** 2.5
    np.testing.assert_allclose(tf.sigmoid(bias).numpy(), hit, rtol=1e-5)


@pytest.mark.parametrize("init", ["log_prior", "zeros"])
def test_a_group_starts_from_it(tmp_path, tiny_data, tiny_config, init):
    config = tiny_config.replace(output_bias_init=init)
    model = build_model(config, [1, 3])
    setup_group(model, config, [1, 3], tiny_data["train"], cache_dir=str(tmp_path))
    bias = np.asarray(model.output_layer.bias).reshape(2, config.num_buckets)
    counts, n = count_labels(tiny_data["train"], config.num_classes)
    if init == "zeros":
        assert not np.any(bias)
        assert rundir.load_label_counts(str(tmp_path)) is None  # nothing counted
        return
    np.testing.assert_allclose(bias, initial_output_bias(config, counts, n)[[1, 3]],
                               rtol=1e-6)
    # counted once, kept for the next group (the tuner's trials)
    np.testing.assert_array_equal(rundir.load_label_counts(str(tmp_path)), counts)
    again, n2 = training_label_counts(tiny_data["train"], config, str(tmp_path))
    np.testing.assert_array_equal(again, counts)
    assert n2 == n == 800


def test_training_starts_at_a_lower_loss(tiny_data, tiny_config):
    """The first step's loss (its forward pass, before any update) is the cross-entropy
    of the starting network: from the prior it is below the uniform start's."""
    first = {}
    for init in ("zeros", "log_prior"):
        config = tiny_config.replace(output_bias_init=init, dropout=0.0)
        model = build_model(config, [0, 1])
        setup = setup_group(model, config, [0, 1], tiny_data["train"])
        compile_model(model, config, setup.steps)
        batches = epochs_dataset(tiny_data["train"], config, [0, 1], 0, 0, setup.steps,
                                 record_filter=setup.split.train_filter())
        history = model.fit(batches, epochs=1, steps_per_epoch=1, verbose=0,
                            shuffle=False).history
        first[init] = history["loss"][0]
    uniform = 2 * np.log(tiny_config.num_buckets)  # two repetitions at zero logits
    assert first["zeros"] == pytest.approx(uniform, rel=0.02)
    assert first["log_prior"] < first["zeros"] - 0.1
