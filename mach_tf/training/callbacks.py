"""Keras callbacks of a worker's group: the merged validation metric and what it drives,
and the guard against a diverging loss (the progress record and lines are
:mod:`mach_tf.training.progress`'s).

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

import math
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.data import bucket_targets
from mach_tf.errors import NonFiniteLossError
from mach_tf.inference.decoder import MergedTopK
from mach_tf.inference.ranking import RankingMetrics
from mach_tf.model.metrics import repetition_batch_stats
from mach_tf.model.network import bucket_scores
from mach_tf.training.validation import ValidationSample, eval_batch_size

PREFIX = "merged_"
GROUP_PREFIX = "group_merged_"
KS = (1, 3, 5)
#: Above this many classes the merged validation decodes by candidates (the classes of each
#: repetition's top buckets) instead of scoring all K classes: at K = 50,000 and R = 16 the
#: exact merge took 6 s of every epoch on 2,000 points, and candidate decoding
#: (m = 10 buckets) gave the same test P@1/P@3/P@5 to the fourth digit (docs/defaults.md).
VALIDATION_EXACT_MAX_CLASSES = 20_000
#: The merged validation traces its scoring function when a fit calls it at least this many
#: times (epochs x scoring batches), and runs it eagerly below (``MergedValidation._score_fn``).
TRACE_MIN_CALLS = 4


def validation_decoder(num_classes: int) -> str:
    """The merged validation's decoder: ``exact`` up to ``VALIDATION_EXACT_MAX_CLASSES``."""
    return "exact" if num_classes <= VALIDATION_EXACT_MAX_CLASSES else "candidates"


def monitor_name(config: MachConfig) -> str:
    """The logs key early stopping and the schedule watch, e.g. ``group_merged_ndcg@5``."""
    return GROUP_PREFIX + config.early_stopping_metric


def bucket_scores_of(model, config: MachConfig, sample: ValidationSample) -> np.ndarray:
    """The merge-ready bucket scores ``[n, G, B]`` of ``model``'s repetitions on ``sample``."""
    # Eager: run once per group on a few thousand points, where a tf.function per call
    # would only add a trace per group (and TensorFlow's retracing warnings).
    def score(inputs):
        return bucket_scores(model(inputs, training=False), config.loss, config.merge)

    return np.concatenate([score(inputs).numpy() for inputs, _ in sample.batches], axis=0)


def validation_topk(config: MachConfig, repetitions: Sequence[int]) -> MergedTopK:
    """The merged top-k decoder the validation uses for ``repetitions`` (exact or by
    candidates, :func:`validation_decoder`)."""
    family = config.hash_family.subset(list(repetitions))
    return MergedTopK(config.num_classes, family.to_dict(), k=max(KS),
                      decoder=validation_decoder(config.num_classes))


def merged_metrics(config: MachConfig, sample: ValidationSample, models: Sequence,
                   repetitions: Sequence[int]) -> dict:
    """The merged validation metrics of single-repetition ``models`` (repetitions
    ``repetitions``, in order) on ``sample``, each model scoring alone.

    Scoring them one by one and merging their bucket scores is the merge of the stacked
    model without stacking it: :func:`mach_tf.model.network.stack` copies every input
    kernel into one (at the tagging shape, 16 x 20,000 x 512 floats: 3.6 s of the run's
    final 10 s summary).
    """
    decoder = validation_topk(config, repetitions)
    metrics = RankingMetrics(KS)
    step = eval_batch_size(config.num_classes)
    for inputs, labels in sample.batches:
        scores = tf.stack([bucket_scores(m(inputs, training=False), config.loss,
                                         config.merge)[:, 0] for m in models], axis=1)
        for i in range(0, len(labels), step):
            metrics.update(decoder(scores[i:i + step])[1].numpy(), labels[i:i + step])
    return {k: v for k, v in metrics.result().items() if k != "num_examples"}


