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


def write_bytes_atomic(path: str, data: bytes) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    tmp = _tmp(path)
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=True)


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
    return read_json(path) if tf.io.gfile.exists(path) else None


def save_repetition(run: str, r: int, model, marker: dict) -> None:
    """Saves a single-repetition model, then its completion marker (both atomically)."""
    d = rep_dir(run, r)
    tf.io.gfile.makedirs(d)
    final = os.path.join(d, MODEL)
    tmp = os.path.join(d, f"model.tmp-{uuid.uuid4().hex[:10]}.keras")
    model.save(tmp)
    tf.io.gfile.rename(tmp, final, overwrite=True)
    write_json_atomic(os.path.join(d, COMPLETE), marker)


def load_repetition(run: str, r: int):
    """Loads repetition ``r``'s model (Keras safe mode: no arbitrary code)."""
    import keras

    path = os.path.join(rep_dir(run, r), MODEL)
    if not is_complete(run, r):
        raise RunDirError(f"{rep_dir(run, r)}: repetition {r} is not complete (no "
                          f"{COMPLETE}); finish training with the same 'mach-tf train' "
                          f"command")
    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    return model


def load_all(run: str, repetitions=None):
    """``(config, model)`` with every repetition of the run stacked into one model.

    Raises:
        RunDirError: naming missing or unfinished repetitions, or repetitions whose model
            disagrees with the run's config.
    """
    from mach_tf.model import stack

    config = load_config(run)
    reps = list(range(config.num_repetitions)) if repetitions is None else list(repetitions)
    missing = [r for r in reps if not is_complete(run, r)]
    if missing:
        raise RunDirError(f"{run}: repetitions {missing} of {config.num_repetitions} are "
                          f"missing or unfinished; run 'mach-tf train' again with the same "
                          f"--model-dir to finish them")
    models = []
    for r in reps:
        m = load_repetition(run, r)
        problems = []
        if m.repetitions != [r]:
            problems.append(f"holds repetitions {m.repetitions}")
        if m.num_features != config.num_features:
            problems.append(f"num_features {m.num_features} != {config.num_features}")
        if m.num_buckets != config.num_buckets:
            problems.append(f"num_buckets {m.num_buckets} != {config.num_buckets}")
        if m.hidden_units != config.hidden_units:
            problems.append(f"hidden_units {m.hidden_units} != {config.hidden_units}")
        marker = completion(run, r) or {}
        if marker.get("hashing") not in (None, config.hash_family.subset([r]).to_dict()):
            problems.append("was trained with other hash coefficients")
        if problems:
            raise RunDirError(f"{rep_dir(run, r)}: repetition {r} disagrees with "
                              f"{os.path.join(run, CONFIG)}: " + "; ".join(problems))
        models.append(m)
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
        return np.load(io.BytesIO(f.read()), allow_pickle=False)
