"""Everything a group of repetitions is trained with, besides the model itself.

Shared by the workers (:func:`mach_tf.train.train_group`) and the tuner
(:mod:`mach_tf.tune`), so that a tuned config trained by ``mach-tf train`` sees the same
data split, feature weights, validation sample and callbacks as its trial did.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import numpy as np

from mach_tf.config import MachConfig
from mach_tf.validation import (DataSplit, ValidationSample, data_split, load_sample,
                                record_split, sample_budget, steps_per_epoch)


@dataclasses.dataclass
class GroupSetup:
    """What :func:`setup_group` prepared.

    Attributes:
        split: Where training and validation points come from.
        sample: The validation points the merged metric scores (``None``: no validation).
        steps: Optimizer steps per epoch.
        callbacks: Merged validation, then early stopping and the plateau schedule (put
            them before any callback that reads their logs, e.g. TensorBoard).
        done_repetitions: Complete repetitions of the run merged into the validation.
    """

    split: DataSplit
    sample: ValidationSample | None
    steps: int
    callbacks: list
    done_repetitions: list


def setup_group(model, config: MachConfig, repetitions: Sequence[int], train: str,
                valid: str | None = None, run: str | None = None,
                cache_dir: str | None = None, featurizer=None,
                worker_cache: dict | None = None) -> GroupSetup:
    """Prepares the training of ``model`` (holding ``repetitions``) and sets its feature
    weights.

    Args:
        model: The group's built :class:`~mach_tf.model.MachModel`.
        config: The run's config.
        repetitions: The group's repetitions, in model order.
        train: Training data prefix.
        valid: Separate validation data (else ``config.validation_fraction`` of ``train``).
        run: The run directory: its complete repetitions join the merged validation, and
            the split is recorded there. ``None`` for a model trained alone (the tuner).
        cache_dir: Where the feature weights are kept (default ``run``).
        featurizer: The run's :class:`mach_tf.text.TextFeaturizer` for text data.
        worker_cache: A dict a worker keeps across its groups, so the validation
            sample is read once and each complete repetition scored on it once
            (:func:`mach_tf.callbacks.completed_scores`).

    Returns:
        A :class:`GroupSetup`.
    """
    from mach_tf.callbacks import completed_scores, training_callbacks
    from mach_tf.features import run_feature_weights

    repetitions = list(repetitions)
    split = data_split(config, train, valid)
    weights_dir = cache_dir or run
    if config.feature_weighting != "none":
        if weights_dir is None:
            raise ValueError("feature weighting needs a run or cache directory")
        model.sparse_input.set_feature_weights(
            run_feature_weights(weights_dir, config, train, split.train_filter()))
    cache = {} if worker_cache is None else worker_cache
    # Reading the sample scans the training data for held-out points: once per worker.
    samples = cache.setdefault("samples", {})
    key = (json.dumps(split.to_dict(), sort_keys=True), sample_budget(config))
    if key not in samples:
        samples[key] = load_sample(split, sample_budget(config), featurizer=featurizer)
    sample = samples[key]
    done, done_scores = [], None
    if run is not None:
        record_split(run, split, sample)
        if sample is not None:
            done, done_scores = completed_scores(run, config, sample, exclude=repetitions,
                                                 cache=cache.setdefault("completed", {}))
    steps = steps_per_epoch(split, config.batch_size)
    callbacks = training_callbacks(config, sample, repetitions, done, done_scores)
    return GroupSetup(split, sample, steps, callbacks, done)


def best_epoch_summary(history: dict, config: MachConfig, first_epoch: int = 0) -> dict:
    """The merged validation of the epoch whose weights the group keeps (for the
    repetition's completion marker); ``{}`` without validation.

    Args:
        history: The group's Keras epoch logs, ``{key: [value per epoch]}`` (those of
            :func:`mach_tf.checkpoint.fit_resumable` cover the epochs before a restart
            too), holding the merged validation's ``merged_*`` and ``group_merged_*``.
        config: The run's config.
        first_epoch: The epoch ``history`` starts at (``fit``'s ``initial_epoch``).

    ``merged_validation`` holds the run-level merge (the group with the repetitions
    complete when it started), ``group_validation`` the group's repetitions alone (what
    early stopping watched).
    """
    from mach_tf.callbacks import GROUP_PREFIX, PREFIX, monitor_name

    watched = history.get(monitor_name(config), [])
    if not watched:
        return {}
    # EarlyStopping keeps the first best epoch; argmax returns the first maximum too.
    best = int(np.argmax(watched)) if config.early_stopping_patience > 0 else \
        len(watched) - 1
    count = PREFIX + "repetitions"
    run = {key[len(PREFIX):]: float(v[best]) for key, v in history.items()
           if key.startswith(PREFIX) and key != count}
    group = {key[len(GROUP_PREFIX):]: float(v[best]) for key, v in history.items()
             if key.startswith(GROUP_PREFIX)}
    return {"best_epoch": first_epoch + best + 1, "monitor": monitor_name(config),
            "merged_validation": dict(run, repetitions=int(history[count][best])),
            "group_validation": group}
