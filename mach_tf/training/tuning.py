"""Hyper-parameter search with keras-tuner, scored by merged validation P@1.

:class:`MachHyperModel` is a ``keras_tuner.HyperModel``: ``build(hp)`` returns a real
:class:`~mach_tf.model.network.MachModel` holding all R repetitions of the config the
hyper-parameters describe (one group: a group's repetitions train exactly as they would
alone), and ``fit`` trains it with the same data split, feature weights, merged validation
and early stopping as ``mach-tf train`` (:func:`mach_tf.training.group.setup_group`) and
returns the merged validation metrics of the epoch it keeps. The objective is
``merged_p@1``.

:func:`tune` runs the search and writes the best config as ``OUTPUT/config.json`` for
``mach-tf train --config``; its ``group_size`` is R, so training it reproduces the trial
(same split, seeds, grouping). Trials are logged for TensorBoard's HParams dashboard
under ``OUTPUT/logs``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

import keras
import keras_tuner as kt

from mach_tf.config import MachConfig, default_buckets
from mach_tf.data import config_for_data
from mach_tf.model.network import build_model, compile_model
from mach_tf.training.callbacks import PREFIX
from mach_tf.training.group import best_epoch_summary, setup_group
from mach_tf.training.pipeline import epochs_dataset
from mach_tf.training.progress import EpochLines, duration
from mach_tf.training.validation import data_split, steps_per_epoch
from tfrecords_tools import atomic
from tfrecords_tools.paths import expand_path

OBJECTIVE = "merged_p@1"
TUNERS = ("bayesian", "hyperband", "random")

#: The levers searched, and the values each may take. B is searched as a multiple of the
#: default B for K, so that one space serves every dataset.
DEFAULT_SPACE = {
    "hidden_width": [128, 256, 512],
    "hidden_layers": [1, 2],
    "dropout": [0.0, 0.25, 0.5],
    "learning_rate": [1e-3, 3e-3, 1e-2],
    "batch_size": [128, 256, 512],
    "loss": ["softmax", "sigmoid"],
    "merge": ["prob", "logprob"],
    "feature_weighting": ["none", "idf"],
    "lr_schedule": ["constant", "plateau", "cosine"],
    "bucket_factor": [0.5, 1.0, 2.0],
    "repetitions": [8, 16],
}


class MachHyperModel(kt.HyperModel):
    """A MACH search space around a base config.

    Args:
        base: The config the search starts from (K, D, seed, epochs, validation ...).
        train: Training data prefix.
        valid: Separate validation data, or ``None`` to carve it from ``train``.
        cache_dir: Where the feature weights are cached across trials.
        space: ``{lever: [values]}``, a subset of :data:`DEFAULT_SPACE`'s keys; levers left
            out keep the base config's value.
        log: Where each epoch's line goes (``None``: nowhere), prefixed with
            ``trial_label``.
    """

    def __init__(self, base: MachConfig, train: str, valid: str | None, cache_dir: str,
                 space: dict | None = None, log=None):
        super().__init__(name="mach", tunable=True)
        self.log = log
        self.trial_label = "tune trial"
        self.base = base
        self.train = train
        self.valid = valid
        self.cache_dir = cache_dir
        self.space = dict(DEFAULT_SPACE if space is None else space)
        unknown = sorted(set(self.space) - set(DEFAULT_SPACE))
        if unknown:
            raise ValueError(f"unknown levers {unknown}; known: {sorted(DEFAULT_SPACE)}")

    def config_for(self, hp) -> MachConfig:
        """The config the hyper-parameters ``hp`` describe (group_size = R)."""
        s, b = self.space, self.base
        changes = {}

        def choice(name, cast=lambda v: v):
            values = s[name]
            return cast(hp.Choice(name, values)) if len(values) > 1 else cast(values[0])

        if "hidden_width" in s or "hidden_layers" in s:
            base_width = b.hidden_units[0] if b.hidden_units else 512  # a linear base
            width = choice("hidden_width", int) if "hidden_width" in s else base_width
            layers = choice("hidden_layers", int) if "hidden_layers" in s else \
                len(b.hidden_units)
            # Further layers of 256, as the defaults' second layer (config.py).
            changes["hidden_units"] = [width] + [256] * (layers - 1) if layers > 0 else []
        for name in ("dropout", "learning_rate"):
            if name in s:
                changes[name] = choice(name, float)
        for name in ("batch_size",):
            if name in s:
                changes[name] = choice(name, int)
        for name in ("loss", "merge", "feature_weighting", "lr_schedule"):
            if name in s:
                changes[name] = choice(name, str)
        if "bucket_factor" in s:
            factor = choice("bucket_factor", float)
            changes["num_buckets"] = max(2, int(round(default_buckets(b.num_classes) * factor)))
        if "repetitions" in s:
            changes["num_repetitions"] = choice("repetitions", int)
        r = changes.get("num_repetitions", b.num_repetitions)
        changes["group_size"] = r
        return b.replace(**changes)

    def base_values(self, space) -> dict:
        """The hyper-parameter values of the base config, for the levers of ``space`` (the
        oracle's registered hyper-parameters) whose choices hold the base's value."""
        b = self.base
        wanted = {"hidden_width": b.hidden_units[0] if b.hidden_units else None,
                  "hidden_layers": len(b.hidden_units),
                  "dropout": b.dropout, "learning_rate": b.learning_rate,
                  "batch_size": b.batch_size, "loss": b.loss, "merge": b.merge,
                  "feature_weighting": b.feature_weighting, "lr_schedule": b.lr_schedule,
                  "bucket_factor": b.num_buckets / default_buckets(b.num_classes),
                  "repetitions": b.num_repetitions}
        out = {}
        for hp in space:
            if hp.name in wanted and wanted[hp.name] in list(hp.values):
                out[hp.name] = wanted[hp.name]
            else:
                out[hp.name] = hp.default
        return out

    def build(self, hp):
        config = self.config_for(hp)
        reps = list(range(config.num_repetitions))
        # The same seeding as train_group gives the group [0 .. R-1].
        keras.utils.set_random_seed(config.seed + 1000 * reps[0])
        model = build_model(config, reps)
        steps = steps_per_epoch(data_split(config, self.train, self.valid), config.batch_size)
        return compile_model(model, config, steps)

    def fit(self, hp, model, *args, callbacks: Sequence = (), epochs: int | None = None,
            initial_epoch: int = 0, verbose: int = 0, **kwargs):
        """Trains ``model`` and returns the merged validation metrics of the epoch kept.

        ``epochs``/``initial_epoch`` come from Hyperband (its budget); otherwise the
        config's epoch cap and early stopping decide.
        """
        config = self.config_for(hp)
        reps = list(range(config.num_repetitions))
        setup = setup_group(model, config, reps, self.train, self.valid, run=None,
                            cache_dir=self.cache_dir)
        if setup.sample is None:
            raise ValueError("tuning needs validation data: give --valid or keep "
                             "validation_fraction > 0")
        # The batches mach-tf train gives the same group (epoch e shuffled with seed + e),
        # so training the best config reproduces its trial.
        epochs = epochs or config.epochs
        batches = epochs_dataset(self.train, config.replace(epochs=epochs), reps,
                                 initial_epoch, 0, setup.steps,
                                 record_filter=setup.split.train_filter())
        # Ours first: the tuner's callbacks read the merged metrics from the epoch logs.
        lines = [EpochLines(self.log, self.trial_label)] if self.log is not None else []
        history = model.fit(batches, epochs=epochs, initial_epoch=initial_epoch,
                            steps_per_epoch=setup.steps,
                            callbacks=[*setup.callbacks, *callbacks, *lines], verbose=verbose,
                            shuffle=False).history
        best = best_epoch_summary(history, config, initial_epoch)
        out = {PREFIX + k: float(v) for k, v in best["merged_validation"].items()
               if k != "repetitions"}
        out["best_epoch"] = float(best["best_epoch"])
        return out


def _defaults_first(oracle_cls, hypermodel: MachHyperModel):
    """``oracle_cls`` whose first trial is the base config itself, so a search never
    reports less than the defaults it starts from."""
    class DefaultsFirst(oracle_cls):
        def populate_space(self, trial_id):
            if not self.trials and self.hyperparameters.space:
                return {"status": kt.engine.trial.TrialStatus.RUNNING,
                        "values": hypermodel.base_values(self.hyperparameters.space)}
            return super().populate_space(trial_id)

    DefaultsFirst.__name__ = oracle_cls.__name__
    return DefaultsFirst


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def trial_line(label: str, trial, best: float | None, seconds: float) -> str:
    """``tune trial 2/10: hidden_width=256 learning_rate=0.003 -> merged_p@1 0.4125
    (best 0.4302), 41 s`` for a finished keras-tuner ``trial``."""
    values = " ".join(f"{k}={_short(v)}" for k, v in trial.hyperparameters.values.items()
                      if not k.startswith("tuner/"))
    if trial.score is None:
        result = f"{str(trial.status).lower()}, no score"
    else:
        result = f"{OBJECTIVE} {trial.score:.4f}" + (
            f" (best {best:.4f})" if best is not None else "")
    return f"{label}: {values or 'base config'} -> {result}, {duration(seconds)}"


def _logging_trials(tuner_cls, hypermodel: MachHyperModel, log, max_trials: int | None):
    """``tuner_cls`` that logs a line when each trial ends (:func:`trial_line`) and names
    the trial for the hypermodel's epoch lines."""
    started = {}

    class LoggingTrials(tuner_cls):
        def on_trial_begin(self, trial):
            super().on_trial_begin(trial)
            number = len(self.oracle.trials)
            hypermodel.trial_label = f"tune trial {number}" + (
                f"/{max_trials}" if max_trials else "")
            started[trial.trial_id] = time.monotonic()

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            scored = [t.score for t in self.oracle.trials.values() if t.score is not None]
            log(trial_line(hypermodel.trial_label, trial, max(scored) if scored else None,
                           time.monotonic() - started.pop(trial.trial_id, time.monotonic())))

    LoggingTrials.__name__ = tuner_cls.__name__
    return LoggingTrials


def tune(train: str, output: str, valid: str | None = None, base: MachConfig | None = None,
         tuner: str = "bayesian", max_trials: int = 10, max_epochs: int | None = None,
         space: dict | None = None, seed: int = 0, overwrite: bool = False,
         log=lambda msg: None, verbose: int = 0) -> dict:
    """Runs a keras-tuner search and writes the best config.

    Args:
        train: Training data prefix.
        output: Directory for ``config.json`` (the best config), ``trials.json`` (every
            trial's values and score), ``tuner/`` (keras-tuner's state; a rerun resumes)
            and ``logs/`` (TensorBoard, HParams dashboard).
        valid: Separate validation data (default: carved from ``train``).
        base: The config to search around (default: the defaults for the data).
        tuner: ``"bayesian"``, ``"hyperband"`` or ``"random"``.
        max_trials: Trials of the Bayesian and random searches.
        max_epochs: Epoch cap of every trial (and Hyperband's budget); default the
            base config's.
        space: Levers and their values (default :data:`DEFAULT_SPACE`).
        seed: Seed of the search.
        overwrite: Start a new search instead of resuming one in ``output``.
        log: Progress lines: each trial's epochs, and a line when it ends (its
            hyper-parameters, objective and time).
        verbose: keras-tuner's and Keras' own output (0: none).

    Returns:
        A report: ``best_score`` (merged validation P@1), ``best_hyperparameters``,
        ``config`` (the path of the best config), ``trials``, ``seconds``.
    """
    train, output, valid = expand_path(train), expand_path(output), expand_path(valid)
    if tuner not in TUNERS:
        raise ValueError(f"tuner must be one of {TUNERS}, got {tuner!r}")
    t0 = time.time()
    base = base or config_for_data(train)
    if base.text is not None:
        raise ValueError(f"{train}: holds raw text (converted with --format text); mach-tf "
                         f"tune searches models of sparse features only: set a text "
                         f"model's levers with mach-tf train flags")
    if base.encoder is not None:
        raise ValueError(f"{train}: the base config builds on an encoder; mach-tf tune "
                         f"searches the repetitions' own networks: tune without --encoder "
                         f"or set the levers with mach-tf train flags")
    if base.input_format == "dense":  # idf weights sparse features only
        space = {k: v for k, v in (DEFAULT_SPACE if space is None else space).items()
                 if k != "feature_weighting"}
    if max_epochs:
        base = base.replace(epochs=int(max_epochs))
    os.makedirs(output, exist_ok=True)
    hypermodel = MachHyperModel(base, train, valid, os.path.join(output, "cache"), space,
                                log=log)
    objective = kt.Objective(OBJECTIVE, direction="max")
    common = dict(directory=output, project_name="tuner", overwrite=overwrite)
    if tuner == "bayesian":
        # keras-tuner's default is 3 random points per lever (33 here) before its Gaussian
        # process guides anything; with a budget of a few trials, guide half of them.
        initial = max(2, min(3 * len(hypermodel.space), max_trials // 2))
        oracle = _defaults_first(kt.oracles.BayesianOptimizationOracle, hypermodel)(
            objective=objective, max_trials=max_trials, num_initial_points=initial,
            seed=seed)
        search = _logging_trials(kt.Tuner, hypermodel, log, max_trials)(
            oracle=oracle, hypermodel=hypermodel, **common)
    elif tuner == "random":
        oracle = _defaults_first(kt.oracles.RandomSearchOracle, hypermodel)(
            objective=objective, max_trials=max_trials, seed=seed)
        search = _logging_trials(kt.Tuner, hypermodel, log, max_trials)(
            oracle=oracle, hypermodel=hypermodel, **common)
    else:
        search = _logging_trials(kt.Hyperband, hypermodel, log, None)(
            hypermodel, max_epochs=base.epochs, factor=3, objective=objective, seed=seed,
            **common)
    log(f"tune: {tuner} search over {sorted(hypermodel.space)} (objective {OBJECTIVE}), "
        f"state in {os.path.join(output, 'tuner')}")
    # Keras' own class: keras-tuner gives each trial its log folder and HParams only to a
    # callback whose class is named TensorBoard.
    tensorboard = keras.callbacks.TensorBoard(os.path.join(output, "logs"), write_graph=False,
                                              profile_batch=0)
    search.search(callbacks=[tensorboard], verbose=verbose)

    trials = []
    for trial in search.oracle.get_best_trials(num_trials=len(search.oracle.trials)):
        trials.append({"trial_id": trial.trial_id, "score": trial.score,
                       "hyperparameters": dict(trial.hyperparameters.values),
                       "status": trial.status})
    if not trials or trials[0]["score"] is None:
        raise RuntimeError(f"tune: no trial completed; see {os.path.join(output, 'tuner')}")
    best_hp = search.get_best_hyperparameters(1)[0]
    best = hypermodel.config_for(best_hp)
    config_path = os.path.join(output, "config.json")
    atomic.write_text(config_path, best.to_json())
    atomic.write_json(os.path.join(output, "trials.json"), trials)
    report = {"best_score": trials[0]["score"], "objective": OBJECTIVE,
              "best_hyperparameters": {k: v for k, v in best_hp.values.items()
                                       if not k.startswith("tuner/")},
              "config": config_path, "trials": len(trials), "tuner": tuner,
              "logs": os.path.join(output, "logs"), "seconds": round(time.time() - t0, 3)}
    log(f"tune: best {OBJECTIVE} {report['best_score']:.4f} with "
        f"{json.dumps(report['best_hyperparameters'])}; config written to {config_path}")
    return report
