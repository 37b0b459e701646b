"""TensorBoard summaries of a run: per repetition, merged, and the HParams dashboard.

Layout under ``RUN/logs/`` (each worker process writes its own event files; TensorBoard
reads every file of a directory as one run, so workers may share the directories):

* ``rep-XXX/``: scalars of repetition ``XXX``, step = epoch (1-based): ``train/loss`` and
  ``train/bucket_acc`` (from the compiled metrics ``rep_XXX_loss`` / ``rep_XXX_acc``, or
  the group's ``loss`` / ``bucket_acc`` for a group of one), and with a validation sample
  ``validation/loss`` and ``validation/bucket_acc`` (the repetition alone on the
  held-out points).
* ``merged/``: the merged validation of :class:`mach_tf.training.callbacks.MergedValidation`
  after every epoch, ``merged/p@1`` ... ``merged/ndcg@5`` and ``merged/repetitions``, at
  step ``1000 * repetitions merged + epoch``: monotone for every writer (a group's
  repetition count is fixed, its epochs grow) and readable: step 4003 is epoch 3 of a
  group whose merge held 4 repetitions. Workers training groups side by side may write
  the same step. After training, :func:`write_run_summary` adds the whole model's merged
  validation as ``final/p@1`` ... ``final/ndcg@5`` (step R) and the HParams session (this
  directory is the session's run, the ``final/`` tags its metrics).
* ``group-.../``: Keras' TensorBoard callback per group (the group's summed loss and
  every epoch-log key), as :class:`EpochTensorBoard`: epochs only.
"""

from __future__ import annotations

import os
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.data import bucket_targets
from mach_tf.model.metrics import repetition_batch_stats
from mach_tf.text.statistics import load_featurizer
from mach_tf.training.callbacks import (PREFIX, TRACE_MIN_CALLS, MergedValidation,
                                        merged_metrics)
from mach_tf.training.validation import DataSplit, load_sample, sample_budget

MERGED_TAGS = ("p@1", "p@3", "p@5", "ndcg@1", "ndcg@3", "ndcg@5")
STEP_PER_REPETITION = 1000
#: Config fields shown as hyper-parameters in the HParams dashboard (name -> field).
HPARAMS = {"K": "num_classes", "D": "num_features", "B": "num_buckets",
           "R": "num_repetitions", "hidden": "hidden_units", "dropout": "dropout",
           "loss": "loss", "merge": "merge", "lr": "learning_rate",
           "lr_schedule": "lr_schedule", "batch": "batch_size", "epochs": "epochs",
           "optimizer": "optimizer", "feature_norm": "feature_norm",
           "feature_weighting": "feature_weighting", "group_size": "group_size",
           "seed": "seed"}


def merged_step(repetitions: int, epoch: int) -> int:
    """The step of a merged validation: ``1000 * repetitions + epoch`` (epoch 1-based)."""
    return STEP_PER_REPETITION * int(repetitions) + int(epoch)


class _Writers:
    """File writers opened on first use, flushed after every write, closed at the end of
    each ``fit`` (a resumed epoch runs two fits; the second opens new files)."""

    def __init__(self):
        self._open: dict = {}

    def get(self, logdir: str):
        if logdir not in self._open:
            self._open[logdir] = tf.summary.create_file_writer(logdir)
        return self._open[logdir]

    def close(self):
        for w in self._open.values():
            w.close()
        self._open = {}


def _repetition_stats(model, config: MachConfig, repetitions: Sequence[int]):
    """``f(inputs, label_values, label_lengths) -> (loss sum [G], hits [G], labelled [G])``
    of one batch: summed training loss, points whose top bucket holds a label, points
    with a label."""
    def stats(inputs, values, lengths):
        targets = bucket_targets(tf.RaggedTensor.from_row_lengths(values, lengths), config,
                                 repetitions)  # [batch, G, L]
        return repetition_batch_stats(model(inputs, training=False), targets, config.loss)

    return stats


