"""MachLoss and the merged ranking metrics against numpy references, the run's hash family
and :mod:`mach_tf.inference.ranking`."""

import keras
import numpy as np
import pytest

from mach_tf.config import MachConfig
from mach_tf.inference.ranking import RankingMetrics, precision_at_k
from mach_tf.inference.reference import exact_topk_numpy
from mach_tf.layers import bucket_table
from mach_tf.losses import MachLoss
from mach_tf.metrics import MergedNDCGAtK, MergedPrecisionAtK
from mach_tf.model.losses import repetition_losses

K, B, R = 50, 8, 3


def padded_labels(rng, n, num_classes=K, width=4):
    """int64 ``[n, width]`` padded with -1: some rows empty, some with fewer than k."""
    y = np.full((n, width), -1, np.int64)
    for i in range(n):
        m = rng.integers(0, width + 1)
        y[i, :m] = rng.choice(num_classes, m, replace=False)
    y[0, :] = -1  # at least one example without labels
    return y


def label_lists(y):
    return [row[row >= 0] for row in y]


def numpy_loss(y, logits, table):
    """Per example: mean over r of logsumexp(z_r) - mean over labels of z_r[h_r(c)]."""
    out = np.zeros(len(y))
    for i, labels in enumerate(label_lists(y)):
        if labels.size == 0:
            continue
        per = []
        for r in range(logits.shape[1]):
            z = logits[i, r].astype(np.float64)
            lse = np.log(np.sum(np.exp(z - z.max()))) + z.max()
            per.append(lse - np.mean(z[table[r, labels]]))
        out[i] = np.mean(per)
    return out


@pytest.mark.parametrize("seed", [0, 7])
def test_class_buckets_are_the_run_config_family(seed):
    """MachLoss(seed=s) hashes as a run directory whose config has seed s."""
    config = MachConfig.from_data(K, 100, num_buckets=B, num_repetitions=R, seed=seed)
    expected = config.hash_family.table(K)
    np.testing.assert_array_equal(MachLoss(K, B, R, seed=seed).table, expected)
    np.testing.assert_array_equal(MergedPrecisionAtK(1, K, B, R, seed=seed).table, expected)
    np.testing.assert_array_equal(bucket_table(K, B, R, seed), expected)
    np.testing.assert_array_equal(
        expected, config.hash_family.buckets_np(np.arange(K)))
    assert not np.array_equal(bucket_table(K, B, R, seed + 1), expected)


def test_loss_equals_numpy_reference():
    rng = np.random.default_rng(0)
    y = padded_labels(rng, 12)
    y[1, :3] = [4, 4, 9]  # a repeated label carries its share twice, as in BucketLoss
    logits = rng.normal(scale=3.0, size=(12, R, B)).astype(np.float32)
    loss = MachLoss(K, B, R, seed=3)
    expected = numpy_loss(y, logits, loss.table)
    assert expected[0] == 0.0
    np.testing.assert_allclose(float(loss(y, logits)), expected.mean(), rtol=1e-5)
    per_example = MachLoss(K, B, R, seed=3, reduction="none")(y, logits)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(per_example), expected, rtol=1e-5,
                               atol=1e-6)
    weights = rng.uniform(size=12).astype(np.float32)
    np.testing.assert_allclose(float(loss(y, logits, sample_weight=weights)),
                               np.mean(expected * weights), rtol=1e-5)


def test_loss_is_the_training_softmax_loss_averaged_over_repetitions():
    """The same definition as BucketLoss(kind="softmax") on the buckets of the labels."""
    rng = np.random.default_rng(1)
    y = padded_labels(rng, 10)
    logits = rng.normal(size=(10, R, B)).astype(np.float32)
    loss = MachLoss(K, B, R, seed=0, reduction="none")
    buckets = np.where(y[:, None, :] >= 0,
                       np.transpose(loss.table[:, np.maximum(y, 0)], (1, 0, 2)), -1)
    training = np.asarray(repetition_losses(buckets, logits, "softmax")).mean(axis=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss(y, logits)), training,
                               rtol=1e-5, atol=1e-6)


def test_loss_takes_one_column_or_a_vector_for_multi_class():
    rng = np.random.default_rng(2)
    y = rng.integers(0, K, 8)
    logits = rng.normal(size=(8, R, B)).astype(np.float32)
    loss = MachLoss(K, B, R)
    np.testing.assert_allclose(float(loss(y, logits)), float(loss(y[:, None], logits)))
    np.testing.assert_allclose(float(loss(y, logits)),
                               numpy_loss(y[:, None], logits, loss.table).mean(), rtol=1e-5)


