"""Shared measuring tools of the training-speed benchmarks (not a benchmark itself).

* :func:`matmul_peak_gflops`: this machine's float32 GEMM throughput, measured by
  TensorFlow, the reference of ``flop_efficiency``;
* :func:`synthetic_batch`: one training batch ``(inputs, targets)`` of a group, from the
  synthetic generator, so step timings do not include reading files;
* :class:`StepTimer` / :func:`fit_step_seconds`: per-step wall time of ``model.fit``, the
  median after warm-up (these machines are shared: the median ignores another process's
  bursts better than a mean).
"""

from __future__ import annotations

import time

import numpy as np


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """This machine's float32 matmul throughput measured by TensorFlow (best of repeats)."""
    import tensorflow as tf

    a = tf.random.stateless_normal([n, n], [1, 2])
    b = tf.random.stateless_normal([n, n], [3, 4])
    f = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)), autograph=False)
    f().numpy()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f().numpy()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def dense_flops_per_step(config, batch_size: int, repetitions: int) -> float:
    """FLOPs of the dense (GEMM) layers after the sparse input in one training step:
    ``6 * batch * sum(in * out)`` per repetition (the forward matmul and the two of the
    backward pass, 2 FLOPs per multiply-add)."""
    widths = list(config.hidden_units) + [config.num_buckets]
    return 6.0 * batch_size * sum(i * o for i, o in zip(widths[:-1], widths[1:])) \
        * repetitions


def synthetic_batch(config, group, batch_size: int, seed: int = 0):
    """One ``(inputs, targets)`` batch for ``group`` of ``config`` from
    :mod:`mach_tf.datasets.synthetic` (K and D of the config)."""
    import tensorflow as tf

    from mach_tf.data import bucket_targets, to_model_inputs
    from mach_tf.datasets.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(num_labels=config.num_classes, num_features=config.num_features,
                         seed=seed)
    points = list(generate(spec, batch_size, seed=seed + 1))
    labels = tf.ragged.constant([p[0] for p in points], tf.int64)
    ids = tf.ragged.constant([p[1] for p in points], tf.int64)
    vals = tf.ragged.constant([p[2] for p in points], tf.float32)
    inputs = to_model_inputs({"feature_ids": ids, "feature_values": vals})
    return inputs, bucket_targets(labels, config, list(group))


class StepTimer:
    """A Keras callback recording each training step's wall time, per ``fit`` call
    (``segments[i]`` holds the steps of the i-th fit, e.g. the i-th group a worker
    trained)."""

    def __new__(cls):
        import keras

        class _StepTimer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.segments: list[list[float]] = []
                self._t = 0.0

            def on_train_begin(self, logs=None):
                self.segments.append([])

            def on_train_batch_begin(self, batch, logs=None):
                self._t = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.segments[-1].append(time.perf_counter() - self._t)

        return _StepTimer()


def steady_seconds(times, warmup: int = 5) -> float:
    """Median step time after the first ``warmup`` steps (tracing, caches)."""
    t = np.asarray(times, np.float64)
    return float(np.median(t[warmup:] if t.size > 2 * warmup else t))


def fit_step_seconds(model, batch, steps: int = 30) -> float:
    """Median seconds per ``model.fit`` step on ``batch`` repeated from memory."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensors(batch).repeat()
    timer = StepTimer()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
    return steady_seconds(timer.segments[-1])