def validation_by_repetition(model, config: MachConfig, repetitions: Sequence[int],
                             sample, stats=None) -> tuple[np.ndarray, np.ndarray]:
    """``(loss [G], bucket_acc [G])`` of each repetition of ``model`` on a validation sample.

    The loss is the training loss (:func:`mach_tf.model.losses.bucket_loss`, averaged over
    all points); the accuracy the share of labelled points whose top bucket holds one of
    their labels, as the compiled metrics measure them in training. ``stats``: the batch
    function of :func:`traced_repetition_stats` (default: run eagerly).
    """
    stats = stats or _repetition_stats(model, config, repetitions)
    g_count = len(repetitions)
    loss, hits, labelled = np.zeros(g_count), np.zeros(g_count), np.zeros(g_count)
    n = 0
    for inputs, labels in sample.batches:
        values = tf.constant([v for y in labels for v in y], tf.int64)
        lengths = tf.constant([len(y) for y in labels], tf.int64)
        parts = stats({k: tf.convert_to_tensor(v) for k, v in inputs.items()}, values,
                      lengths)
        loss, hits, labelled = (x + p.numpy() for x, p in zip((loss, hits, labelled), parts))
        n += len(labels)
    return loss / max(n, 1), np.divide(hits, labelled, out=np.zeros(g_count),
                                       where=labelled > 0)


def traced_repetition_stats(model, config: MachConfig, repetitions: Sequence[int], sample):
    """The batch function of :func:`validation_by_repetition` traced once for every batch
    size and padded width of ``sample`` (an input signature of unknown dimensions)."""
    inputs = sample.batches[0][0]
    spec = {k: tf.TensorSpec([None] * np.ndim(v), tf.as_dtype(np.asarray(v).dtype))
            for k, v in inputs.items()}
    vector = tf.TensorSpec([None], tf.int64)
    return tf.function(_repetition_stats(model, config, repetitions),
                       input_signature=[spec, vector, vector], autograph=False)


class RepetitionScalars(keras.callbacks.Callback):
    """Writes each repetition's training (and validation) loss and bucket accuracy to
    ``RUN/logs/rep-XXX/`` after every epoch, step = epoch (1-based).

    Args:
        run: The run directory.
        config: The run's config.
        repetitions: The group's repetitions, in model order.
        sample: The validation sample (``None``: training scalars only).
        merged: The group's :class:`MergedValidation`, run before this callback: its
            ``repetition_validation`` of the epoch is used (the same forward pass as the
            merged metrics) instead of scoring the sample again.
    """

    def __init__(self, run: str, config: MachConfig, repetitions: Sequence[int],
                 sample=None, merged: MergedValidation | None = None):
        super().__init__()
        self.run = run
        self.config = config
        self.repetitions = list(repetitions)
        self.sample = sample
        self.merged = merged
        self._writers = _Writers()
        self._stats = None

    def set_model(self, model):
        if model is not getattr(self, "_model", None):
            self._stats = None  # a trace holds the model it was made with
        super().set_model(model)

    def _stats_fn(self):
        """Traced once per group when the fit scores the sample often enough to pay for
        the trace (as :class:`MergedValidation` decides), else eager."""
        if self._stats is None:
            calls = len(self.sample.batches) * int((self.params or {}).get("epochs") or 1)
            self._stats = traced_repetition_stats(
                self.model, self.config, self.repetitions, self.sample) \
                if calls >= TRACE_MIN_CALLS else \
                _repetition_stats(self.model, self.config, self.repetitions)
        return self._stats

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        single = len(self.repetitions) == 1
        val = None
        if self.merged is not None and self.merged.repetition_validation is not None:
            val = self.merged.repetition_validation
        elif self.sample is not None:
            val = validation_by_repetition(self.model, self.config, self.repetitions,
                                           self.sample, self._stats_fn())
        for g, r in enumerate(self.repetitions):
            values = {
                "train/loss": logs.get("loss" if single else f"rep_{r:03d}_loss"),
                "train/bucket_acc": logs.get("bucket_acc" if single else f"rep_{r:03d}_acc")}
            if val is not None:
                values["validation/loss"] = val[0][g]
                values["validation/bucket_acc"] = val[1][g]
            writer = self._writers.get(rundir.rep_logdir(self.run, r))
            with writer.as_default(step=epoch + 1):
                for tag, v in values.items():
                    if v is not None:
                        tf.summary.scalar(tag, float(v))
            writer.flush()

    def on_train_end(self, logs=None):
        self._writers.close()


