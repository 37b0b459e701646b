"""The run directory: every file and folder a run holds, who writes it, and the loaders.

Layout (paths come from the functions here; no other module joins these names)::

    RUN/config.json                the MachConfig: written once by the first worker or
                                   launcher (:func:`ensure_config`); a different one is refused
    RUN/train_data.json            what the model was trained on (prefixes, sizes):
                                   training.prepare
    RUN/label_counts.npy           training frequency of every label (floors, propensities):
                                   training.prepare
    RUN/feature_weights.npy        idf weights, ``feature_weighting="idf"`` only:
                                   training.feature_weights
    RUN/validation.json            what the merged validation held out: training.validation
    RUN/text_statistics.npy        a text run's document frequencies (the name is recorded
                                   in the config's ``text`` section): text.statistics
    RUN/rep-007/model.keras        repetition 7's trained network (a single-repetition
                                   model): :func:`save_repetition`, from training.group
    RUN/rep-007/COMPLETE.json      its completion marker, written after the model
    RUN/rep-007/claims/claim-N.json  which worker holds repetition 7: launch.claims
    RUN/work/group-003_007/checkpoint/  step checkpoints of a group being trained
                                   (``checkpoint.json`` + ``ckpt-N.weights.h5``):
                                   training.checkpoint; removed when the group is saved
    RUN/progress/group-003_007.json  the progress of a group in training (epochs done, the
                                   cap, early stop, each epoch's loss, validation and
                                   seconds), rewritten after every epoch:
                                   training.progress; read by launch.progress
    RUN/logs/rep-007/              TensorBoard scalars of repetition 7: training.tensorboard
    RUN/logs/merged/               merged validation, final metrics and the HParams session:
                                   training.tensorboard; ``summary-writer.json`` names the
                                   scheduler-started worker that wrote the final summary
                                   (launch.report)
    RUN/logs/group-003_007/        Keras' own TensorBoard callback of a group

Every file is written under a temporary name and renamed into place
(:mod:`tfrecords_tools.atomic`), so an interrupted write never leaves a file that a later
step could take for complete. All paths go through ``tf.io.gfile`` so a run directory may
live on a shared filesystem or object storage.
"""

from __future__ import annotations

import io
import json
import os
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.errors import EncoderError, RunDirError
from mach_tf.model.encoders import resolve_function
from mach_tf.model.network import (MachModel, add_bucket_prior, bucket_prior,
                                   repetition_seed, stack)
from tfrecords_tools import atomic

CONFIG = "config.json"
TRAIN_DATA = "train_data.json"
LABEL_COUNTS = "label_counts.npy"
FEATURE_WEIGHTS = "feature_weights.npy"
VALIDATION = "validation.json"
MODEL = "model.keras"
COMPLETE = "COMPLETE.json"
CLAIMS = "claims"
WORK = "work"
CHECKPOINT = "checkpoint"
LOGS = "logs"
PROGRESS = "progress"
#: A run made by extending another run's catalogue: where its repetitions start from.
EXTENSION = "extension.json"
MERGED_LOGS = "merged"
#: Created (exclusively) by the one scheduler-started worker that writes the run summary.
SUMMARY_MARKER = "summary-writer.json"
_GROUP = "group-"


# -- paths ---------------------------------------------------------------------------------
def config_path(run: str) -> str:
    return os.path.join(run, CONFIG)


def extension_path(run: str) -> str:
    return os.path.join(run, EXTENSION)


def extension_source(run: str) -> str | None:
    """The run whose repetitions this run's start from (``mach-tf extend``), or ``None``."""
    path = extension_path(run)
    return read_json(path)["source"] if tf.io.gfile.exists(path) else None


def train_data_path(run: str) -> str:
    return os.path.join(run, TRAIN_DATA)


def label_counts_path(run: str) -> str:
    return os.path.join(run, LABEL_COUNTS)


def feature_weights_path(run: str) -> str:
    return os.path.join(run, FEATURE_WEIGHTS)


def validation_path(run: str) -> str:
    return os.path.join(run, VALIDATION)


def text_statistics_path(run: str, name: str) -> str:
    """The document frequencies of a text run (``name`` from the config's text section)."""
    return os.path.join(run, name)


def rep_dir(run: str, r: int) -> str:
    return os.path.join(run, f"rep-{r:03d}")


def model_path(run: str, r: int) -> str:
    return os.path.join(rep_dir(run, r), MODEL)


