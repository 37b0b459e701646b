"""Keras callbacks of a worker's group: the merged validation metric and what it drives.

:class:`MergedValidation` scores the validation sample after every epoch with the merged
top-k of the group's repetitions together with the repetitions of the run that are already
complete, exactly as evaluation and serving merge them, and adds ``merged_p@1``,
``merged_p@3``, ``merged_p@5``, ``merged_ndcg@1`` ... to the epoch's ``logs``. Callbacks
placed after it in the list (early stopping, the learning-rate schedule on plateau,
TensorBoard, keras-tuner's trial callbacks) read the metrics from there.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.validation import ValidationSample, eval_batch_size

PREFIX = "merged_"
KS = (1, 3, 5)


def monitor_name(config: MachConfig) -> str:
    """The logs key early stopping and the schedule watch, e.g. ``merged_p@1``."""
    return PREFIX + config.early_stopping_metric


class MergedDecoder:
    """Merged top-k over a chosen set of repetitions (exact, or candidates above 100k
    classes, as :class:`mach_tf.inference.MergedScorer` decides)."""

    def __init__(self, config: MachConfig, repetitions: Sequence[int]):
        from mach_tf.inference import DEFAULT_CANDIDATE_BUCKETS, resolve_decoder

        self.config = config
        family = config.hash_family.subset(list(repetitions))
        self.family = family
        self.decoder = resolve_decoder("auto", config.num_classes)
        self.m = DEFAULT_CANDIDATE_BUCKETS
        if self.decoder == "exact":
            self.table = tf.constant(family.table(config.num_classes))
        else:
            offsets, classes = family.inverted_index(config.num_classes)
            self.offsets = tf.constant(offsets)
            self.classes = tf.constant(classes.reshape(-1))
            self.hash_a = tf.constant(family.a, tf.int64)
            self.hash_b = tf.constant(family.b, tf.int64)

    def topk(self, bucket_scores, k: int):
        """``(scores, class_ids)`` ``[batch, k]`` from bucket scores ``[batch, R', B]``."""
        from mach_tf.inference import candidate_topk, exact_topk

        if self.decoder == "exact":
            return exact_topk(bucket_scores, self.table, k)
        c = self.config
        return candidate_topk(bucket_scores, self.offsets, self.classes, self.hash_a,
                              self.hash_b, c.num_buckets, c.num_classes, self.m, k,
                              self.family.prime)


def bucket_scores_of(model, config: MachConfig, sample: ValidationSample) -> np.ndarray:
    """The merge-ready bucket scores ``[n, G, B]`` of ``model``'s repetitions on ``sample``."""
    from mach_tf.model import bucket_scores

    @tf.function(reduce_retracing=True)
    def score(inputs):
        return bucket_scores(model(inputs, training=False), config.loss, config.merge)

    return np.concatenate([score(inputs).numpy() for inputs, _ in sample.batches], axis=0)


def completed_scores(run: str, config: MachConfig, sample: ValidationSample,
                     exclude: Sequence[int] = ()) -> tuple[list[int], np.ndarray | None]:
    """``(repetitions, scores [n, R_done, B])`` of the run's complete repetitions (other
    than ``exclude``) on ``sample``; ``([], None)`` when none is complete yet."""
    from mach_tf import rundir

    done = [r for r in range(config.num_repetitions)
            if r not in set(exclude) and rundir.is_complete(run, r)]
    if not done:
        return [], None
    _, stacked = rundir.load_all(run, done)
    return done, bucket_scores_of(stacked, config, sample)


class MergedValidation(keras.callbacks.Callback):
    """Adds the merged validation metrics to the logs after every epoch.

    Args:
        config: The run's config.
        sample: The validation points.
        repetitions: The repetitions the trained model holds, in its group order.
        done_repetitions: Repetitions already complete, merged in as well.
        done_scores: Their merge-ready bucket scores on ``sample``, ``[n, R_done, B]``.
        prefix: Prefix of the logs keys.
    """

    def __init__(self, config: MachConfig, sample: ValidationSample,
                 repetitions: Sequence[int], done_repetitions: Sequence[int] = (),
                 done_scores: np.ndarray | None = None, prefix: str = PREFIX):
        super().__init__()
        self.config = config
        self.sample = sample
        self.repetitions = list(repetitions)
        self.done_repetitions = list(done_repetitions)
        if self.done_repetitions and (done_scores is None or done_scores.shape[:2] != (
                sample.num_examples, len(self.done_repetitions))):
            raise ValueError("done_scores must be [num_examples, len(done_repetitions), B]")
        self.done_scores = done_scores
        self.prefix = prefix
        self.decoder = MergedDecoder(config, self.done_repetitions + self.repetitions)
        self.history: list[dict] = []
        self._fn = None

    def _score_fn(self):
        from mach_tf.model import bucket_scores

        config, model, decoder, kmax = self.config, self.model, self.decoder, max(KS)

        @tf.function(reduce_retracing=True)
        def fn(inputs, done):
            s = bucket_scores(model(inputs, training=False), config.loss, config.merge)
            if done is not None:
                s = tf.concat([done, s], axis=1)
            return decoder.topk(s, kmax)[1]

        return fn

    def compute(self) -> dict:
        """The merged metrics of the model as it is now."""
        from mach_tf.metrics import RankingMetrics

        if self._fn is None:
            self._fn = self._score_fn()
        metrics = RankingMetrics(KS)
        step = eval_batch_size(self.config.num_classes)
        start = 0
        for inputs, labels in self.sample.batches:
            for i in range(0, len(labels), step):
                part = {k: v[i:i + step] for k, v in inputs.items()}
                n = len(part["feature_ids"])
                done = None if self.done_scores is None else \
                    tf.constant(self.done_scores[start:start + n])
                ids = self._fn(part, done).numpy()
                metrics.update(ids, labels[i:i + n])
                start += n
        res = metrics.result()
        return {k: v for k, v in res.items() if k != "num_examples"}

    def on_epoch_end(self, epoch, logs=None):
        res = self.compute()
        res["repetitions"] = len(self.done_repetitions) + len(self.repetitions)
        self.history.append(dict(res, epoch=epoch))
        if logs is not None:
            for k, v in res.items():
                logs[self.prefix + k] = float(v)


def training_callbacks(config: MachConfig, sample: ValidationSample | None,
                       repetitions: Sequence[int], done_repetitions: Sequence[int] = (),
                       done_scores: np.ndarray | None = None) -> list:
    """The merged validation and the callbacks it drives, in the order they must run.

    Without a validation sample there is no merged metric, so no early stopping and no
    schedule on plateau: the group trains ``config.epochs`` epochs.
    """
    if sample is None:
        return []
    out = [MergedValidation(config, sample, repetitions, done_repetitions, done_scores)]
    monitor = monitor_name(config)
    if config.early_stopping_patience > 0:
        out.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", patience=config.early_stopping_patience,
            restore_best_weights=True, verbose=0))
    if config.lr_schedule == "plateau":
        out.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, mode="max", factor=0.5, patience=2, min_delta=0.0,
            min_lr=config.learning_rate / 64, verbose=0))
    return out
