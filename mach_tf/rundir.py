"""The run directory: what training writes and export and evaluation read.

Layout::

    RUN/config.json              the MachConfig (written once; a different one is refused)
    RUN/train_data.json          what the model was trained on (prefixes, sizes)
    RUN/label_counts.npy         training frequency of every label (floors, propensities)
    RUN/rep-007/model.keras      repetition 7's trained network (a single-repetition model)
    RUN/rep-007/COMPLETE.json    completion marker, written last
    RUN/rep-007/claims/          which worker holds repetition 7 (mach_tf/claims.py)
    RUN/work/group-.../checkpoint/  step checkpoints of a group being trained
                                 (mach_tf/checkpoint.py)
    RUN/logs/                    TensorBoard event files

Every file is written under a temporary name and renamed into place, so an interrupted
write never leaves a file that a later step could take for complete. All paths go through
``tf.io.gfile`` so a run directory may live on a shared filesystem or object storage.
"""

from __future__ import annotations

import io
import json
import os
import uuid

import numpy as np
import tensorflow as tf

from mach_tf.config import MachConfig

CONFIG = "config.json"
TRAIN_DATA = "train_data.json"
LABEL_COUNTS = "label_counts.npy"
MODEL = "model.keras"
COMPLETE = "COMPLETE.json"


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (and why)."""


def rep_dir(run: str, r: int) -> str:
    return os.path.join(run, f"rep-{r:03d}")


def _tmp(path: str) -> str:
    return f"{path}.tmp-{uuid.uuid4().hex[:10]}"


def _publish(tmp: str, path: str) -> None:
    """The rename that makes a fully written file visible under its final name."""
    tf.io.gfile.rename(tmp, path, overwrite=True)


def write_bytes_atomic(path: str, data: bytes) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    tmp = _tmp(path)
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        _publish(tmp, path)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


def write_json_atomic(path: str, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str):
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def load_config(run: str) -> MachConfig:
    path = os.path.join(run, CONFIG)
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
    path = os.path.join(run, CONFIG)
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
    write_json_atomic(path, config.to_dict())
    return config


def is_complete(run: str, r: int) -> bool:
    d = rep_dir(run, r)
    return tf.io.gfile.exists(os.path.join(d, COMPLETE)) and \
        tf.io.gfile.exists(os.path.join(d, MODEL))


def completion(run: str, r: int) -> dict | None:
    """The completion marker of repetition ``r``, or ``None``."""
    path = os.path.join(rep_dir(run, r), COMPLETE)
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
    d = rep_dir(run, r)
    tf.io.gfile.makedirs(d)
    marker = dict(marker)
    marker.setdefault("config", load_config(run).to_dict())
    final = os.path.join(d, MODEL)
    tmp = os.path.join(d, f"model.tmp-{uuid.uuid4().hex[:10]}.keras")
    try:
        model.save(tmp)
        _publish(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise
    write_json_atomic(os.path.join(d, COMPLETE), marker)


def load_repetition(run: str, r: int):
    """Loads repetition ``r``'s model (Keras safe mode: no arbitrary code)."""
    import keras

    path = os.path.join(rep_dir(run, r), MODEL)
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


def in_progress(run: str) -> set[int]:
    """Repetitions with training state under ``RUN/work/`` (a group started, not saved)."""
    work = os.path.join(run, "work")
    if not tf.io.gfile.isdir(work):
        return set()
    out = set()
    for name in tf.io.gfile.listdir(work):
        name = name.rstrip("/")
        if name.startswith("group-"):
            out.update(int(x) for x in name[len("group-"):].split("_") if x.isdigit())
    return out


def _config_differences(theirs: dict, ours: dict) -> list[str]:
    """Human-readable differences between a repetition's recorded config and the run's."""
    out = [f"{key} {theirs.get(key)!r} (this run: {ours.get(key)!r})"
           for key in sorted(set(theirs) | set(ours))
           if key != "hashing" and theirs.get(key) != ours.get(key)]
    if theirs.get("hashing") != ours.get("hashing"):
        out.append("hash coefficients differ (hashing in config.json)")
    return out


def _check_repetition(r: int, config: MachConfig, model, marker: dict) -> list[str]:
    """Everything that shows repetition ``r`` was not trained for this run's config."""
    from mach_tf.model import repetition_seed

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
                             ("initialisation seed", model.seeds,
                              [repetition_seed(config, r)])):
        if have != want:
            problems.append(f"the model's {what} is {have!r} (this run: {want!r})")
    return problems


def load_repetitions(run: str, repetitions=None):
    """``(config, models)``: the run's config and its single-repetition models, checked.

    Raises:
        RunDirError: naming the repetitions that are missing (never trained), unfinished
            (training started but no completion marker, or a marker without its model),
            unreadable, or trained for another config (which fields differ).
    """
    config = load_config(run)
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
    models = []
    for r in reps:
        try:
            m = load_repetition(run, r)
        except RunDirError:
            raise
        except Exception as e:  # a damaged or foreign file: say which, not a deep traceback
            raise RunDirError(f"{os.path.join(rep_dir(run, r), MODEL)}: cannot load "
                              f"repetition {r}: {type(e).__name__}: {e}") from None
        problems = _check_repetition(r, config, m, completion(run, r) or {})
        if problems:
            raise RunDirError(f"{rep_dir(run, r)}: repetition {r} was not trained for this "
                              f"run ({os.path.join(run, CONFIG)}): " + "; ".join(problems))
        models.append(m)
    return config, models


def load_all(run: str, repetitions=None):
    """``(config, model)`` with every repetition of the run stacked into one model.

    Raises:
        RunDirError: as :func:`load_repetitions`.
    """
    from mach_tf.model import stack

    config, models = load_repetitions(run, repetitions)
    return config, stack(models)


def save_label_counts(run: str, counts: np.ndarray, num_examples: int) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(counts, dtype=np.int64), allow_pickle=False)
    write_bytes_atomic(os.path.join(run, LABEL_COUNTS), buf.getvalue())


def load_label_counts(run: str) -> np.ndarray | None:
    path = os.path.join(run, LABEL_COUNTS)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:  # never pickle: an object array is refused, not unpickled
        counts = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise RunDirError(f"{path}: unreadable label counts ({e})") from None
    if counts.dtype.kind not in "iu" or counts.ndim != 1:
        raise RunDirError(f"{path}: expected a 1-D integer array, got {counts.dtype} "
                          f"{counts.shape}")
    return counts
