"""One group of repetitions trained with ``model.fit``: what it is trained with, and the
training itself.

A worker trains its repetitions in groups of ``config.group_size``: one Keras model per
group, weights separate per repetition (:mod:`mach_tf.model`). :func:`setup_group`
prepares everything a group trains with besides the model (data split, feature weights,
validation sample, merged validation and the callbacks it drives); it is shared with the
tuner (:mod:`mach_tf.training.tuning`) so that a tuned config trained by ``mach-tf train``
sees the same data and callbacks as its trial did. :func:`train_group` trains a group,
resuming from its step checkpoint (:mod:`mach_tf.training.checkpoint`), and writes each
finished repetition with its completion marker. Which worker trains which group, and the
claims that keep two workers apart, are :mod:`mach_tf.launch`'s.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.errors import UnreadableCheckpointError
from mach_tf.model.network import (add_bucket_prior, build_model, compile_model,
                                   initial_output_bias, split, stack)
from mach_tf.text.statistics import load_featurizer
from mach_tf.training.callbacks import (GROUP_PREFIX, PREFIX, StopOnNonFiniteLoss, completed_scores,
                                        monitor_name, training_callbacks)
from mach_tf.training.checkpoint import GroupCheckpoint, fit_resumable
from mach_tf.training.feature_weights import run_feature_weights
from mach_tf.training.pipeline import epochs_dataset
from mach_tf.training.prepare import count_labels
from mach_tf.training.progress import GroupProgress
from mach_tf.training.tensorboard import EpochTensorBoard, reporting_callbacks
from mach_tf.training.validation import (DataSplit, ValidationSample, data_split, load_sample,
                                         record_split, sample_budget, steps_per_epoch)
from mach_tf.version import __version__
from tfrecords_tools.manifest import Manifest
from tfrecords_tools.verification import located_read_errors

Log = Callable[[str], None]
Events = Callable[[dict], None]


def log_to_stderr(msg: str) -> None:
    """The default ``log`` of training and launching: one flushed line on stderr."""
    print(msg, file=sys.stderr, flush=True)


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
    """Prepares the training of ``model`` (holding ``repetitions``): sets its feature
    weights and, with ``output_bias_init="log_prior"``, its starting output bias (from
    the training label counts, :func:`training_label_counts`).

    Args:
        model: The group's built :class:`~mach_tf.model.network.MachModel`.
        config: The run's config.
        repetitions: The group's repetitions, in model order.
        train: Training data prefix.
        valid: Separate validation data (else ``config.validation_fraction`` of ``train``).
        run: The run directory: its complete repetitions join the merged validation, and
            the split is recorded there. ``None`` for a model trained alone (the tuner).
        cache_dir: Where the feature weights and label counts are kept (default ``run``).
        featurizer: The run's :class:`~mach_tf.text.TextFeaturizer` for text data.
        worker_cache: A dict a worker keeps across its groups, so the validation
            sample is read once and each complete repetition scored on it once
            (:func:`mach_tf.training.callbacks.completed_scores`).

    Returns:
        A :class:`GroupSetup`.
    """
    repetitions = list(repetitions)
    split = data_split(config, train, valid)
    weights_dir = cache_dir or run
    if config.feature_weighting != "none":
        if weights_dir is None:
            raise ValueError("feature weighting needs a run or cache directory")
        model.sparse_input.set_feature_weights(
            run_feature_weights(weights_dir, config, train, split.train_filter()))
    if config.output_bias_init == "log_prior":
        counts, num_examples = training_label_counts(train, config, weights_dir)
        add_bucket_prior(model, initial_output_bias(config, counts, num_examples))
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


def training_label_counts(train: str, config: MachConfig,
                          cache_dir: str | None = None) -> tuple[np.ndarray, int]:
    """``(counts [K], num_examples)`` of the training data: the ``label_counts.npy`` of
    ``cache_dir`` (a run's, written by :func:`mach_tf.training.prepare.prepare_run`), else
    counted in one pass and kept there."""
    counts = rundir.load_label_counts(cache_dir) if cache_dir else None
    if counts is not None:
        return counts, Manifest.load(train).num_examples
    counts, num_examples = count_labels(train, config.num_classes)
    if cache_dir:
        rundir.save_label_counts(cache_dir, counts)
    return counts, num_examples


def best_epoch_summary(history: dict, config: MachConfig, first_epoch: int = 0) -> dict:
    """The merged validation of the epoch whose weights the group keeps (for the
    repetition's completion marker); ``{}`` without validation.

    Args:
        history: The group's Keras epoch logs, ``{key: [value per epoch]}`` (those of
            :func:`mach_tf.training.checkpoint.fit_resumable` cover the epochs before a restart
            too), holding the merged validation's ``merged_*`` and ``group_merged_*``.
        config: The run's config.
        first_epoch: The epoch ``history`` starts at (``fit``'s ``initial_epoch``).

    ``merged_validation`` holds the run-level merge (the group with the repetitions
    complete when it started), ``group_validation`` the group's repetitions alone (what
    early stopping watched).
    """
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


def start_from(model, singles) -> None:
    """Copies the weights of the single-repetition models ``singles`` (in the group's order)
    into the group ``model``, which has their architecture.

    Raises:
        ValueError: when a weight's shape differs (the source run's network is another),
            or when ``model`` shares one input layer and the singles' copies of it differ.
    """
    source = stack(singles)
    weights = source.weights
    if model.shared_input:  # every single holds a copy of the one input layer
        kernel, bias = singles[0].input_layer.block(0)
        for single in singles[1:]:
            other = single.input_layer.block(0)
            if not (np.array_equal(other[0], kernel) and np.array_equal(other[1], bias)):
                raise ValueError(f"cannot start from the source run's weights: its "
                                 f"repetitions {model.repetitions} do not share one input "
                                 f"layer")
        model.input_layer.set_block(0, kernel, bias)
        if source.input_layer.feature_weights is not None:
            model.input_layer.set_feature_weights(np.asarray(source.input_layer.feature_weights))
        weights = [w for layer in source.dense_layers for w in layer.weights]
    mine = {v.path: v for v in model.weights}
    for v in weights:
        name = v.path.split("/", 1)[-1]
        target = next((t for p, t in mine.items() if p.split("/", 1)[-1] == name), None)
        if target is None or tuple(target.shape) != tuple(v.shape):
            raise ValueError(f"cannot start from the source run's weights: {name} "
                             f"{tuple(v.shape)} has no match in the new network")
        target.assign(v)


def train_group(run: str, config: MachConfig, group: Sequence[int], train: str,
                valid: str | None = None, worker: int = 0, verbose: int = 2,
                log: Log = log_to_stderr, *, save: Sequence[int] | None = None,
                checkpoint_every: int = 0, claims=None, events: Events | None = None,
                callbacks: Sequence = (), worker_cache: dict | None = None) -> dict:
    """Trains one group of repetitions with ``model.fit`` and saves each repetition.

    The group resumes from its step checkpoint in ``RUN/work/group-.../checkpoint`` when
    one exists (see :mod:`mach_tf.training.checkpoint`).

    Args:
        save: The repetitions to write (default: all of ``group``); the others are
            complete already.
        checkpoint_every: Also checkpoint every this many steps (0: every 5 minutes).
        claims: The :class:`mach_tf.launch.claims.ClaimSet` held on the group; checked before
            every checkpoint and before the repetitions are written.
        events: Receives progress events (dicts); every epoch also rewrites the group's
            progress record in the run directory (:mod:`mach_tf.training.progress`).
        callbacks: More Keras callbacks for the group's ``fit``, run after the reporting
            ones (e.g. a step timer; see ``benchmarks/train_speed.py``).
        worker_cache: Kept by the worker across its groups: the validation sample and
            the run's complete repetitions' scores on it (see :func:`setup_group`), and
            the training records parsed in memory (see
            :func:`mach_tf.training.pipeline.epochs_dataset`).

    Returns:
        The per-epoch history of the group.
    """
    group = list(group)
    save = group if save is None else [r for r in group if r in set(save)]
    work = rundir.group_work_dir(run, group)
    ckpt_dir = rundir.checkpoint_dir(run, group)
    keras.utils.set_random_seed(config.seed + 1000 * group[0])
    model = build_model(config, group, run)
    # Text runs featurise in the tf.data pipeline.
    featurizer = load_featurizer(run, config) if config.text is not None else None
    # Data split, feature weights, merged validation and early stopping.
    with located_read_errors(train, valid):  # reads the validation sample (and idf)
        setup = setup_group(model, config, group, train, valid, run=run,
                            featurizer=featurizer, worker_cache=worker_cache)
    steps = setup.steps
    compile_model(model, config, steps)
    emit = events or (lambda e: None)
    fit_callbacks = [StopOnNonFiniteLoss(config.learning_rate), *setup.callbacks]
    reporting = [EpochTensorBoard(rundir.group_logdir(run, group)),
                 *reporting_callbacks(run, config, group, setup.sample, setup.callbacks)]
    # The group's progress record, for the launcher's progress lines and estimate.
    reporting.append(GroupProgress(worker, group, config.epochs,
                                   write=lambda rec: rundir.write_progress(run, group, rec),
                                   emit=events))
    reporting.extend(callbacks)
    state = GroupCheckpoint(ckpt_dir).state()
    source = rundir.extension_source(run)
    if state is None and source is not None:  # a catalogue extension starts from its source
        start_from(model, [rundir.load_repetition(source, r) for r in group])
        log(f"[worker {worker}] repetitions {group}: starting from {source}'s weights")
    if state is not None:
        emit({"event": "resume", "worker": worker, "reps": group, "epoch": state["epoch"],
              "step": state["step"], "finished": state.get("finished", False)})
        log(f"[worker {worker}] repetitions {group}: resuming at epoch {state['epoch']}, "
            f"step {state['step']} of {steps} (global step {state['global_step']})")
    check = claims.check if claims is not None else None
    t0 = time.time()
    try:
        with located_read_errors(train, valid):
            hist, info = fit_resumable(
                model,
                lambda first, skip: epochs_dataset(
                    train, config, group, first, skip, steps, featurizer,
                    setup.split.train_filter(), kept=worker_cache,
                    kept_key=json.dumps(setup.split.to_dict(), sort_keys=True)),
                steps_per_epoch=steps, epochs=config.epochs, checkpoint_dir=ckpt_dir,
                callbacks=fit_callbacks, after_checkpoint=reporting, verbose=verbose,
                every_steps=checkpoint_every, before_save=check)
    except UnreadableCheckpointError as e:
        # A torn checkpoint must not fail every rerun: report it and start the group over.
        log(f"[worker {worker}] repetitions {group}: {e}; training them from the start")
        tf.io.gfile.rmtree(ckpt_dir)
        return train_group(run, config, group, train, valid, worker=worker, verbose=verbose,
                           log=log, save=save, checkpoint_every=checkpoint_every,
                           claims=claims, events=events, callbacks=callbacks,
                           worker_cache=worker_cache)
    seconds = time.time() - t0
    if info.get("lost_best_weights"):
        log(f"[worker {worker}] repetitions {group}: the best epoch's checkpoint was "
            f"unreadable; early stopping kept the best of the epochs after the restart")
    if check is not None:
        check()
    for g, (r, single) in enumerate(zip(group, split(model))):
        if r not in save:
            continue
        marker = {
            "repetition": r, "group": group, "worker": worker, "epochs": len(hist.get(
                "loss", [])), "train_seconds": seconds,
            "final_loss": hist.get("loss", [None])[-1],
            "bucket_acc": hist.get(f"rep_{r:03d}_acc", hist.get("bucket_acc", [None]))[-1],
            "hashing": config.hash_family.subset([r]).to_dict(),
            **best_epoch_summary(hist, config),
            "steps_per_epoch": steps, "resumed_from": info["resumed_from"],
            "steps_run": info["steps_run"],
            "optimizer_iterations": info["optimizer_iterations"],
            "mach_tf_version": __version__, "finished_at": time.time()}
        rundir.save_repetition(run, r, single, marker)
        emit({"event": "rep_complete", "worker": worker, "rep": r})
    if tf.io.gfile.exists(work):
        tf.io.gfile.rmtree(work)
    return hist
