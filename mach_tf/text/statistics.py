"""The featuriser of a text run: its statistics in the run directory, adapted once.

A text run's config records the featuriser's settings and a SHA-256 of its document
frequencies (``text`` section, :class:`mach_tf.config.TextSettings`); the frequencies
themselves are ``RUN/text_statistics.npy``. :func:`adapt_run` counts them once over the
training texts; :func:`load_featurizer` rebuilds the adapted layer for training,
evaluation and export, refusing a statistics file or a normalisation table that differs
from the ones the run was trained with.
"""

from __future__ import annotations

import hashlib

import numpy as np
import tensorflow as tf

from mach_tf import rundir
from mach_tf.config import MachConfig, TextSettings
from mach_tf.errors import RunDirError
from mach_tf.text.featurizer import TextFeaturizer
from tfrecords_tools.dataset import make_dataset
from tfrecords_tools.verification import located_read_errors

_UNADAPTED = {"num_documents": None, "statistics_sha256": None, "fold_table_sha256": None}


def statistics_sha256(document_frequency: np.ndarray) -> str:
    """SHA-256 of document frequencies as little-endian int64 (recorded in the config)."""
    arr = np.ascontiguousarray(np.asarray(document_frequency, dtype="<i8"))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def build_featurizer(config) -> TextFeaturizer:
    """A built, not yet adapted featuriser for ``config`` (a text run's MachConfig)."""
    settings = TextSettings.from_dict(config.text)
    layer = TextFeaturizer(config.num_features, **settings.layer_kwargs(),
                           name="text_featurizer")
    layer.build(None)
    return layer


def _statistics_path(run: str, settings: TextSettings) -> str:
    return rundir.text_statistics_path(run, settings.statistics)


def read_statistics(run: str, config) -> np.ndarray:
    """The document frequencies of a text run, checked against its config.

    Raises:
        RunDirError: naming the file when it is missing, unreadable, of the wrong shape,
            or not the one the config records.
    """
    settings = TextSettings.from_dict(config.text)
    path = _statistics_path(run, settings)
    if not settings.adapted:
        raise RunDirError(f"{rundir.config_path(run)}: the text featuriser was "
                          f"never adapted (no statistics recorded); train the run first")
    if not tf.io.gfile.exists(path):
        raise RunDirError(f"{path}: the text featuriser's statistics are missing (the run "
                          f"was trained with them; copy the whole run directory)")
    try:
        df = rundir.load_array(path)
    except (ValueError, OSError, EOFError) as e:
        raise RunDirError(f"{path}: unreadable text statistics ({e})") from None
    if df.dtype.kind not in "iu" or df.shape != (config.num_features,):
        raise RunDirError(f"{path}: expected int64 document frequencies of shape "
                          f"({config.num_features},), got {df.dtype} {df.shape}")
    if statistics_sha256(df) != settings.statistics_sha256:
        raise RunDirError(f"{path}: the document frequencies differ from those the run was "
                          f"trained with (statistics_sha256 in config.json); the file was "
                          f"changed or comes from another run")
    return df.astype(np.int64)


def load_featurizer(run: str, config) -> TextFeaturizer:
    """The adapted featuriser of a text run: settings from ``config.json``, statistics
    from the file it names, the fold table checked against the one trained with.

    Raises:
        RunDirError: statistics missing, changed, or a fold table that differs from the
            run's (another Python whose Unicode data differs).
    """
    settings = TextSettings.from_dict(config.text)
    layer = build_featurizer(config)
    sha = layer.fold_table_sha256()
    if settings.fold_table_sha256 not in (None, sha):
        raise RunDirError(f"{run}: this Python's text normalisation table ({sha[:12]}) "
                          f"differs from the one the run was trained with "
                          f"({settings.fold_table_sha256[:12]}); use the Python version "
                          f"the run was trained with")
    layer.set_statistics(read_statistics(run, config), settings.num_documents)
    return layer


def adapt_run(run: str, config: MachConfig, train) -> MachConfig:
    """Adapts the featuriser of a text run to its training data, once.

    Counts the document frequencies over the texts of ``train``, writes them to the run
    directory (atomically) and returns ``config`` with the statistics recorded
    (``num_documents``, ``statistics_sha256``, ``fold_table_sha256``). A config that
    already records them is returned unchanged after checking the file; a run directory
    whose config has the same settings and verified statistics is reused without counting
    again (a rerun, or another worker that got there first).

    Raises:
        RunDirError: statistics that disagree with the config.
    """
    settings = TextSettings.from_dict(config.text)
    has_config = rundir.is_run_dir(run)
    if settings.adapted:
        if has_config or tf.io.gfile.exists(_statistics_path(run, settings)):
            read_statistics(run, config)
            return config
        # A config adapted elsewhere (e.g. --config of another run) for a new run: its
        # statistics are counted again on this run's training data.
        settings = TextSettings(**{**settings.to_dict(), **_UNADAPTED})
        config = config.replace(text=settings.to_dict())
    if has_config:
        # Never count (and write statistics) into another run's directory: reuse its
        # statistics when the settings are ours, else leave the refusal, naming the fields
        # that differ, to rundir.ensure_config.
        existing = rundir.load_config(run)
        if existing.text is not None and TextSettings.from_dict(existing.text).adapted:
            recorded = {k: existing.text[k] for k in _UNADAPTED}
            if config.replace(text={**config.text, **recorded}).to_dict() == \
                    existing.to_dict():
                read_statistics(run, existing)
                return existing
        return config
    layer = build_featurizer(config)
    with located_read_errors(train):
        layer.adapt(make_dataset(train, 1024, shuffle=False, with_text=True))
    df, n = layer.statistics()
    rundir.save_array(_statistics_path(run, settings), df)
    settings = TextSettings(**{**settings.to_dict(), "num_documents": n,
                               "statistics_sha256": statistics_sha256(df),
                               "fold_table_sha256": layer.fold_table_sha256()})
    return config.replace(text=settings.to_dict())
