"""Evaluation of a run directory or an exported SavedModel on converted test data."""

from __future__ import annotations

import os
import re
import time
from typing import Sequence

import numpy as np
import tensorflow as tf

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.data import check_data, evaluation_dataset
from mach_tf.inference.decoder import DEFAULT_CANDIDATE_BUCKETS
from mach_tf.inference.filters import excluded_set
from mach_tf.inference.ranking import RankingMetrics, propensities
from mach_tf.inference.scorer import MergedScorer
from mach_tf.text.statistics import load_featurizer
from tfrecords_tools.dataset import make_dataset
from tfrecords_tools.manifest import Manifest
from tfrecords_tools.paths import expand_path
from tfrecords_tools.verification import located_read_errors

#: The file an export keeps its run's config and settings in, under ``assets.extra/``.
EXPORT_INFO = "mach_tf.json"


def export_info_path(export: str) -> str:
    """Where an export (a version folder) records the config it was made from."""
    return os.path.join(export, "assets.extra", EXPORT_INFO)


def resolve_export(path: str) -> str:
    """The SavedModel directory of ``path``: itself, or its highest integer version."""
    path = expand_path(path)
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    if tf.io.gfile.isdir(path):
        versions = [int(v.rstrip("/")) for v in tf.io.gfile.listdir(path)
                    if re.fullmatch(r"\d+/?", v)]
        for v in sorted(versions, reverse=True):
            cand = os.path.join(path, str(v))
            if tf.io.gfile.exists(os.path.join(cand, "saved_model.pb")):
                return cand
    if rundir.is_run_dir(path):
        raise FileNotFoundError(
            f"{path} is a run directory, and this needs an export (a SavedModel): make one "
            f"with 'mach-tf export --model-dir {path} --output BASE/NAME' and pass BASE/NAME")
    raise FileNotFoundError(f"{path}: neither a run directory (config.json) nor a SavedModel "
                            f"export (saved_model.pb, or BASE/NAME with version folders)")


def inverse_propensities(run: str, num_classes: int) -> np.ndarray | None:
    counts = rundir.load_label_counts(run)
    if counts is None:
        return None
    info_path = rundir.train_data_path(run)
    n = rundir.read_json(info_path)["num_examples"] if tf.io.gfile.exists(info_path) \
        else int(counts.sum())
    return 1.0 / propensities(counts[:num_classes], n)


def filtered_signature(loaded, path: str, name: str):
    """The ``NAME_filtered`` twin of an export's signature.

    Raises:
        ValueError: for an export made before filtered signatures existed.
    """
    filtered = f"{name}_filtered"
    if filtered not in loaded.signatures:
        raise ValueError(f"{path} has no {filtered} signature (exported by an older "
                         f"mach-tf): export the run again to filter its answers")
    return loaded.signatures[filtered]


def no_filters(batch, exclude=()) -> dict:
    """A filtered signature's extra inputs for ``batch`` queries: ``exclude`` (ids) for
    every row, no restriction, the export's k."""
    exclude = np.asarray(exclude, np.int64).reshape(1, -1)
    if exclude.size == 0:
        exclude = np.full((1, 1), -1, np.int64)
    return {"exclude_ids": tf.tile(tf.constant(exclude), [batch, 1]),
            "restrict_ids": tf.fill([batch, 1], tf.constant(-1, tf.int64)),
            "top_k": tf.constant(0, tf.int32)}


def popularity_baseline(label_counts: np.ndarray, test, ks: Sequence[int] = (1, 3, 5),
                        propensities: np.ndarray | None = None) -> dict:
    """Metrics of always predicting the most frequent training labels (the floor); PSP@k
    too when the inverse ``propensities`` are given."""
    kmax = max(ks)
    top = np.argsort(-np.asarray(label_counts), kind="stable")[:kmax]
    metrics = RankingMetrics(ks, propensities)
    for batch in make_dataset(test, 4096, shuffle=False):
        labels = batch["labels"].to_list()
        metrics.update(np.tile(top, (len(labels), 1)), labels)
    return metrics.result()


