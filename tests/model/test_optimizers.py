"""SparseAdam: Adam's update for dense gradients, lazy row updates for sparse ones."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.model.layers import DENSE_INPUT_MAX_FEATURES
from mach_tf.model.network import build_model, compile_model
from mach_tf.model.optimizers import SparseAdam, make_optimizer


def _numpy_lazy_adam(w, steps, lr=0.01, b1=0.9, b2=0.999, eps=1e-7):
    """Reference lazy Adam: ``steps`` is a list of ``(rows, grads)`` with repeated rows."""
    w = w.copy()
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, (rows, grads) in enumerate(steps, start=1):
        g = np.zeros_like(w)
        np.add.at(g, rows, grads)
        touched = np.unique(rows)
        m[touched] = b1 * m[touched] + (1 - b1) * g[touched]
        v[touched] = b2 * v[touched] + (1 - b2) * g[touched] ** 2
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        w[touched] -= alpha * m[touched] / (np.sqrt(v[touched]) + eps)
    return w


def test_dense_gradients_follow_keras_adam():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]
    out = []
    for opt in (SparseAdam(0.01), keras.optimizers.Adam(0.01)):
        w = keras.Variable(w0)
        for g in grads:
            opt.apply_gradients([(tf.constant(g), w)])
        out.append(np.asarray(w))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)


def test_sparse_gradients_update_only_their_rows():
    """Rows are summed over repeats; rows absent from a step keep weights and moments
    (where dense Adam would keep moving them by their momentum)."""
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(8, 3)).astype(np.float32)
    steps = [(np.array([1, 4, 1]), rng.normal(size=(3, 3)).astype(np.float32)),
             (np.array([4, 6]), rng.normal(size=(2, 3)).astype(np.float32)),
             (np.array([1]), rng.normal(size=(1, 3)).astype(np.float32))]
    w = keras.Variable(w0)
    opt = SparseAdam(0.01)
    for rows, g in steps:
        opt.apply_gradients([(tf.IndexedSlices(tf.constant(g), tf.constant(rows),
                                               tf.constant(w0.shape, tf.int64)), w)])
    expected = _numpy_lazy_adam(w0, steps)
    np.testing.assert_allclose(np.asarray(w), expected, rtol=1e-5, atol=1e-6)
    untouched = [0, 2, 3, 5, 7]
    np.testing.assert_array_equal(np.asarray(w)[untouched], w0[untouched])
    # dense Adam moves row 6 again at step 3 (momentum), lazy Adam does not
    dense = keras.Variable(w0)
    ref = keras.optimizers.Adam(0.01)
    for rows, g in steps:
        ref.apply_gradients([(tf.convert_to_tensor(tf.IndexedSlices(
            tf.constant(g), tf.constant(rows), tf.constant(w0.shape, tf.int64))), dense)])
    assert not np.allclose(np.asarray(dense)[6], np.asarray(w)[6])


def test_serialization_round_trip():
    opt = SparseAdam(learning_rate=0.002, beta_1=0.8)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, SparseAdam)
    assert again.get_config() == opt.get_config()
    with pytest.raises(ValueError, match="amsgrad"):
        SparseAdam(amsgrad=True)


def test_config_names_the_optimizer():
    config = MachConfig.from_data(50, 40, num_buckets=8, num_repetitions=1)
    assert isinstance(make_optimizer(config), SparseAdam)
    dense = make_optimizer(config.replace(optimizer="adam_dense"))
    assert type(dense) is keras.optimizers.Adam
    assert MachConfig.from_json(config.replace(optimizer="adam_dense").to_json()
                                ).optimizer == "adam_dense"


def _sparse_task():
    """``(D, K, labels, inputs)``: 512 points of 6 non-zeros over D above the dense-GEMM
    threshold (the input kernel's gradient is IndexedSlices); each of the K = 20 classes
    owns 30 feature ids, so the task is learnable from the sparse rows alone."""
    d, n, nnz, k = DENSE_INPUT_MAX_FEATURES + 1000, 512, 6, 20
    rng = np.random.default_rng(2)
    labels = rng.integers(0, k, n)
    ids = (labels[:, None] * 30 + rng.integers(0, 30, (n, nnz)) + 17 * 30) % d
    return d, k, labels, {"feature_ids": ids.astype(np.int64),
                          "feature_values": np.ones((n, nnz), np.float32)}


def test_lazy_adam_trains_like_dense_adam():
    """On a sparse input layer (D above the dense-GEMM threshold, so the kernel's gradient
    is IndexedSlices) lazy and dense Adam reach the same fit. (Per step, lazy Adam learns
    rare features more slowly: dense Adam keeps moving a row by its momentum in steps
    that do not touch it. With 4 epochs at lr 0.01 here: loss 1.57 lazy, 0.87 dense.)"""
    d, k, labels, x = _sparse_task()
    results = {}
    for name in ("adam", "adam_dense"):
        config = MachConfig.from_data(k, d, num_buckets=8, num_repetitions=2,
                                      hidden_units=[16], dropout=0.0, seed=3, optimizer=name,
                                      learning_rate=0.02)
        y = np.stack([config.hash_family.buckets_np(labels, [r])[0] for r in (0, 1)],
                     axis=1)[..., None].astype(np.int32)
        keras.utils.set_random_seed(0)
        model = compile_model(build_model(config, [0, 1]), config)
        hist = model.fit(x, y, batch_size=64, epochs=6, shuffle=False, verbose=0).history
        results[name] = (hist["loss"][-1], hist["bucket_acc"][-1], hist["loss"][0])
    (lazy_loss, lazy_acc, first), (dense_loss, dense_acc, _) = results["adam"], \
        results["adam_dense"]
    assert lazy_loss < 0.05 * first and dense_loss < 0.05 * first
    assert lazy_acc >= 0.98 and dense_acc >= 0.98


def test_the_gathered_input_kernel_is_read_by_rows_in_training():
    """A training step reads the sparse input kernel's rows by ``ResourceGather``, never by
    gathering from a whole read of the variable: once the optimizer has scattered into a
    variable, a whole read copies all of it every step (a fifth of a step at the tagging
    shape)."""
    d, k, labels, x = _sparse_task()
    config = MachConfig.from_data(k, d, num_buckets=8, num_repetitions=2, hidden_units=[16],
                                  dropout=0.0, seed=3)
    model = compile_model(build_model(config, [0, 1]), config)
    y = np.stack([config.hash_family.buckets_np(labels, [r])[0] for r in (0, 1)],
                 axis=1)[..., None].astype(np.int32)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = model.loss(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))

    graph = step.get_concrete_function({n: v[:64] for n, v in x.items()}, y[:64]).graph
    graph_def = graph.as_graph_def()
    bodies = [graph_def.node] + [f.node_def for f in graph_def.library.function]
    gathers, gathered_reads = 0, []
    for nodes in bodies:
        kind = {n.name: n.op for n in nodes}
        for n in nodes:
            if "sparse_input" not in n.name:
                continue
            gathers += n.op == "ResourceGather"
            if n.op == "GatherV2" and kind.get(n.input[0].split(":")[0]) == "ReadVariableOp":
                gathered_reads.append(n.name)
    assert gathers >= 1 and not gathered_reads, gathered_reads


def _numpy_rowwise_adagrad(w, steps, lr):
    """Reference row-wise Adagrad: one accumulator per row, the row's mean squared
    (summed) gradient added to it, the row moved by ``lr * g / sqrt(acc)``."""
    w, acc = w.copy(), np.zeros(w.shape[0])
    for rows, grads in steps:
        g = np.zeros_like(w)
        np.add.at(g, rows, grads)
        touched = np.unique(rows)
        acc[touched] += np.mean(g[touched] ** 2, axis=1)
        w[touched] -= lr * g[touched] / np.sqrt(acc[touched] + 1e-10)[:, None]
    return w, acc


def test_row_wise_kernel_takes_row_wise_adagrad_and_the_rest_adam():
    from mach_tf.model.layers import ROW_SPARSE

    rng = np.random.default_rng(4)
    w0 = rng.normal(size=(8, 3)).astype(np.float32)
    d0 = rng.normal(size=(4, 3)).astype(np.float32)
    steps = [(np.array([1, 4, 1]), rng.normal(size=(3, 3)).astype(np.float32)),
             (np.array([4, 6]), rng.normal(size=(2, 3)).astype(np.float32)),
             (np.array([1]), rng.normal(size=(1, 3)).astype(np.float32))]
    dense_grads = [rng.normal(size=(4, 3)).astype(np.float32) for _ in steps]
    w, other = keras.Variable(w0), keras.Variable(d0)
    setattr(w, ROW_SPARSE, True)
    opt = SparseAdam(0.01, row_wise=True, row_wise_factor=3.0)
    ref = keras.Variable(d0)
    adam = keras.optimizers.Adam(0.01)
    for (rows, g), dg in zip(steps, dense_grads):
        opt.apply_gradients([(tf.IndexedSlices(tf.constant(g), tf.constant(rows),
                                               tf.constant(w0.shape, tf.int64)), w),
                             (tf.constant(dg), other)])
        adam.apply_gradients([(tf.constant(dg), ref)])
    want, acc = _numpy_rowwise_adagrad(w0, steps, lr=0.03)
    np.testing.assert_allclose(np.asarray(w), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(w)[[0, 2, 3, 5, 7]], w0[[0, 2, 3, 5, 7]])
    np.testing.assert_allclose(np.asarray(other), np.asarray(ref), rtol=1e-5, atol=1e-6)
    # the row-wise kernel's whole optimizer state: one number per row
    state = [v for v in opt.variables if v.name == "row_accumulator"]
    assert len(state) == 1 and tuple(state[0].shape) == (8,)
    np.testing.assert_allclose(np.asarray(state[0]), acc, rtol=1e-5)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert (again.row_wise, again.row_wise_factor) == (True, 3.0)


def test_row_wise_optimizer_fits_and_its_checkpoint_restores(tmp_path):
    """A sparse input layer above the dense-GEMM threshold trained with "adam_rowwise":
    it learns, its input kernel carries no moment slots, and weights plus optimizer state
    saved and loaded into a new model continue to the same next step."""
    d, k, labels, x = _sparse_task()
    config = MachConfig.from_data(k, d, num_buckets=8, num_repetitions=2, hidden_units=[16],
                                  dropout=0.0, seed=3, optimizer="adam_rowwise",
                                  learning_rate=0.02)
    y = np.stack([config.hash_family.buckets_np(labels, [r])[0] for r in (0, 1)],
                 axis=1)[..., None].astype(np.int32)
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(config, [0, 1]), config)
    assert model.optimizer.row_wise
    hist = model.fit(x, y, batch_size=64, epochs=6, shuffle=False, verbose=0).history
    assert hist["loss"][-1] < 0.05 * hist["loss"][0] and hist["bucket_acc"][-1] >= 0.98
    sizes = sorted(int(np.prod(v.shape)) for v in model.optimizer.variables)
    assert d * 16 not in sizes and sizes.count(d) == 2  # no [D, H] slots, a [D] accumulator
    # for each repetition's kernel
    path = str(tmp_path / "ckpt.weights.h5")
    model.save_weights(path)
    other = compile_model(build_model(config, [0, 1]), config)
    other.optimizer.build(other.trainable_variables)
    other.load_weights(path)
    batch = ({k: v[:64] for k, v in x.items()}, y[:64])
    model.train_on_batch(*batch)
    other.train_on_batch(*batch)
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