def marker_path(run: str, r: int) -> str:
    return os.path.join(rep_dir(run, r), COMPLETE)


def claims_dir(rep: str) -> str:
    """The claims folder of a repetition folder (:func:`rep_dir`)."""
    return os.path.join(rep, CLAIMS)


def group_name(group: Sequence[int]) -> str:
    """``group-003_007`` for the group of repetitions 3 and 7."""
    return _GROUP + "_".join(f"{r:03d}" for r in group)


def parse_group_name(name: str) -> list[int] | None:
    """The repetitions of a :func:`group_name`, or ``None`` for any other name."""
    name = name.rstrip("/")
    if not name.startswith(_GROUP):
        return None
    try:
        return [int(x) for x in name[len(_GROUP):].split("_")]
    except ValueError:
        return None


def work_dir(run: str) -> str:
    return os.path.join(run, WORK)


def group_work_dir(run: str, group: Sequence[int]) -> str:
    return os.path.join(work_dir(run), group_name(group))


def checkpoint_dir(run: str, group: Sequence[int]) -> str:
    return os.path.join(group_work_dir(run, group), CHECKPOINT)


def progress_dir(run: str) -> str:
    return os.path.join(run, PROGRESS)


def progress_path(run: str, group: Sequence[int]) -> str:
    return os.path.join(progress_dir(run), group_name(group) + ".json")


def logs_dir(run: str) -> str:
    return os.path.join(run, LOGS)


def rep_logdir(run: str, r: int) -> str:
    return os.path.join(run, LOGS, f"rep-{r:03d}")


def merged_logdir(run: str) -> str:
    return os.path.join(run, LOGS, MERGED_LOGS)


def group_logdir(run: str, group: Sequence[int]) -> str:
    return os.path.join(run, LOGS, group_name(group))


def summary_marker_path(run: str) -> str:
    return os.path.join(merged_logdir(run), SUMMARY_MARKER)


def is_run_dir(path: str) -> bool:
    return tf.io.gfile.exists(config_path(path))


# -- reading and writing -------------------------------------------------------------------
def read_json(path: str):
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def save_array(path: str, array: np.ndarray) -> None:
    """Writes ``array`` as ``.npy`` (never pickled), atomically."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic.write_bytes(path, buf.getvalue())


def load_array(path: str) -> np.ndarray:
    """Reads an ``.npy`` file written by :func:`save_array` (an object array is refused,
    not unpickled).

    Raises:
        ValueError, OSError, EOFError: for a file that is not such an array.
    """
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    return np.load(io.BytesIO(data), allow_pickle=False)


def load_config(run: str) -> MachConfig:
    path = config_path(run)
    if not tf.io.gfile.exists(path):
        raise RunDirError(f"{run}: not a run directory (no {CONFIG})")
    try:
        return MachConfig.from_dict(read_json(path))
    except (ValueError, TypeError) as e:
        raise RunDirError(f"{path}: {e}") from None


def ensure_config(run: str, config: MachConfig) -> MachConfig:
    """Writes ``config`` as the run's config, or checks that it equals the one there.

    Raises:
        RunDirError: when the run directory holds a different config, naming the fields.
    """
    path = config_path(run)
    if tf.io.gfile.exists(path):
        existing = load_config(run)
        if existing.to_dict() != config.to_dict():
            a, b = existing.to_dict(), config.to_dict()
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            details = ", ".join(f"{k}: {a.get(k)!r} there vs {b.get(k)!r} now"
                                for k in diff if k != "hashing")
            if "hashing" in diff:
                details += (", " if details else "") + "hashing coefficients differ"
            raise RunDirError(
                f"{run} already holds a run with a different config ({details}); use a new "
                f"--model-dir, or rerun with the same settings to resume")
        return existing
    tf.io.gfile.makedirs(run)
    atomic.write_json(path, config.to_dict())
    return config


def is_complete(run: str, r: int) -> bool:
    return tf.io.gfile.exists(marker_path(run, r)) and tf.io.gfile.exists(model_path(run, r))


def completion(run: str, r: int) -> dict | None:
    """The completion marker of repetition ``r``, or ``None``."""
    path = marker_path(run, r)
    if not tf.io.gfile.exists(path):
        return None
    try:
        return read_json(path)
    except ValueError as e:
        raise RunDirError(f"{path}: unreadable completion marker ({e}); delete it and rerun "
                          f"'mach-tf train' to train repetition {r} again") from None


def save_repetition(run: str, r: int, model, marker: dict) -> None:
    """Saves a single-repetition model, then its completion marker (both atomically).

    The marker also records the run's whole config (``"config"``), so that export can tell
    a repetition trained for another run, copied in, from one of this run.
    """
    marker = dict(marker)
    marker.setdefault("config", load_config(run).to_dict())
    with atomic.replacing(model_path(run, r)) as tmp:
        model.save(tmp)
    atomic.write_json(marker_path(run, r), marker)


def load_repetition(run: str, r: int) -> MachModel:
    """Loads repetition ``r``'s model (Keras safe mode: no arbitrary code)."""
    path = model_path(run, r)
    if not is_complete(run, r):
        raise RunDirError(f"{rep_dir(run, r)}: repetition {r} is not complete (no "
                          f"{COMPLETE}); finish training with the same 'mach-tf train' "
                          f"command")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad archive
        raise RunDirError(f"{path}: cannot load repetition {r} ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                          f"delete {rep_dir(run, r)} and rerun 'mach-tf train' to train it "
                          f"again") from e


