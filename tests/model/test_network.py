"""Per-repetition Keras models: layer maths, serialization round trips, grouping."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.data import bucket_targets
from mach_tf.model.layers import DENSE_INPUT_MAX_FEATURES, GroupedDense, SparseDense
from mach_tf.model.losses import bucket_loss
from mach_tf.model.network import MachModel, bucket_scores, build_model, compile_model, split, stack
from mach_tf.training.group import start_from


def sparse_batch(rng, batch=6, width=5, dim=40):
    ids = np.full((batch, width), -1, np.int64)
    vals = np.zeros((batch, width), np.float32)
    for i in range(batch):
        n = rng.integers(0, width + 1)
        ids[i, :n] = rng.choice(dim, n, replace=False)
        vals[i, :n] = rng.uniform(0.5, 2.0, n)
    return {"feature_ids": ids, "feature_values": vals}


def dense_of(x, dim):
    d = np.zeros((len(x["feature_ids"]), dim), np.float32)
    for i, (ids, vals) in enumerate(zip(x["feature_ids"], x["feature_values"])):
        for j, v in zip(ids, vals):
            if j >= 0:
                d[i, j] += v
    return d


@pytest.fixture(params=[40, DENSE_INPUT_MAX_FEATURES + 40], ids=["gemm", "gathered"])
def config(request):
    """Both input paths: one GEMM over a [D, G * H] kernel (D = 40), and gathered rows of
    one [D, H] kernel per repetition (the batches' ids stay below 40 either way)."""
    # dropout=0: grouped and separate training draw different dropout masks.
    return MachConfig.from_data(50, request.param, num_buckets=8, num_repetitions=3,
                                hidden_units=[6, 5], dropout=0.0, seed=2)


@pytest.mark.parametrize("normalize", ["none", "l2"])
def test_sparse_dense_equals_dense_matmul(normalize):
    rng = np.random.default_rng(0)
    x = sparse_batch(rng)
    layer = SparseDense(40, 4, groups=2, activation="linear", normalize=normalize)
    layer.build(None)
    out = layer(x["feature_ids"], x["feature_values"]).numpy()
    d = dense_of(x, 40)
    if normalize == "l2":
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
    expected = (d @ np.concatenate(layer.kernel_blocks(), axis=1)
                + np.asarray(layer.bias)).reshape(-1, 2, 4)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("empty_rows", [(), (0, 3), (4, 5), tuple(range(6))])
def test_gathered_sparse_input_equals_dense_matmul(empty_rows):
    """The gather path (D above DENSE_INPUT_MAX_FEATURES) gives the GEMM's result, also for
    examples without features at the start or the end of the batch, and each repetition's
    kernel (its own variable) gets the dense gradient of its columns, as row slices."""
    dim = DENSE_INPUT_MAX_FEATURES + 40
    x = sparse_batch(np.random.default_rng(5))
    x["feature_ids"] = np.where(x["feature_ids"] >= 0, x["feature_ids"] + dim - 40, -1)
    for i in empty_rows:
        x["feature_ids"][i] = -1
    layer = SparseDense(dim, 4, groups=2, activation="linear", normalize="none")
    layer.build(None)
    with tf.GradientTape() as tape:
        out = layer(x["feature_ids"], x["feature_values"])
        loss = tf.reduce_sum(out ** 2)
    grads = tape.gradient(loss, layer.kernels)
    assert len(grads) == 2 and all(isinstance(g, tf.IndexedSlices) for g in grads)
    d = dense_of(x, dim)
    expected = d @ np.concatenate(layer.kernel_blocks(), axis=1) + np.asarray(layer.bias)
    np.testing.assert_allclose(out.numpy(), expected.reshape(-1, 2, 4), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([tf.convert_to_tensor(g).numpy() for g in grads],
                                              axis=1), d.T @ (2 * expected),
                               rtol=1e-4, atol=1e-5)


def test_grouped_dense_is_independent_denses():
    layer = GroupedDense(3, groups=2, activation="relu")
    x = np.random.default_rng(1).normal(size=(4, 2, 5)).astype(np.float32)
    out = layer(x).numpy()
    for g in range(2):
        k, b = layer.block(g)
        np.testing.assert_allclose(out[:, g], np.maximum(x[:, g] @ k + b, 0), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("layer", [
    SparseDense(40, 4, groups=2, seeds=[3, 4], normalize="l2", name="sd"),
    GroupedDense(3, groups=2, activation="relu", seeds=[5, 6], name="gd")])
def test_layer_serialization_round_trip(layer):
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config
    assert keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)).get_config() == config


