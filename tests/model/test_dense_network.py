"""Dense repetition networks: the dense input layer, encoders shared or per repetition,
and splitting, stacking and saving them."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mach_tf.config import MachConfig
from mach_tf.model.layers import DenseInput
from mach_tf.model.network import MachModel, build_model, split, stack


def _encoder(dim=8, width=6, seed=0):
    return keras.Sequential([
        keras.Input((dim,)),
        keras.layers.Dense(width, activation="tanh",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=seed)),
        keras.layers.LayerNormalization()])


def _x(n=5, dim=8, seed=0):
    return {"embedding": np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)}


def test_dense_input_group_equals_each_repetition_alone():
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    group = DenseInput(8, 5, groups=3, seeds=[11, 12, 13])
    group.build(None)
    out = np.asarray(group(x))
    for g, seed in enumerate([11, 12, 13]):
        alone = DenseInput(8, 5, groups=1, seeds=[seed])
        alone.build(None)
        np.testing.assert_allclose(np.asarray(alone(x))[:, 0], out[:, g], rtol=1e-6)
        kernel, bias = group.block(g)
        np.testing.assert_allclose(np.maximum(x @ kernel + bias, 0), out[:, g], rtol=1e-5,
                                   atol=1e-6)
    # One vector per repetition ([batch, G, d]) reads each block with its own vector.
    per_rep = np.stack([x, 2 * x, -x], axis=1)
    out3 = np.asarray(group(per_rep))
    for g, scale in enumerate([1, 2, -1]):
        kernel, bias = group.block(g)
        np.testing.assert_allclose(np.maximum(scale * x @ kernel + bias, 0), out3[:, g],
                                   rtol=1e-5, atol=1e-6)


def test_dense_config_refuses_mismatches():
    with pytest.raises(ValueError, match="group_size"):
        MachConfig.from_data(50, 8, 100, input_format="dense", group_size=2,
                             encoder={"source": "function", "function": "m:f"})
    with pytest.raises(ValueError, match="input_format='dense'"):
        MachConfig.from_data(50, 8, 100, encoder={"source": "function", "function": "m:f"},
                             group_size=1)
    with pytest.raises(ValueError, match="feature_weighting"):
        MachConfig.from_data(50, 8, 100, input_format="dense", feature_weighting="idf")
    with pytest.raises(ValueError, match="encoder.function"):
        MachConfig.from_data(50, 8, 100, input_format="dense", group_size=1,
                             encoder={"source": "function", "function": "no_colon"})


@pytest.mark.parametrize("trainable", [False, True])
def test_split_and_stack_keep_every_repetitions_encoder(trainable):
    reps = [0, 1, 2]
    if trainable:  # each repetition its own encoder
        encoders = [_encoder(seed=s) for s in reps]
    else:
        encoders = [_encoder(seed=7)]
    model = MachModel(8, 16, [12], repetitions=reps, seeds=[5, 6, 7], input_format="dense",
                      feature_norm="none", encoders=encoders, encoder_trainable=trainable)
    model.build(None)
    x = _x()
    want = np.asarray(model(x))
    singles = split(model)
    for g, single in enumerate(singles):
        assert len(single.encoders) == 1
        np.testing.assert_allclose(np.asarray(single(x))[:, 0], want[:, g], rtol=1e-5,
                                   atol=1e-6)
    stacked = stack(singles)
    assert len(stacked.encoders) == (3 if trainable else 1)
    np.testing.assert_allclose(np.asarray(stacked(x)), want, rtol=1e-5, atol=1e-6)
    # A frozen encoder keeps its weights out of training.
    n_encoder_weights = len(encoders[0].trainable_weights if trainable else [])
    assert len(model.trainable_weights) == 2 * 2 + n_encoder_weights * len(encoders)


def test_dense_model_with_encoder_saves_and_loads(tmp_path):
    model = MachModel(8, 16, [12], repetitions=[3], seeds=[9], input_format="dense",
                      feature_norm="l2", encoders=[_encoder(seed=2)], encoder_trainable=False)
    model.build(None)
    x = _x(seed=3)
    model.save(tmp_path / "m.keras")
    back = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    assert back.input_format == "dense" and not back.encoder_trainable
    assert not back.encoders[0].trainable
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(model(x)), rtol=1e-6)


def test_build_model_without_encoder_reads_the_vectors():
    config = MachConfig.from_data(50, 8, 1000, input_format="dense", num_buckets=16,
                                  num_repetitions=2, hidden_units=[], feature_norm="none")
    model = build_model(config, [0, 1])
    x = _x()
    kernel, bias = model.input_layer.block(1)
    np.testing.assert_allclose(np.asarray(model(x))[:, 1], x["embedding"] @ kernel + bias,
                               rtol=1e-5, atol=1e-5)
    assert config.num_params() == 2 * (8 * 16 + 16)
