"""Keras callbacks of a worker's group: the merged validation metric and what it drives.

:class:`MergedValidation` scores the validation sample after every epoch with merged
top-k, exactly as evaluation and serving merge, and adds two families of metrics to the
epoch's ``logs``:

* ``merged_p@1``, ``merged_p@3``, ``merged_p@5``, ``merged_ndcg@1`` ...: the group's
  repetitions together with every repetition of the run already complete: the run's
  accuracy so far.
* ``group_merged_p@1`` ...: the group's repetitions alone. Early stopping and the plateau
  schedule watch these: the run-level merge dilutes a later group's progress among the
  repetitions already complete (measured: with 12 of 16 complete, groups stopped after
  their first epoch), and the group-level merge makes a repetition's training independent
  of which other repetitions happen to be complete, whatever the worker layout.

Callbacks placed after it in the list (early stopping, the learning-rate schedule on
plateau, TensorBoard, keras-tuner's trial callbacks) read the metrics from there.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.inference import MergedDecoder
from mach_tf.validation import ValidationSample, eval_batch_size

PREFIX = "merged_"
GROUP_PREFIX = "group_merged_"
KS = (1, 3, 5)


def monitor_name(config: MachConfig) -> str:
    """The logs key early stopping and the schedule watch, e.g. ``group_merged_ndcg@5``."""
    return GROUP_PREFIX + config.early_stopping_metric


def bucket_scores_of(model, config: MachConfig, sample: ValidationSample) -> np.ndarray:
    """The merge-ready bucket scores ``[n, G, B]`` of ``model``'s repetitions on ``sample``."""
    from mach_tf.model import bucket_scores

    # Eager: run once per group on a few thousand points, where a tf.function per call
    # would only add a trace per group (and TensorFlow's retracing warnings).
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

    After each epoch, ``history`` gets ``{"epoch", "repetitions", "run": {...},
    "group": {...}}`` with the run-level and group-level metrics.
    """

    def __init__(self, config: MachConfig, sample: ValidationSample,
                 repetitions: Sequence[int], done_repetitions: Sequence[int] = (),
                 done_scores: np.ndarray | None = None):
        super().__init__()
        self.config = config
        self.sample = sample
        self.repetitions = list(repetitions)
        self.done_repetitions = list(done_repetitions)
        if self.done_repetitions and (done_scores is None or done_scores.shape[:2] != (
                sample.num_examples, len(self.done_repetitions))):
            raise ValueError("done_scores must be [num_examples, len(done_repetitions), B]")
        self.done_scores = done_scores if self.done_repetitions else None
        # Exact, or candidates above 100k classes, as evaluation decides (decoder "auto").
        family = config.hash_family
        self.run_decoder = MergedDecoder(
            family.subset(self.done_repetitions + self.repetitions), config.num_classes)
        self.group_decoder = MergedDecoder(family.subset(self.repetitions), config.num_classes)
        self.history: list[dict] = []
        self._fn = None

    def _score_fn(self):
        from mach_tf.model import bucket_scores

        config, model, kmax = self.config, self.model, max(KS)
        run_decoder, group_decoder = self.run_decoder, self.group_decoder

        @tf.function(reduce_retracing=True)
        def fn(inputs, done):  # traced once with and once without ``done``
            s = bucket_scores(model(inputs, training=False), config.loss, config.merge)
            group_ids = group_decoder.topk(s, kmax)[1]
            if done is None:
                return group_ids, group_ids
            return run_decoder.topk(tf.concat([done, s], axis=1), kmax)[1], group_ids

        return fn

    def compute(self) -> dict:
        """``{"run": metrics, "group": metrics}`` of the model as it is now."""
        from mach_tf.metrics import RankingMetrics

        if self._fn is None:
            self._fn = self._score_fn()
        run_metrics, group_metrics = RankingMetrics(KS), RankingMetrics(KS)
        step = eval_batch_size(self.config.num_classes)
        start = 0
        for inputs, labels in self.sample.batches:
            for i in range(0, len(labels), step):
                part = {k: v[i:i + step] for k, v in inputs.items()}
                n = len(part["feature_ids"])
                done = None if self.done_scores is None else \
                    tf.constant(self.done_scores[start:start + n])
                run_ids, group_ids = self._fn(part, done)
                run_metrics.update(run_ids.numpy(), labels[i:i + n])
                group_metrics.update(group_ids.numpy(), labels[i:i + n])
                start += n
        return {name: {k: v for k, v in m.result().items() if k != "num_examples"}
                for name, m in (("run", run_metrics), ("group", group_metrics))}

    def on_epoch_end(self, epoch, logs=None):
        res = self.compute()
        entry = {"epoch": epoch, "repetitions": len(self.done_repetitions) +
                 len(self.repetitions), **res}
        self.history.append(entry)
        if logs is not None:
            for prefix, name in ((PREFIX, "run"), (GROUP_PREFIX, "group")):
                for k, v in res[name].items():
                    logs[prefix + k] = float(v)
            logs[PREFIX + "repetitions"] = float(entry["repetitions"])


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