def test_model_keras_round_trip(tmp_path, config):
    model = build_model(config, [0, 2])
    x = sparse_batch(np.random.default_rng(2))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, MachModel) and loaded.repetitions == [0, 2]
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)


def test_initialisation_does_not_depend_on_grouping(config):
    grouped = build_model(config, [0, 1, 2])
    alone = [build_model(config, [r]) for r in range(3)]
    for g, m in enumerate(alone):
        for a, b in zip(grouped.repetition_weights(g), m.repetition_weights(0)):
            np.testing.assert_array_equal(a, b)


def test_split_and_stack_preserve_outputs(config):
    model = build_model(config, [0, 1, 2])
    for v in model.trainable_variables:  # move away from the seeded initialisation
        v.assign(v + tf.random.stateless_normal(v.shape, [1, 2]) * 0.1)
    x = sparse_batch(np.random.default_rng(3))
    full = model(x).numpy()
    parts = split(model)
    for g, m in enumerate(parts):
        np.testing.assert_allclose(m(x).numpy()[:, 0], full[:, g], rtol=1e-5, atol=1e-6)
    restacked = stack(parts)
    assert restacked.repetitions == [0, 1, 2]
    np.testing.assert_allclose(restacked(x).numpy(), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "adam_rowwise"])
def test_grouped_training_equals_separate_training(config, optimizer):
    """A group's repetitions get exactly the updates they would get trained alone (also
    with row-wise Adagrad on the gathered kernel: each repetition's rows keep their own
    accumulator)."""
    config = config.replace(optimizer=optimizer)
    rng = np.random.default_rng(4)
    x = sparse_batch(rng, batch=16)
    labels = tf.ragged.constant([[int(v)] for v in rng.integers(0, 50, 16)], tf.int64)
    y_all = bucket_targets(labels, config, [0, 1, 2])
    grouped = compile_model(build_model(config, [0, 1, 2]), config)
    grouped.fit(x, y_all, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for g in range(3):
        alone = compile_model(build_model(config, [g]), config)
        alone.fit(x, y_all[:, g:g + 1], batch_size=8, epochs=2, shuffle=False, verbose=0)
        for a, b in zip(grouped.repetition_weights(g), alone.repetition_weights(0)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_shared_input_layer_trains_one_kernel_and_splits_into_copies(config, tmp_path):
    """With ``shared_input_layer`` a group holds one input kernel, every repetition's own
    later layers read it, training moves it, and split
    gives each repetition a copy, so the saved repetitions score as the group did."""
    config = config.replace(shared_input_layer=True)
    rng = np.random.default_rng(6)
    x = sparse_batch(rng, batch=16)
    labels = tf.ragged.constant([[int(v)] for v in rng.integers(0, 50, 16)], tf.int64)
    model = compile_model(build_model(config, [0, 1, 2]), config)
    assert len(model.input_layer.kernel_blocks()) == 1
    separate = build_model(config.replace(shared_input_layer=False), [0, 1, 2])
    assert len(model.trainable_weights) == len(separate.trainable_weights) - (
        2 if model.input_layer.gathered else 0)
    # the one input layer is repetition 0's; the later layers are each repetition's own
    for g in range(3):
        for a, b in zip(model.repetition_weights(g), separate.repetition_weights(0)[:2] +
                        separate.repetition_weights(g)[2:]):
            np.testing.assert_array_equal(a, b)
    before = model.input_layer.block(0)[0].copy()
    model.fit(x, bucket_targets(labels, config, [0, 1, 2]), batch_size=8, epochs=2,
              shuffle=False, verbose=0)
    assert not np.array_equal(model.input_layer.block(0)[0], before)
    full = model(x).numpy()
    parts = split(model)
    for g, m in enumerate(parts):
        assert not m.shared_input
        np.testing.assert_array_equal(m.input_layer.block(0)[0], model.input_layer.block(0)[0])
        np.testing.assert_allclose(m(x).numpy()[:, 0], full[:, g], rtol=1e-5, atol=1e-6)
    path = str(tmp_path / "shared.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.shared_input
    np.testing.assert_allclose(loaded(x).numpy(), full, rtol=1e-6)


def test_shared_input_layer_starts_from_a_shared_source_and_refuses_another(config):
    config = config.replace(shared_input_layer=True)
    source = build_model(config, [0, 1, 2])
    for v in source.trainable_variables:
        v.assign(v + 0.1)
    target = build_model(config, [0, 1, 2])
    start_from(target, split(source))
    for a, b in zip(target.weights, source.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    independent = split(build_model(config.replace(shared_input_layer=False), [0, 1, 2]))
    with pytest.raises(ValueError, match="do not share one input layer"):
        start_from(target, independent)


@pytest.mark.parametrize("overrides", [{"input_format": "dense"}, {"hidden_units": []}])
def test_shared_input_layer_needs_sparse_input_and_a_hidden_layer(overrides):
    with pytest.raises(ValueError, match="MachConfig.shared_input_layer: needs sparse input"):
        MachConfig.from_data(50, 40, shared_input_layer=True, **overrides)


def test_group_metrics_share_one_loss_and_argmax_per_step(config):
    """The compiled loss and the per-repetition metrics read one cached log-sum-exp and
    arg-max per step, and report what computing each separately gives."""
    from mach_tf.model.metrics import RepetitionLoss

    rng = np.random.default_rng(5)
    x = sparse_batch(rng, batch=32)
    labels = tf.ragged.constant([[int(v) for v in rng.integers(0, 50, rng.integers(0, 3))]
                                 for _ in range(32)], tf.int64)
    y = bucket_targets(labels, config, [0, 1, 2])
    model = compile_model(build_model(config, [0, 1, 2]), config)
    cache = model.loss.step_cache
    assert cache is not None
    got = model.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    # Each traced step computes the loss once (for the compiled loss and the 3 repetition
    # losses) and the arg-max once (for the overall and the 3 repetition accuracies).

    def shared():
        n = cache.computed["loss"]
        return n >= 1 and cache.computed == {"loss": n, "hits": n} and \
            cache.requested == {"loss": 4 * n, "hits": 4 * n}

    assert shared()
    logits = model(x, training=False)
    want_loss = float(tf.reduce_mean(bucket_loss(y, logits)))
    assert got["loss"] == pytest.approx(want_loss, rel=1e-5)
    top = np.argmax(logits.numpy(), axis=-1)
    yn = y.numpy()
    has = (yn >= 0).any(-1)
    hit = (yn == top[..., None]).any(-1) & has
    assert got["bucket_acc"] == pytest.approx(hit.sum() / has.sum(), rel=1e-6)
    for g, r in enumerate(model.repetitions):
        alone = RepetitionLoss(g, config.loss)  # no cache: its own computation
        alone.update_state(y, logits)
        assert got[f"rep_{r:03d}_loss"] == pytest.approx(float(alone.result()), rel=1e-5)
        assert got[f"rep_{r:03d}_acc"] == pytest.approx(
            hit[:, g].sum() / has[:, g].sum(), rel=1e-6)
    # training: the same sharing in the train step (loss inside the tape, metrics after)
    before = cache.computed["loss"]
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    assert cache.computed["loss"] > before and shared()


def test_bucket_targets_hash_labels(config):
    labels = tf.ragged.constant([[3, 7], [], [11]], tf.int64)
    y = bucket_targets(labels, config, [2, 0]).numpy()
    fam = config.hash_family
    assert y.shape == (3, 2, 2)
    assert y[0, 0].tolist() == fam.buckets_np([3, 7], [2])[0].tolist()
    assert y[0, 1].tolist() == fam.buckets_np([3, 7], [0])[0].tolist()
    assert (y[1] == -1).all() and y[2, :, 1].tolist() == [-1, -1]


def test_softmax_loss_by_hand():
    logits = np.array([[[1.0, 2.0, 0.5]]], np.float32)
    y = np.array([[[1, 2]]], np.int32)
    lse = np.log(np.exp(logits).sum())
    expected = lse - (2.0 + 0.5) / 2
    np.testing.assert_allclose(bucket_loss(y, logits).numpy(), [expected], rtol=1e-6)
    # duplicates count twice (two labels in one bucket carry twice the mass); no label: 0
    y2 = np.array([[[1, 1]], [[-1, -1]]], np.int32)
    np.testing.assert_allclose(bucket_loss(y2, np.concatenate([logits, logits])).numpy(),
                               [lse - 2.0, 0.0], rtol=1e-6)


def test_sigmoid_loss_by_hand():
    logits = np.array([[[1.0, -2.0, 0.5]]], np.float32)
    y = np.array([[[2, 2]]], np.int32)
    t = np.array([0, 0, 1.0])
    z = logits[0, 0]
    expected = np.sum(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))))
    np.testing.assert_allclose(bucket_loss(y, logits, "sigmoid").numpy(), [expected],
                               rtol=1e-6)


def test_bucket_scores():
    z = np.array([[0.0, np.log(3.0)]], np.float32)
    np.testing.assert_allclose(bucket_scores(z).numpy(), [[0.25, 0.75]], rtol=1e-6)
    np.testing.assert_allclose(bucket_scores(z, merge="logprob").numpy(),
                               np.log([[0.25, 0.75]]), rtol=1e-6)


# -- mixed precision ------------------------------------------------------------------------
@pytest.mark.parametrize("num_features", [40, 20_000])  # the GEMM and the gathered input
def test_mixed_bfloat16_matches_float32_within_tolerance(num_features):
    rng = np.random.default_rng(0)
    base = MachConfig.from_data(50, num_features, num_buckets=16, num_repetitions=2,
                                hidden_units=[32, 16], dropout=0.0, seed=4)
    x = sparse_batch(rng, batch=32, width=6, dim=num_features)
    y = rng.integers(0, 16, (32, 2, 2)).astype(np.int32)
    out, losses, models = {}, {}, {}
    for precision in ("float32", "mixed_bfloat16"):
        config = base.replace(precision=precision)
        keras.utils.set_random_seed(0)
        model = compile_model(build_model(config, [0, 1]), config)
        out[precision] = np.asarray(model(x))
        losses[precision] = model.fit(x, y, epochs=5, batch_size=32, verbose=0,
                                      shuffle=False).history["loss"]
        models[precision] = model
    # Same weights (float32 either way), logits returned in float32, bfloat16 rounding only.
    assert out["mixed_bfloat16"].dtype == np.float32
    assert all(v.dtype == "float32" for v in models["mixed_bfloat16"].weights)
    np.testing.assert_allclose(out["mixed_bfloat16"], out["float32"], atol=0.05)
    np.testing.assert_allclose(losses["mixed_bfloat16"], losses["float32"], rtol=0.01)
    assert losses["mixed_bfloat16"][-1] < losses["mixed_bfloat16"][0]  # it trains
    # A repetition split out of a bfloat16 group is a plain float32 model with its weights.
    single = split(models["mixed_bfloat16"])[0]
    assert single.precision == "float32"
    for a, b in zip(single.repetition_weights(0),
                    models["mixed_bfloat16"].repetition_weights(0)):
        np.testing.assert_array_equal(a, b)


def test_precision_is_validated():
    with pytest.raises(ValueError, match="MachConfig.precision"):
        MachConfig.from_data(50, 40, precision="float16")


@pytest.mark.parametrize("num_features", [40, 20_000])  # the GEMM and the gathered input
def test_linear_repetitions_without_hidden_layers(num_features):
    """``hidden_units=[]``: each repetition is ``l2(x) W + b`` straight to the B bucket
    logits; it trains, splits and stacks like any other network."""
    config = MachConfig.from_data(50, num_features, num_buckets=8, num_repetitions=3,
                                  hidden_units=[], seed=1)
    model = compile_model(build_model(config, [0, 1, 2]), config)
    assert model.dense_layers == [] and model.drop is None
    assert model.count_params() == config.num_params() == 3 * (num_features * 8 + 8)
    rng = np.random.default_rng(0)
    x = sparse_batch(rng, batch=16, width=5, dim=num_features)
    dense = dense_of(x, num_features)
    dense /= np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-6)
    for g in range(3):
        kernel, bias = model.repetition_weights(g)
        np.testing.assert_allclose(np.asarray(model(x))[:, g], dense @ kernel + bias,
                                   atol=1e-5)
    y = rng.integers(0, 8, (16, 3, 2)).astype(np.int32)
    losses = model.fit(x, y, epochs=4, verbose=0, shuffle=False).history["loss"]
    assert losses[-1] < losses[0]
    back = stack(split(model))
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(model(x)), atol=1e-5)