def evaluate(model: str, test: str, ks: Sequence[int] = (1, 3, 5), decoder: str = "auto",
             candidate_buckets: int = DEFAULT_CANDIDATE_BUCKETS,
             batch_size: int | None = None, repetitions: int | None = None,
             exclude_classes: str | Sequence[int] | None = None,
             popularity_penalty: float | None = None) -> dict:
    """P@k, nDCG@k (and PSP@k for run directories) of a model on test data.

    An export answers through its ``serving_default`` (padded sparse features, or a dense
    model's ``embedding`` vectors), or ``predict_text`` for raw text test data.

    Args:
        model: A run directory, or an export (``BASE/NAME`` or ``BASE/NAME/VERSION``).
        test: Test data prefix.
        ks: Cut-offs.
        decoder: For run directories: ``exact``, ``candidates`` or ``auto``.
        candidate_buckets: m for candidate decoding.
        batch_size: Evaluation batch size (default: sized to K).
        repetitions: For run directories: merge only the first this many repetitions
            (default all R), to see what more repetitions buy.
        exclude_classes: Classes never predicted (retired from the catalogue): a file of
            one class id per line, or the ids; the answers are the top k of the others, as
            ``mach-tf export --exclude-classes`` serves them.
        popularity_penalty: For run directories: serve with this popularity penalty
            instead of the run's (``MachConfig.popularity_penalty``; it needs no
            retraining).

    Returns:
        A dict with ``p@k``, ``ndcg@k`` (``psp@k`` when the training label counts are
        known), ``num_examples``, ``seconds``, ``model``, ``decoder`` and ``repetitions``
        (merged; ``None`` for exports).

    Raises:
        mach_tf.errors.RunDirError: test data beyond the model's dimensions.
        tfrecords_tools.ShardError: naming a corrupt or truncated test shard.
        ValueError: ``repetitions`` out of range, or given for an export.
    """
    model, test = expand_path(model), expand_path(test)
    with located_read_errors(test):
        return _evaluate(model, test, ks, decoder, candidate_buckets, batch_size,
                         repetitions, exclude_classes, popularity_penalty)


def _first_repetitions(model: str, repetitions: int | None,
                       popularity_penalty: float | None = None):
    """``(config, stacked model)`` of the run's first ``repetitions`` (all by default),
    the config narrowed to them so they merge as a model of their own."""
    config = rundir.load_config(model)
    num = config.num_repetitions
    if repetitions is None or repetitions == num:
        return rundir.load_all(model, popularity_penalty=popularity_penalty)
    if not 1 <= repetitions <= num:
        raise ValueError(f"repetitions: {model} has {num} repetitions, asked to merge "
                         f"{repetitions}")
    reps = list(range(repetitions))
    config, stacked = rundir.load_all(model, reps, popularity_penalty=popularity_penalty)
    return config.replace(num_repetitions=repetitions,
                          hashing=config.hash_family.subset(reps).to_dict()), stacked


def _evaluate(model, test, ks, decoder, candidate_buckets, batch_size, repetitions,
              exclude_classes, popularity_penalty=None) -> dict:
    ks = sorted(set(int(k) for k in ks))
    kmax = max(ks)
    t0 = time.time()
    if rundir.is_run_dir(model):
        config, stacked = _first_repetitions(model, repetitions, popularity_penalty)
        check_data(config, test, "test")
        excluded = excluded_set(exclude_classes, config.num_classes)
        scorer = MergedScorer(config, stacked, decoder, candidate_buckets, excluded)
        metrics = RankingMetrics(ks, inverse_propensities(model, config.num_classes))
        bs = batch_size or scorer.eval_batch_size()
        featurizer = load_featurizer(model, config) if config.text is not None else None
        for inputs, labels in evaluation_dataset(test, bs, featurizer):
            _, ids = scorer.topk(inputs, kmax)
            metrics.update(ids.numpy(), labels.to_list())
        used = scorer.decoder
        merged = config.num_repetitions
    else:
        if repetitions is not None:
            raise ValueError("repetitions: an export merges all of its repetitions; give "
                             "the run directory to evaluate fewer")
        if popularity_penalty is not None:
            raise ValueError("popularity_penalty: an export serves the penalty it was made "
                             "with; give the run directory, or export again with it")
        path = resolve_export(model)
        info = export_info_path(path)
        manifest = Manifest.load(test)
        num_classes = manifest.num_labels
        if tf.io.gfile.exists(info):  # the run config the export was made from
            export_config = MachConfig.from_dict(rundir.read_json(info)["config"])
            check_data(export_config, test, "test")
            num_classes = export_config.num_classes
        text = manifest.text  # raw text goes to predict_text as strings
        loaded = tf.saved_model.load(path)
        name = "predict_text" if text else "serving_default"
        excluded = excluded_set(exclude_classes, num_classes)
        fn = filtered_signature(loaded, path, name) if excluded.size else \
            loaded.signatures[name]
        metrics = RankingMetrics(ks)
        takes = set(loaded.signatures[name].structured_input_signature[1])
        for inputs, labels in evaluation_dataset(test, batch_size or 256, raw_text=text):
            # Padded sparse features, or a dense batch's embedding, as serving_default takes.
            query = {"text": inputs} if text else dict(inputs)
            if not set(query) <= takes:  # an export without its config's record
                raise ValueError(f"{path}: its {name} takes {sorted(takes)}, the test data "
                                 f"{test} gives {sorted(query)}")
            if excluded.size:
                query.update(no_filters(labels.nrows(), excluded))
            out = fn(**query)
            ids = out["label_ids"].numpy()
            if ids.shape[1] < kmax:
                raise ValueError(f"{path} returns the top {ids.shape[1]} labels; P@{kmax} needs "
                                 f"an export with --top-k >= {kmax}")
            metrics.update(ids, labels.to_list())
        used = "export"
        model = path
        merged = None
    result = metrics.result()
    result.update(seconds=round(time.time() - t0, 3), model=model, decoder=used,
                  repetitions=merged)
    return result
