"""Stitch a run's R repetitions into one SavedModel at ``BASE/NAME/VERSION/``.

The export is written to a hidden temporary directory beside the versions
(``BASE/NAME/.tmp-...``, :mod:`tfrecords_tools.atomic`; TensorFlow Serving only loads
integer-named directories), loaded back and checked (:mod:`export.verification`), given its
warmup requests (:mod:`export.warmup`), and only then renamed to its integer version: a
server watching ``BASE/NAME`` never sees a half-written version, and a failed export leaves
no version behind. The serving graph itself is :mod:`export.signatures`'.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import shutil
import tempfile
import time
from typing import Sequence

import tensorflow as tf

from export import warmup as warmup_lib
from export.signatures import (FILTERED, PREDICT_EXAMPLES, PREDICT_TEXT, SERVING_DEFAULT,
                               build_archive)
from export.verification import (ExportError, sample_filters, sample_inputs, sample_texts,
                                 verify_export)
from mach_tf import rundir
from mach_tf.inference.decoder import DECODERS, DEFAULT_CANDIDATE_BUCKETS, resolve_decoder
from mach_tf.inference.evaluation import export_info_path
from mach_tf.inference.filters import excluded_set
from mach_tf.inference.predict import pad_batch
from mach_tf.inference.reference import filtered_topk_numpy, reference_bucket_scores, reference_topk
from mach_tf.model.network import stack
from mach_tf.text.reference import featurize_like
from mach_tf.text.statistics import load_featurizer
from mach_tf.version import __version__
from tfrecords_tools import atomic
from tfrecords_tools.paths import expand_path


@dataclasses.dataclass
class ExportResult:
    path: str
    version: int
    decoder: str
    top_k: int
    candidate_buckets: int
    verified_queries: int
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def existing_versions(base: str) -> list[int]:
    """The integer version directories under ``base``, ascending."""
    if not tf.io.gfile.isdir(base):
        return []
    return sorted(int(v.rstrip("/")) for v in tf.io.gfile.listdir(base)
                  if re.fullmatch(r"\d+/?", v))


def version_path(output: str, version: int | None = None) -> tuple[int, str]:
    """``(version, output/version)``: the given version, or the next one after those
    present; refused (:class:`ExportError`) when that directory already exists."""
    versions = existing_versions(output)
    following = (versions[-1] + 1) if versions else 1
    version = following if version is None else version
    final = os.path.join(output, str(version))
    if tf.io.gfile.exists(final):
        raise ExportError(f"{final} already exists; pick another --version or leave it out "
                          f"to take the next one ({following})")
    return version, final


def read_label_names(path: str, num_classes: int, staging: str) -> str:
    """Checks a label-names file (one per line, K lines) and stages a clean copy."""
    if not tf.io.gfile.exists(path):
        raise ExportError(f"{path}: label names file not found")
    out = os.path.join(staging, "labels.txt")
    n = 0
    with tf.io.gfile.GFile(path, "rb") as src, open(out, "w", encoding="utf-8") as dst:
        for n, raw in enumerate(src, start=1):
            try:
                name = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise ExportError(f"{path}:{n}: label name is not valid UTF-8") from None
            if n == 1:
                name = name.lstrip("\ufeff")
            dst.write(name + "\n")
    if n != num_classes:
        raise ExportError(f"{path}: has {n} label names, the model has {num_classes} classes "
                          f"(one name per line, line i+1 naming class i)")
    return out


def export_model(model_dir: str, output: str, version: int | None = None, top_k: int = 10,
                 label_names: str | None = None, decoder: str = "auto",
                 candidate_buckets: int = DEFAULT_CANDIDATE_BUCKETS, verify: bool = True,
                 warmup: bool = True, log=None,
                 exclude_classes: str | Sequence[int] | None = None,
                 popularity_penalty: float | None = None) -> ExportResult:
    """Exports a trained run as ``output/VERSION`` for TensorFlow Serving.

    Sparse, text and dense runs (``input_format="dense"``, an encoder included) export to
    the same layout, checked on a sample of their training queries (a dense run's first 64
    training vectors, else random unit vectors; see
    :func:`~export.verification.sample_inputs`).

    Args:
        model_dir: The run directory.
        output: ``BASE/NAME``; the version directory is created inside it.
        version: Integer version; default the next one after those present.
        top_k: Classes returned per query.
        label_names: File of K label names, one per line (class i on line i+1).
        decoder: ``exact``, ``candidates`` or ``auto`` (exact up to
            :data:`mach_tf.inference.decoder.AUTO_EXACT_MAX_CLASSES` classes, candidates
            above).
        candidate_buckets: m, top buckets per repetition for candidate decoding.
        verify: Load the SavedModel back and check its top-k against the in-Python merged
            scoring on sample queries; a mismatch fails the export.
        warmup: Write ``assets.extra/tf_serving_warmup_requests``.
        log: Optional callable for progress lines.
        exclude_classes: Classes no signature ever returns (retired from the catalogue): a
            file of one class id per line, or the ids. Every answer still has ``top_k``
            classes while K minus their number allows.
        popularity_penalty: Serve with this popularity penalty instead of the run's
            (``MachConfig.popularity_penalty``; it needs no retraining); the export's
            recorded config says which.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: for a refused or failed export; no version directory is left behind.
        mach_tf.errors.RunDirError: for missing, unfinished or foreign repetitions, naming
            them (nothing is written).
    """
    model_dir, output = expand_path(model_dir), expand_path(output)
    label_names = expand_path(label_names)
    t0 = time.time()
    _say = log or (lambda msg: None)

    def say(step: str, msg: str) -> None:  # numbered steps with the time so far: progress
        _say(f"export [{step}/4] {msg} ({time.time() - t0:.1f} s)")

    if top_k < 1:
        raise ExportError(f"top_k must be >= 1, got {top_k}")
    if candidate_buckets < 1:
        raise ExportError(f"candidate_buckets must be >= 1, got {candidate_buckets}")
    if version is not None and version < 0:
        raise ExportError(f"version must be a non-negative integer, got {version}")
    if decoder not in DECODERS:
        raise ExportError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    config, singles = rundir.load_repetitions(model_dir,
                                              popularity_penalty=popularity_penalty)
    decoder = resolve_decoder(decoder, config.num_classes)
    excluded = excluded_set(expand_path(exclude_classes)
                            if isinstance(exclude_classes, str) else exclude_classes,
                            config.num_classes)
    if excluded.size >= config.num_classes:
        raise ExportError(f"all {config.num_classes} classes are excluded: nothing is left "
                          f"to return")
    version, final = version_path(output, version)
    featurizer = texts = None
    if config.text is not None:
        # Text models: the sample's features come from the Python reference featuriser, so
        # predict_text on the raw strings is checked against featurising outside the graph.
        featurizer = load_featurizer(model_dir, config)
        texts = sample_texts(model_dir)
        sample = pad_batch(featurize_like(featurizer, texts))
    else:
        sample = sample_inputs(model_dir, config)
    reference = reference_bucket_scores(config, singles, sample) if verify else None
    model = stack(singles)
    del singles
    staging = tempfile.mkdtemp(prefix="mach-export-")
    try:
        with atomic.replacing(final, overwrite=False) as tmp:
            names = read_label_names(label_names, config.num_classes, staging) \
                if label_names else None
            say("1", f"{config.num_repetitions} repetitions loaded, K={config.num_classes}, "
                f"decoder={decoder}, top_k={top_k}; building the serving graph")
            archive = build_archive(config, model, top_k, decoder, candidate_buckets, names,
                                    featurizer=featurizer, excluded_classes=excluded)
            archive.write_out(tmp)
            say("2", "SavedModel written" + (", verifying it" if verify else ""))
            del archive, model
            gc.collect()
            checked = 0
            if verify:
                family, k = config.hash_family, config.num_classes
                expected = filtered_topk_numpy(reference, family, k, decoder,
                                               candidate_buckets, top_k, excluded) \
                    if excluded.size else \
                    reference_topk(config, reference, decoder, candidate_buckets, top_k)
                filters = sample_filters(expected[1], k, top_k)
                expected_filtered = filtered_topk_numpy(
                    reference, family, k, decoder, candidate_buckets, top_k, excluded,
                    filters["exclude_ids"], filters["restrict_ids"])
                checked = verify_export(
                    tmp, final, sample, expected, names, texts,
                    filtered=(filters, tuple(x[:, :filters["top_k"]]
                                             for x in expected_filtered)))
                say("3", f"{'all six' if texts is not None else 'all four'} signatures "
                    f"reproduced the in-Python top-{top_k} on {checked} queries, filtered "
                    f"and not (tf.saved_model.load and the v1 session loader)")
            info = export_info_path(tmp)
            extra = os.path.dirname(info)
            tf.io.gfile.makedirs(extra)
            if warmup:
                warmup_lib.write_warmup(os.path.join(extra, warmup_lib.WARMUP_FILE), sample,
                                        num_requests=8, texts=texts)
            signature_names = [SERVING_DEFAULT, PREDICT_EXAMPLES] + \
                ([PREDICT_TEXT] if featurizer is not None else [])
            with tf.io.gfile.GFile(info, "w") as f:
                json.dump({"config": config.to_dict(), "decoder": decoder, "top_k": top_k,
                           "candidate_buckets": candidate_buckets,
                           "scores": "mean over repetitions of the bucket "
                                     + ("probability" if config.merge == "prob"
                                        else "log-probability"),
                           "excluded_classes": int(excluded.size),
                           "signatures": [name + suffix for name in signature_names
                                          for suffix in ("", FILTERED)],
                           "mach_tf_version": __version__, "model_dir": model_dir}, f, indent=2)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say("4", f"wrote {final}")
    return ExportResult(final, version, decoder, top_k, candidate_buckets, checked,
                        round(time.time() - t0, 3))