def completed_scores(run: str, config: MachConfig, sample: ValidationSample,
                     exclude: Sequence[int] = (), cache: dict | None = None
                     ) -> tuple[list[int], np.ndarray | None]:
    """``(repetitions, scores [n, R_done, B])`` of the run's complete repetitions (other
    than ``exclude``) on ``sample``; ``([], None)`` when none is complete yet.

    ``cache``: a dict kept by the caller across the groups of one worker (same run, same
    sample): each complete repetition is loaded and scored once, not once per later group.
    """
    done = [r for r in range(config.num_repetitions)
            if r not in set(exclude) and rundir.is_complete(run, r)]
    if not done:
        return [], None
    cache = {} if cache is None else cache
    key = (run, sample.num_examples, hash(tuple(tuple(y) for y in sample.labels)))
    if cache.get("key") != key:
        cache.clear()
        cache["key"] = key
    scores = cache.setdefault("scores", {})
    for r in done:
        if r not in scores:  # each alone: stacking them would copy every input kernel
            _, (model,) = rundir.load_repetitions(run, [r], served=False)  # as trained
            scores[r] = bucket_scores_of(model, config, sample)[:, 0]
    return done, np.stack([scores[r] for r in done], axis=1)


class MergedValidation(keras.callbacks.Callback):
    """Adds the merged validation metrics to the logs after every epoch.

    Args:
        config: The run's config.
        sample: The validation points.
        repetitions: The repetitions the trained model holds, in its group order.
        done_repetitions: Repetitions already complete, merged in as well.
        done_scores: Their merge-ready bucket scores on ``sample``, ``[n, R_done, B]``.

    After each epoch, ``history`` gets ``{"epoch", "repetitions", "run": {...},
    "group": {...}}`` with the run-level and group-level metrics, and
    ``repetition_validation`` holds each repetition's ``(loss [G], bucket_acc [G])`` on the
    sample (as :func:`mach_tf.training.tensorboard.validation_by_repetition` defines them),
    from the same forward pass.
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
        self.run_decoder = validation_topk(config, self.done_repetitions + self.repetitions)
        self.group_decoder = validation_topk(config, self.repetitions)
        self.history: list[dict] = []
        self.repetition_validation: tuple[np.ndarray, np.ndarray] | None = None
        self._fn = None
        self._part_list = None

    def set_model(self, model):
        if model is not getattr(self, "_model", None):
            self._fn = None  # a trace holds the model it was made with
        super().set_model(model)

    def _score(self, inputs, values, lengths, done=None):
        """``(run-level top ids, group-level top ids, loss sum [G], hits [G], labelled
        [G])`` of a batch whose labels are ``values`` split by ``lengths``; ``done``: the
        complete repetitions' bucket scores of the same points."""
        config = self.config
        logits = self.model(inputs, training=False)
        targets = bucket_targets(tf.RaggedTensor.from_row_lengths(values, lengths), config,
                                 self.repetitions)
        stats = repetition_batch_stats(logits, targets, config.loss)
        s = bucket_scores(logits, config.loss, config.merge)
        group_ids = self.group_decoder(s)[1]
        if done is None:
            return (group_ids, group_ids, *stats)
        return (self.run_decoder(tf.concat([done, s], axis=1))[1], group_ids, *stats)

    def _score_fn(self, inputs: dict, calls: int):
        """The scoring function for ``calls`` calls like ``inputs``: traced once, for every
        batch size and padded width (an input signature of unknown dimensions), or eager.

        Each group's model and hash tables are its own, so the trace cannot be shared
        between groups; a fit that scores only a few batches (a small validation sample,
        few epochs) runs eagerly, where a trace per group costs more than it saves and
        TensorFlow would warn about a function that retraces (it counts every group's
        trace against the same code).
        """
        if calls < TRACE_MIN_CALLS:
            return self._score
        spec = {k: tf.TensorSpec([None] * np.ndim(v), tf.as_dtype(np.asarray(v).dtype))
                for k, v in inputs.items()}
        vector = tf.TensorSpec([None], tf.int64)
        if self.done_scores is None:
            return tf.function(lambda x, v, n: self._score(x, v, n),
                               input_signature=[spec, vector, vector], autograph=False)
        done = tf.TensorSpec([None, *self.done_scores.shape[1:]], tf.float32)
        return tf.function(self._score, input_signature=[spec, vector, vector, done],
                           autograph=False)

    def _parts(self):
        """``(inputs, labels, label values, label lengths, done)`` of every scoring batch,
        in sample order; cut from the sample once, the labels flattened once (``done``, a
        slice of ``done_scores``, becomes a tensor per call: a copy of it all would double
        the largest array the validation holds)."""
        if self._part_list is None:
            step = eval_batch_size(self.config.num_classes)
            parts, start = [], 0
            for inputs, labels in self.sample.batches:
                for i in range(0, len(labels), step):
                    part_labels = labels[i:i + step]
                    n = len(part_labels)
                    parts.append((
                        {k: v[i:i + step] for k, v in inputs.items()}, part_labels,
                        tf.constant([v for y in part_labels for v in y], tf.int64),
                        tf.constant([len(y) for y in part_labels], tf.int64),
                        None if self.done_scores is None else (start, start + n)))
                    start += n
            self._part_list = parts
        for part, labels, values, lengths, rows in self._part_list:
            done = None if rows is None else \
                tf.constant(self.done_scores[rows[0]:rows[1]], tf.float32)
            yield part, labels, values, lengths, done

    def compute(self) -> dict:
        """``{"run": metrics, "group": metrics}`` of the model as it is now."""
        run_metrics, group_metrics = RankingMetrics(KS), RankingMetrics(KS)
        g_count = len(self.repetitions)
        loss, hits, labelled = np.zeros(g_count), np.zeros(g_count), np.zeros(g_count)
        for part, labels, values, lengths, done in self._parts():
            if self._fn is None:
                calls = len(self._part_list)
                epochs = int((self.params or {}).get("epochs") or 1)
                self._fn = self._score_fn(part, epochs * calls)
            args = (part, values, lengths) + (() if done is None else (done,))
            run_ids, group_ids, *stats = self._fn(*args)
            run_metrics.update(run_ids.numpy(), labels)
            group_metrics.update(group_ids.numpy(), labels)
            sums = (loss, hits, labelled)
            loss, hits, labelled = (x + p.numpy() for x, p in zip(sums, stats))
        n = self.sample.num_examples
        self.repetition_validation = (
            loss / max(n, 1), np.divide(hits, labelled, out=np.zeros(g_count),
                                        where=labelled > 0))
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


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` (``mode="max"``, best weights restored) whose state survives
    the two ``fit`` calls of a resumed epoch and a worker's restart.

    :func:`mach_tf.training.checkpoint.fit_resumable` drives it: it sets ``hold_end`` so that the
    end of a ``fit`` that is not the end of training restores nothing, calls
    :meth:`resume` with the epochs run before a restart, keeps the checkpoint of
    :meth:`kept_epoch` (the best epoch's weights) and calls :meth:`finish` at the end.
    Used in a plain ``model.fit`` it behaves as Keras' ``EarlyStopping``.
    """

    def __init__(self, **kwargs):
        # The best weights are kept and restored here (see on_epoch_end), not by Keras.
        super().__init__(mode="max", restore_best_weights=False, **kwargs)
        self.hold_end = False
        self._begun = False

    def on_epoch_end(self, epoch, logs=None):
        best = self.best
        super().on_epoch_end(epoch, logs)
        if self.best is not None and self.best != best:  # this epoch improved
            # A snapshot of the variables as tensors: Keras' ``get_weights()`` copies
            # them into numpy arrays, 0.3 to 0.5 s per improving epoch at the tagging
            # shape (176 MB); a tensor read shares or copies the buffer in TensorFlow.
            self.best_weights = [tf.identity(v.value) for v in self.model.weights]

    def on_train_begin(self, logs=None):
        if not self._begun:  # later fit calls of the same training keep the state
            super().on_train_begin(logs)
            self._begun = True

    def on_train_end(self, logs=None):
        if not self.hold_end:
            self.finish()

    def finish(self) -> None:
        """Puts the best epoch's weights back (the end of Keras' ``on_train_end``)."""
        super().on_train_end()
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def kept_epoch(self) -> int | None:
        """The epoch whose end-of-epoch weights are the best so far (``None``: none)."""
        return self.best_epoch if self.best is not None else None

    def kept_weights(self) -> list:
        """The best epoch's weights (``get_weights()`` order), held in memory."""
        return [np.asarray(w) for w in self.best_weights]

    def resume(self, history: dict, weights_at_epoch) -> bool:
        """Replays the monitored values of the epochs run before a restart.

        Args:
            history: ``{key: [value per epoch]}`` of those epochs.
            weights_at_epoch: ``f(epoch)`` returning the model's weights at the end of
                ``epoch`` (``None`` when they are no longer kept).

        Returns:
            ``False`` when the best epoch's weights were lost (both of its checkpoint
            files unreadable); the best then restarts from the current weights.
        """
        if self.monitor_op is None:
            self._set_monitor_op()
        self.on_train_begin()
        for epoch, current in enumerate(history.get(self.monitor, [])):
            if epoch < self.start_from_epoch:
                continue
            self.wait += 1
            if self._is_improvement(current, self.best):
                self.best, self.best_epoch = current, epoch
                if self.baseline is None or self._is_improvement(current, self.baseline):
                    self.wait = 0
            elif self.wait >= self.patience and epoch > 0:
                self.stopped_epoch = epoch  # killed after it stopped, before it finished
        if self.best is None:
            return True
        self.best_weights = weights_at_epoch(self.best_epoch)
        if self.best_weights is None:
            self.best = None
            return False
        return True


class ResumablePlateau(keras.callbacks.ReduceLROnPlateau):
    """``ReduceLROnPlateau`` (``mode="max"``) whose counters survive the two ``fit`` calls
    of a resumed epoch and a worker's restart (the learning rate itself is optimizer
    state, saved with the checkpoint)."""

    def __init__(self, **kwargs):
        super().__init__(mode="max", **kwargs)
        self._begun = False

    def on_train_begin(self, logs=None):
        if not self._begun:
            super().on_train_begin(logs)
            self._begun = True

    def resume(self, history: dict, weights_at_epoch=None) -> bool:
        """Replays the epochs run before a restart: ``history`` holds the monitored value
        and the ``learning_rate`` each epoch ended with (before any reduction)."""
        if self.monitor_op is None:
            self._set_monitor_op()
        self.on_train_begin()
        rates = history.get("learning_rate", [])
        for epoch, current in enumerate(history.get(self.monitor, [])):
            if self.in_cooldown():
                self.cooldown_counter -= 1
                self.wait = 0
            if self._is_improvement(current, self.best):
                self.best, self.wait = current, 0
            elif not self.in_cooldown():
                self.wait += 1
                if self.wait >= self.patience and epoch < len(rates) and \
                        rates[epoch] > np.float32(self.min_lr):
                    self.cooldown_counter, self.wait = self.cooldown, 0
        return True


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
        out.append(ResumableEarlyStopping(monitor=monitor,
                                          patience=config.early_stopping_patience))
    if config.lr_schedule == "plateau":
        out.append(ResumablePlateau(monitor=monitor, factor=0.5, patience=2, min_delta=0.0,
                                    min_lr=config.learning_rate / 64))
    return out


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops a group whose loss turns NaN/Inf, so no completion marker is written.

    Raises:
        NonFiniteLossError: naming the epoch, the batch and the learning rate.
    """

    def __init__(self, learning_rate: float):
        super().__init__()
        self.learning_rate = learning_rate
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise NonFiniteLossError(
                f"training loss became {float(loss)} at epoch {self.epoch + 1}, batch "
                f"{batch + 1}: training diverged (lower the learning rate, now "
                f"{self.learning_rate:g}, or look for extreme feature values)")
