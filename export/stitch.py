"""Stitch a run's R repetitions into one SavedModel at ``BASE/NAME/VERSION/``.

The export is written to a hidden temporary directory beside the versions
(``BASE/NAME/.tmp-...``, which TensorFlow Serving ignores), loaded back and checked against
the in-Python merged scoring, given its warmup requests, and only then renamed to its
integer version: a server watching ``BASE/NAME`` never sees a half-written version, and a
failed export leaves no version behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
import uuid

import numpy as np
import tensorflow as tf

from mach_tf import rundir
from mach_tf.inference import DEFAULT_CANDIDATE_BUCKETS, MergedScorer, resolve_decoder
from mach_tf.version import __version__

from export import warmup as warmup_lib
from export.signatures import PREDICT_EXAMPLES, SERVING_DEFAULT, build_archive

EXPORT_INFO = "mach_tf.json"


class ExportError(RuntimeError):
    """An export that was refused or failed its check (no version was written)."""


@dataclasses.dataclass
class ExportResult:
    path: str
    version: int
    decoder: str
    top_k: int
    verified_queries: int
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def existing_versions(base: str) -> list[int]:
    if not tf.io.gfile.isdir(base):
        return []
    return sorted(int(v.rstrip("/")) for v in tf.io.gfile.listdir(base)
                  if re.fullmatch(r"\d+/?", v))


def _read_label_names(path: str, num_classes: int, staging: str) -> str:
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


def sample_inputs(run: str, config, n: int = 64, seed: int = 0) -> dict:
    """Representative padded inputs: the first ``n`` training examples when known, else
    random sparse rows."""
    info = os.path.join(run, rundir.TRAIN_DATA)
    if tf.io.gfile.exists(info):
        train = rundir.read_json(info).get("train")
        try:
            from mach_tf.data import to_model_inputs
            from tfrecords_tools.dataset import make_dataset

            batch = next(iter(make_dataset(train, n, shuffle=False)))
            return {k: v.numpy() for k, v in to_model_inputs(batch).items()}
        except (FileNotFoundError, ValueError, StopIteration, tf.errors.OpError):
            pass
    rng = np.random.default_rng(seed)
    width = min(16, config.num_features)
    ids = np.stack([rng.choice(config.num_features, width, replace=False) for _ in range(n)])
    ids[:, width // 2:][rng.random((n, width - width // 2)) < 0.5] = -1
    vals = np.where(ids >= 0, rng.uniform(0.5, 1.5, ids.shape), 0.0)
    return {"feature_ids": ids.astype(np.int64), "feature_values": vals.astype(np.float32)}


def topk_agree(ids_a, scores_a, ids_b, scores_b, atol: float = 1e-5) -> bool:
    """Equal top-k lists up to the order of scores tied within ``atol``."""
    ids_a, ids_b = np.asarray(ids_a), np.asarray(ids_b)
    scores_a, scores_b = np.asarray(scores_a), np.asarray(scores_b)
    if ids_a.shape != ids_b.shape:
        return False
    finite = np.isfinite(scores_a) & np.isfinite(scores_b)
    if not np.allclose(np.where(finite, scores_a, 0), np.where(finite, scores_b, 0),
                       atol=atol, rtol=1e-4):
        return False
    for ra, rb, sa, sb in zip(ids_a, ids_b, scores_a, scores_b):
        # Classes scored clearly above the k-th must be the same; the order among tied
        # scores, and which of several classes tied at the k-th place is kept, may differ.
        strict_a = set(ra[sa > sa[-1] + atol].tolist())
        strict_b = set(rb[sb > sb[-1] + atol].tolist())
        if strict_a != strict_b:
            return False
    return True


def export_model(model_dir: str, output: str, version: int | None = None, top_k: int = 10,
                 label_names: str | None = None, decoder: str = "auto",
                 candidate_buckets: int = DEFAULT_CANDIDATE_BUCKETS, verify: bool = True,
                 warmup: bool = True, log=None) -> ExportResult:
    """Exports a trained run as ``output/VERSION`` for TensorFlow Serving.

    Args:
        model_dir: The run directory.
        output: ``BASE/NAME``; the version directory is created inside it.
        version: Integer version; default the next one after those present.
        top_k: Classes returned per query.
        label_names: File of K label names, one per line (class i on line i+1).
        decoder: ``exact``, ``candidates`` or ``auto`` (exact up to 100,000 classes).
        candidate_buckets: m, top buckets per repetition for candidate decoding.
        verify: Load the SavedModel back and check its top-k against the in-Python merged
            scoring on sample queries; a mismatch fails the export.
        warmup: Write ``assets.extra/tf_serving_warmup_requests``.
        log: Optional callable for progress lines.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: for a refused or failed export; no version directory is left behind.
        mach_tf.rundir.RunDirError: for missing, unfinished or inconsistent repetitions.
    """
    t0 = time.time()
    say = log or (lambda msg: None)
    if top_k < 1:
        raise ExportError(f"top_k must be >= 1, got {top_k}")
    config, model = rundir.load_all(model_dir)
    decoder = resolve_decoder(decoder, config.num_classes)
    versions = existing_versions(output)
    if version is None:
        version = (versions[-1] + 1) if versions else 1
    if version < 0:
        raise ExportError(f"version must be a non-negative integer, got {version}")
    final = os.path.join(output, str(version))
    if tf.io.gfile.exists(final):
        raise ExportError(f"{final} already exists; pick another --version or leave it out "
                          f"to take the next one ({(versions[-1] + 1) if versions else 1})")
    tf.io.gfile.makedirs(output)
    tmp = os.path.join(output, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    staging = tempfile.mkdtemp(prefix="mach-export-")
    try:
        names = _read_label_names(label_names, config.num_classes, staging) \
            if label_names else None
        say(f"export: {config.num_repetitions} repetitions, K={config.num_classes}, "
            f"decoder={decoder}, top_k={top_k}")
        archive = build_archive(config, model, top_k, decoder, candidate_buckets, names)
        archive.write_out(tmp, verbose=False)
        checked = 0
        sample = sample_inputs(model_dir, config)
        if verify:
            checked = _verify(tmp, config, model, decoder, candidate_buckets, top_k, sample)
            say(f"export: SavedModel reproduced the in-Python top-{top_k} on {checked} queries")
        extra = os.path.join(tmp, "assets.extra")
        tf.io.gfile.makedirs(extra)
        if warmup:
            warmup_lib.write_warmup(os.path.join(extra, warmup_lib.WARMUP_FILE),
                                    sample, num_requests=8)
        with tf.io.gfile.GFile(os.path.join(extra, EXPORT_INFO), "w") as f:
            json.dump({"config": config.to_dict(), "decoder": decoder, "top_k": top_k,
                       "candidate_buckets": candidate_buckets,
                       "signatures": [SERVING_DEFAULT, PREDICT_EXAMPLES],
                       "mach_tf_version": __version__, "model_dir": model_dir}, f, indent=2)
        tf.io.gfile.rename(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"export: wrote {final}")
    return ExportResult(final, version, decoder, top_k, checked, round(time.time() - t0, 3))


def _verify(path, config, model, decoder, candidate_buckets, top_k, sample) -> int:
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures[SERVING_DEFAULT]
    out = fn(feature_ids=tf.constant(sample["feature_ids"]),
             feature_values=tf.constant(sample["feature_values"]))
    scorer = MergedScorer(config, model, decoder, candidate_buckets)
    ref_scores, ref_ids = scorer.topk(
        {k: tf.constant(v) for k, v in sample.items()}, top_k)
    if not topk_agree(out["label_ids"].numpy(), out["scores"].numpy(), ref_ids.numpy(),
                      ref_scores.numpy()):
        raise ExportError(f"{path}: the SavedModel's top-{top_k} differs from the in-Python "
                          f"merged scoring; the export was discarded")
    return int(sample["feature_ids"].shape[0])