def write_progress(run: str, group: Sequence[int], record: dict) -> None:
    """Replaces the progress record of ``group`` (atomically)."""
    atomic.write_json(progress_path(run, group), record)


def read_progress(run: str) -> list[dict]:
    """The progress records of the run's groups, in name order (files that cannot be read
    are left out: a progress display must not fail a run)."""
    folder = progress_dir(run)
    if not tf.io.gfile.isdir(folder):
        return []
    out = []
    for name in sorted(tf.io.gfile.listdir(folder)):
        if atomic.is_temporary(name) or not name.endswith(".json") or \
                parse_group_name(name[:-len(".json")]) is None:
            continue
        try:
            record = read_json(os.path.join(folder, name))
        except (ValueError, tf.errors.OpError):
            continue
        if isinstance(record, dict) and isinstance(record.get("group"), list):
            out.append(record)
    return out


def groups_in_progress(run: str) -> list[list[int]]:
    """The groups with training state under ``RUN/work/`` (started, not saved), in name
    order."""
    work = work_dir(run)
    if not tf.io.gfile.isdir(work):
        return []
    groups = (parse_group_name(n) for n in sorted(tf.io.gfile.listdir(work)))
    return [g for g in groups if g]


def in_progress(run: str) -> set[int]:
    """Repetitions with training state under ``RUN/work/`` (a group started, not saved)."""
    return {r for g in groups_in_progress(run) for r in g}


#: Config fields that only change how trained repetitions are served, never how they are
#: trained: a repetition trained under another value is still this run's.
INFERENCE_FIELDS = ("popularity_penalty",)


def _config_differences(theirs: dict, ours: dict) -> list[str]:
    """Human-readable differences between a repetition's recorded config and the run's
    (the :data:`INFERENCE_FIELDS` aside).

    A config recorded before a field was added reads as having that field's default."""
    try:
        theirs = MachConfig.from_dict(theirs).to_dict()
    except (TypeError, ValueError):
        pass  # not a valid config: compare what it says
    out = [f"{key} {theirs.get(key)!r} (this run: {ours.get(key)!r})"
           for key in sorted(set(theirs) | set(ours))
           if key != "hashing" and key not in INFERENCE_FIELDS
           and theirs.get(key) != ours.get(key)]
    if theirs.get("hashing") != ours.get("hashing"):
        out.append("hash coefficients differ (hashing in config.json)")
    return out


def _check_repetition(r: int, config: MachConfig, model, marker: dict) -> list[str]:
    """Everything that shows repetition ``r`` was not trained for this run's config."""
    problems = []
    if marker.get("repetition", r) != r:
        problems.append(f"its {COMPLETE} is for repetition {marker.get('repetition')}")
    if "config" in marker:
        problems += _config_differences(marker["config"], config.to_dict())
    elif marker.get("hashing") not in (None, config.hash_family.subset([r]).to_dict()):
        problems.append("it was trained with other hash coefficients")
    if problems:
        return problems
    # The marker agrees; the model file itself must too (it may have been swapped).
    if model.repetitions != [r]:
        problems.append(f"the model holds repetitions {model.repetitions}")
    for what, have, want in (("num_features", model.num_features, config.num_features),
                             ("num_buckets", model.num_buckets, config.num_buckets),
                             ("hidden_units", model.hidden_units, config.hidden_units),
                             ("activation", model.activation, config.activation),
                             ("feature_norm", model.feature_norm, config.feature_norm),
                             ("input_format", model.input_format, config.input_format),
                             ("initialisation seed", model.seeds,
                              [repetition_seed(config, r)])):
        if have != want:
            problems.append(f"the model's {what} is {have!r} (this run: {want!r})")
    return problems