def test_loss_keeps_class_ids_above_float32_precision():
    """Keras' Loss would cast the ids to float32, which rounds 2**24 + 1 to 2**24."""
    num_classes = 2**24 + 4
    loss = MachLoss(num_classes, 64, 1, seed=0, reduction="none")
    a, b = 2**24, 2**24 + 1
    assert loss.table[0, a] != loss.table[0, b]
    logits = np.random.default_rng(0).normal(size=(1, 1, 64)).astype(np.float32)
    la, lb = (float(keras.ops.convert_to_numpy(loss(np.array([[c]]), logits))[0])
              for c in (a, b))
    np.testing.assert_allclose(lb, numpy_loss(np.array([[b]]), logits, loss.table)[0],
                               rtol=1e-5)
    assert la != lb


def test_loss_serializes():
    loss = MachLoss(K, B, R, seed=5, reduction="sum", name="l")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, MachLoss)
    assert restored.get_config() == loss.get_config()
    np.testing.assert_array_equal(restored.table, loss.table)


def informative_logits(rng, y, table):
    """Random logits, raised at the buckets of one label of every other example, so that
    the top k holds hits at various ranks."""
    logits = rng.normal(scale=2.0, size=(len(y), table.shape[0], B)).astype(np.float32)
    for i, labels in enumerate(label_lists(y)):
        if labels.size and i % 2:
            c = labels[rng.integers(labels.size)]
            logits[i, np.arange(table.shape[0]), table[:, c]] += rng.uniform(1.0, 4.0)
    return logits


def reference_topk(logits, table, k):
    # The same probabilities (keras' softmax) as the metric merges, so ties match exactly.
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    return exact_topk_numpy(probs, table, k)[1]


def test_metrics_equal_ranking_metrics_across_batches_and_after_reset():
    rng = np.random.default_rng(3)
    metrics = {f"{kind}@{k}": cls(k, K, B, R, seed=4)
               for kind, cls in (("p", MergedPrecisionAtK), ("ndcg", MergedNDCGAtK))
               for k in (1, 3, 5)}
    assert sorted(m.name for m in metrics.values()) == sorted(metrics)
    table = metrics["p@1"].table
    reference = RankingMetrics((1, 3, 5))
    labels = [padded_labels(rng, n) for n in (7, 16, 5)]
    batches = [(y, informative_logits(rng, y, table)) for y in labels]
    for y, logits in batches:
        reference.update(reference_topk(logits, table, 5), label_lists(y))
        for m in metrics.values():
            m.update_state(y, logits)
    expected = reference.result()
    assert expected["num_examples"] == 28
    assert 0 < expected["p@1"] < 1 and 0 < expected["ndcg@5"] < 1
    for name, m in metrics.items():
        np.testing.assert_allclose(float(m.result()), expected[name], rtol=1e-5, err_msg=name)

    y, logits = batches[1]
    for m in metrics.values():
        m.reset_state()
        assert float(m.result()) == 0.0
        m.update_state(y, logits)
    top = reference_topk(logits, table, 5)
    for k in (1, 3, 5):
        np.testing.assert_allclose(float(metrics[f"p@{k}"].result()),
                                   precision_at_k(top, label_lists(y), k), rtol=1e-5)
    fresh = RankingMetrics((1, 3, 5))
    fresh.update(top, label_lists(y))
    for k in (1, 3, 5):
        np.testing.assert_allclose(float(metrics[f"ndcg@{k}"].result()),
                                   fresh.result()[f"ndcg@{k}"], rtol=1e-5)


def test_metrics_weight_examples_and_count_perfect_rankings():
    rng = np.random.default_rng(4)
    y = padded_labels(rng, 6)
    logits = rng.normal(size=(6, R, B)).astype(np.float32)
    weights = np.array([0.0, 1.0, 2.0, 0.5, 1.0, 3.0], np.float32)
    m = MergedPrecisionAtK(3, K, B, R)
    m.update_state(y, logits, sample_weight=weights)
    top = reference_topk(logits, m.table, 3)
    per = [np.isin(t, labels).sum() / 3 for t, labels in zip(top, label_lists(y))]
    np.testing.assert_allclose(float(m.result()), np.dot(per, weights) / weights.sum(),
                               rtol=1e-5)
    # Labels equal to the predicted top 3: P@3 and nDCG@3 are 1.
    perfect = reference_topk(logits, m.table, 3)
    for cls in (MergedPrecisionAtK, MergedNDCGAtK):
        metric = cls(3, K, B, R)
        metric.update_state(perfect, logits)
        np.testing.assert_allclose(float(metric.result()), 1.0, rtol=1e-6)


def test_metrics_serialize():
    for metric in (MergedPrecisionAtK(5, K, B, R, seed=2),
                   MergedNDCGAtK(3, K, B, R, seed=2, name="nd")):
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(metric))
        assert type(restored) is type(metric)
        assert restored.get_config() == metric.get_config()
        assert restored.name == metric.name
