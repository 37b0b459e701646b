"""MachConfig: JSON round trip, defaults from K, validation."""

import json
import math

import pytest

from mach_tf.config import MachConfig, default_buckets


def test_json_round_trip():
    c = MachConfig.from_data(5000, 1000, hidden_units=[64, 32], seed=3)
    back = MachConfig.from_json(c.to_json())
    assert back == c
    assert json.loads(c.to_json())["hashing"]["a"] == list(c.hash_family.a)


def test_defaults_follow_k():
    assert default_buckets(10) == 10
    assert default_buckets(159) == 128
    assert default_buckets(1_000_000) == 8192
    c = MachConfig.from_data(159, 1836)
    assert c.num_buckets == 128 and c.hash_family.num_repetitions == c.num_repetitions


def test_hashing_is_persisted_not_recomputed():
    c = MachConfig.from_data(1000, 100, seed=1)
    d = c.to_dict()
    d["hashing"]["a"][0] = 12345
    assert MachConfig.from_dict(d).hash_family.a[0] == 12345


def test_replace_redraws_hash_when_shape_changes():
    c = MachConfig.from_data(1000, 100, seed=1)
    assert c.replace(epochs=9).hashing == c.hashing
    c2 = c.replace(num_repetitions=c.num_repetitions + 2)
    assert c2.hash_family.num_repetitions == c.num_repetitions + 2


@pytest.mark.parametrize("field, value, message", [
    ("loss", "hinge", "MachConfig.loss"),
    ("num_buckets", 1, "MachConfig.num_buckets"),
    ("dropout", 1.5, "MachConfig.dropout"),
    ("hidden_units", [64, 0], "MachConfig.hidden_units"),
])
def test_validation_names_the_field(field, value, message):
    d = MachConfig.from_data(100, 50).to_dict()
    d[field] = value
    if field == "num_buckets":
        d["hashing"] = None
    with pytest.raises(ValueError, match=message):
        MachConfig.from_dict(d)


def test_unknown_fields_are_refused():
    d = MachConfig.from_data(100, 50).to_dict()
    d["colour"] = "blue"
    with pytest.raises(ValueError, match="unknown field"):
        MachConfig.from_dict(d)


def test_defaults_follow_n():
    from mach_tf.config import default_epochs, default_validation_fraction

    # Small data: many epochs (steps per epoch are few), 10% held out.
    assert default_epochs(4880, 256) == 60 and default_validation_fraction(4880) == 0.1
    # Large data: ~4,000 steps reached in few epochs; at most 5,000 points held out.
    assert default_epochs(1_000_000, 256) == 10
    assert default_validation_fraction(1_000_000) == pytest.approx(0.005)
    assert default_epochs(100_000, 256) == math.ceil(4000 / 391)
    c = MachConfig.from_data(159, 1836, 4880)
    assert c.epochs == 60 and c.validation_fraction == 0.1
    c = MachConfig.from_data(159, 1836, 4880, epochs=7, validation_fraction=0.0)
    assert c.epochs == 7 and c.validation_fraction == 0.0


@pytest.mark.parametrize("field, value", [
    ("feature_weighting", "bm25"), ("lr_schedule", "step"), ("early_stopping_metric", "p@7"),
    ("validation_fraction", 1.0), ("early_stopping_patience", -1),
    ("validation_max_examples", 0)])
def test_new_levers_are_validated(field, value):
    d = MachConfig.from_data(100, 50).to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=f"MachConfig.{field}"):
        MachConfig.from_dict(d)


def test_network_follows_d_n_and_k():
    from mach_tf.config import INPUT_LAYER_BUDGET, default_hidden_units

    assert default_hidden_units(1836, 4880) == [512]          # bibtex: one layer
    assert default_hidden_units(1836, 7999) == [512]
    assert default_hidden_units(500, 12920) == [512, 256]     # delicious: deeper
    wide_d = default_hidden_units(101938, 14146)
    assert wide_d == [128, 256] and 101938 * wide_d[0] <= INPUT_LAYER_BUDGET
    assert default_hidden_units(10**8, 10**6)[0] == 64        # never below 64
    assert MachConfig.from_data(983, 500, 12920).hidden_units == [512, 256]
    assert MachConfig.from_data(983, 500, 12920, hidden_units=[64]).hidden_units == [64]
    # Few examples per class (a tagging corpus): no narrower second layer before B buckets.
    assert default_hidden_units(20000, 20000, 50000) == [512]
    assert default_hidden_units(500, 12920, 983) == [512, 256]   # delicious: 13 per class
    assert MachConfig.from_data(50000, 20000, 20000).hidden_units == [512]


def test_dropout_follows_examples_per_class():
    from mach_tf.config import default_dropout

    assert MachConfig.from_data(983, 500, 12920).dropout == 0.5      # delicious
    assert MachConfig.from_data(159, 1836, 4880).dropout == 0.5      # bibtex
    assert MachConfig.from_data(50000, 20000, 20000).dropout == 0.0  # a tagging corpus
    assert default_dropout(None) == 0.5
    assert MachConfig.from_data(50000, 20000, 20000, dropout=0.3).dropout == 0.3