def load_repetitions(run: str, repetitions=None, served: bool = True,
                     popularity_penalty: float | None = None):
    """``(config, models)``: the run's config and its single-repetition models, checked.

    ``served``: the models as inference uses them, with the config's popularity penalty
    (:func:`mach_tf.model.network.bucket_prior`, from ``label_counts.npy``) in their output
    bias; ``False``: as trained. ``popularity_penalty``: serve with this penalty instead of
    the config's (the returned config says which).

    Raises:
        RunDirError: naming the repetitions that are missing (never trained), unfinished
            (training started but no completion marker, or a marker without its model),
            unreadable, or trained for another config (which fields differ).
    """
    config = load_config(run)
    if popularity_penalty is not None:
        config = config.replace(popularity_penalty=float(popularity_penalty))
    reps = list(range(config.num_repetitions)) if repetitions is None else list(repetitions)
    started = in_progress(run)
    incomplete = [r for r in reps if not is_complete(run, r)]
    unfinished = [r for r in incomplete
                  if r in started or tf.io.gfile.exists(rep_dir(run, r))]
    missing = [r for r in incomplete if r not in unfinished]
    if incomplete:
        parts = []
        if missing:
            parts.append(f"repetitions {missing} of {config.num_repetitions} are missing "
                         f"(never trained)")
        if unfinished:
            parts.append(f"repetitions {unfinished} of {config.num_repetitions} are "
                         f"unfinished (training started, no {COMPLETE})")
        raise RunDirError(f"{run}: " + " and ".join(parts) + "; run 'mach-tf train' again "
                          "with the same --model-dir to finish them")
    if config.encoder is not None and config.encoder["source"] == "function":
        try:  # its module may register the custom layers the saved models name
            resolve_function(config.encoder["function"])
        except EncoderError as e:
            raise RunDirError(f"{run}: {e}") from None
    models = []
    for r in reps:
        try:
            m = load_repetition(run, r)
        except RunDirError:
            raise
        except Exception as e:  # a damaged or foreign file: say which, not a deep traceback
            raise RunDirError(f"{model_path(run, r)}: cannot load "
                              f"repetition {r}: {type(e).__name__}: {e}") from None
        problems = _check_repetition(r, config, m, completion(run, r) or {})
        if problems:
            raise RunDirError(f"{rep_dir(run, r)}: repetition {r} was not trained for this "
                              f"run ({config_path(run)}): " + "; ".join(problems))
        models.append(m)
    prior = bucket_prior(config, load_label_counts(run)) if served else None
    if config.popularity_penalty and served and prior is None:
        raise RunDirError(f"{run}: the config's popularity penalty needs the training label "
                          f"counts ({label_counts_path(run)}), which are missing")
    if prior is not None:
        for m in models:
            add_bucket_prior(m, prior)
    return config, models


def load_all(run: str, repetitions=None, served: bool = True,
             popularity_penalty: float | None = None):
    """``(config, model)`` with every repetition of the run stacked into one model
    (``served`` and ``popularity_penalty`` as in :func:`load_repetitions`).

    Raises:
        RunDirError: as :func:`load_repetitions`.
    """
    config, models = load_repetitions(run, repetitions, served, popularity_penalty)
    return config, stack(models)


def save_label_counts(run: str, counts: np.ndarray) -> None:
    save_array(label_counts_path(run), np.asarray(counts, dtype=np.int64))


def load_label_counts(run: str) -> np.ndarray | None:
    path = label_counts_path(run)
    if not tf.io.gfile.exists(path):
        return None
    try:
        counts = load_array(path)
    except (ValueError, OSError, EOFError) as e:
        raise RunDirError(f"{path}: unreadable label counts ({e})") from None
    if counts.dtype.kind not in "iu" or counts.ndim != 1:
        raise RunDirError(f"{path}: expected a 1-D integer array, got {counts.dtype} "
                          f"{counts.shape}")
    return counts