class MergedScalars(keras.callbacks.Callback):
    """Writes the merged validation metrics of the epoch logs (``merged_p@1`` ...,
    put there by :class:`mach_tf.training.callbacks.MergedValidation`) to ``RUN/logs/merged/`` at
    step :func:`merged_step`. Does nothing in epochs without them."""

    def __init__(self, run: str):
        super().__init__()
        self.run = run
        self._writers = _Writers()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if PREFIX + "repetitions" not in logs:
            return
        reps = int(logs[PREFIX + "repetitions"])
        writer = self._writers.get(rundir.merged_logdir(self.run))
        with writer.as_default(step=merged_step(reps, epoch + 1)):
            for k in MERGED_TAGS:
                if PREFIX + k in logs:
                    tf.summary.scalar(f"merged/{k}", float(logs[PREFIX + k]))
            tf.summary.scalar("merged/repetitions", float(reps))
        writer.flush()

    def on_train_end(self, logs=None):
        self._writers.close()


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback with epoch summaries only, no graph and no profile.

    Keras' own calls the summary op for every log of every batch even when it records
    only epochs: with no writer active each call writes nothing, but about ten logs a
    batch are 20,000 calls in delicious' default run, whose training took 48.1 and 49.1 s
    with them and 46.7 and 47.6 s without (ad-hoc timing, two runs each). This one skips
    the batch hook.
    """

    def __init__(self, log_dir: str):
        super().__init__(log_dir, write_graph=False, profile_batch=0, update_freq="epoch")

    def on_train_batch_end(self, batch, logs=None):
        pass


def reporting_callbacks(run: str, config: MachConfig, repetitions: Sequence[int],
                        sample=None, callbacks: Sequence = ()) -> list:
    """The summary writers a worker's group trains with (see module docstring); the
    group's merged validation among ``callbacks`` also gives the per-repetition
    validation scalars."""
    merged = next((c for c in callbacks if isinstance(c, MergedValidation)), None)
    return [RepetitionScalars(run, config, repetitions, sample, merged), MergedScalars(run)]


def hparams_of(config: MachConfig) -> dict:
    """The config's hyper-parameters as HParams values (lists become strings)."""
    out = {}
    for name, field in HPARAMS.items():
        v = getattr(config, field)
        if isinstance(v, (list, tuple)):
            v = "x".join(str(x) for x in v) or "none"
        out[name] = v
    return out


def final_validation(run: str, config: MachConfig | None = None) -> dict | None:
    """The merged validation metrics of every repetition of a complete run, on the
    validation sample its workers used (``RUN/validation.json``); ``None`` when the run
    has no validation split or is not complete."""
    config = config or rundir.load_config(run)
    info_path = rundir.validation_path(run)
    if not tf.io.gfile.exists(info_path) or not all(
            rundir.is_complete(run, r) for r in range(config.num_repetitions)):
        return None
    info = rundir.read_json(info_path)
    if not info.get("valid"):
        return None
    split = DataSplit.from_dict(info)
    featurizer = load_featurizer(run, config) if config.text is not None else None
    sample = load_sample(split, sample_budget(config), featurizer=featurizer)
    config, models = rundir.load_repetitions(run)  # as served: with the popularity penalty
    res = merged_metrics(config, sample, models, range(config.num_repetitions))
    return {k: float(v) for k, v in res.items()}


def write_run_summary(run: str, config: MachConfig | None = None,
                      extra_metrics: dict | None = None) -> dict:
    """Writes the final merged validation (``final/...`` scalars) and the HParams session
    of a trained run to ``RUN/logs/merged/``.

    Args:
        run: The run directory (all repetitions complete for the final metrics).
        config: Its config (default: ``RUN/config.json``).
        extra_metrics: More final scalars, e.g. ``{"train_seconds": 12.3}``.

    Returns:
        ``{"final": metrics or None, "hparams": values, "logdir": path}``.
    """
    config = config or rundir.load_config(run)
    final = final_validation(run, config)
    values = hparams_of(config)
    scalars = {f"final/{k}": v for k, v in (final or {}).items() if k in MERGED_TAGS}
    scalars.update({f"final/{k}": float(v) for k, v in (extra_metrics or {}).items()})
    logdir = rundir.merged_logdir(run)
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default(step=config.num_repetitions):
        # No experiment summary (hp.hparams_config): the dashboard then infers it from
        # every session it finds, so runs with other settings or metrics compare too.
        hp.hparams({hp.HParam(k): v for k, v in values.items()},
                   trial_id=os.path.basename(os.path.abspath(run)))
        for tag, v in scalars.items():
            tf.summary.scalar(tag, v)
    writer.close()
    return {"final": final, "hparams": values, "logdir": logdir}
