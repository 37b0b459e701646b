"""The popularity penalty on the development split of runs already trained.

    python -m benchmarks.popularity --json RUN [RUN ...] [--penalty 0 0.1 0.2 0.3]

The penalty only changes how trained repetitions are served (``popularity_penalty`` in
``mach_tf.config``: each repetition's bucket scores minus ``p`` times the log training
frequency of the bucket), so every value can be scored on one trained run. For each run
the held-out validation split its training carved (``RUN/validation.json``, never the
test split) is scored by the exact merge of all repetitions, with the bucket frequencies
taken from the run's label counts minus the held-out points' own labels (what the
training side saw), and P@1/P@3/P@5 reported per penalty.

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorflow as tf

from benchmarks import common
from mach_tf import rundir
from mach_tf.inference.decoder import exact_scores
from mach_tf.inference.ranking import RankingMetrics
from mach_tf.inference.scorer import MergedScorer
from mach_tf.model.network import bucket_prior
from mach_tf.training.validation import DataSplit, load_sample


def dev_scores(run: str):
    """``(config, merged scores [n, K] of the trained run, labels, training-side counts)``
    on the run's held-out validation split."""
    config, model = rundir.load_all(run, served=False)
    info = rundir.read_json(rundir.validation_path(run))
    if not info.get("valid"):
        raise ValueError(f"{run}: trained without a validation split")
    sample = load_sample(DataSplit.from_dict(info), 10 ** 9)
    labels = sample.labels
    counts = rundir.load_label_counts(run).astype(np.int64)
    held = [y for y in labels if len(y)]
    if held and DataSplit.from_dict(info).carved:  # the held-out points were counted too
        counts = counts - np.bincount(np.concatenate(held).astype(np.int64),
                                      minlength=config.num_classes)
    scorer = MergedScorer(config, model)
    table = tf.constant(config.hash_family.table(config.num_classes))
    merged = [exact_scores(scorer.bucket_scores({k: tf.constant(v) for k, v in inputs.items()}),
                           table).numpy() for inputs, _ in sample.batches]
    return config, np.concatenate(merged), labels, counts


def precision(scores: np.ndarray, labels, ks=(1, 3, 5)) -> dict:
    """P@k of the top of ``scores`` as evaluation computes it (:class:`RankingMetrics`)."""
    top = np.argpartition(-scores, max(ks), axis=1)[:, :max(ks)]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
    metrics = RankingMetrics(ks)
    metrics.update(np.take_along_axis(top, order, 1), labels)
    result = metrics.result()
    return {f"p@{k}": round(float(result[f"p@{k}"]), 4) for k in ks}


def score_penalties(run: str, penalties) -> dict:
    config, merged, labels, counts = dev_scores(run)
    table = config.hash_family.table(config.num_classes)
    rows = np.arange(config.num_repetitions)[:, None]
    by = {}
    for p in penalties:
        prior = bucket_prior(config.replace(popularity_penalty=float(p)), counts)
        offset = 0.0 if prior is None else prior[rows, table].mean(axis=0)[None]
        by[str(p)] = precision(merged + offset, labels)
    n = rundir.read_json(rundir.train_data_path(run))["num_examples"]
    return {"run": run, "num_dev": len(labels), "num_classes": int(config.num_classes),
            "examples_per_class": round(n / config.num_classes, 2), "by_penalty": by}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.popularity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories trained with validation")
    p.add_argument("--penalty", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    results = []
    for run in args.runs:
        r = score_penalties(run, args.penalty)
        common.say("popularity", args, f"{run}: " + ", ".join(
            f"p={p}: P@1 {v['p@1']:.4f} P@5 {v['p@5']:.4f}" for p, v in r["by_penalty"].items()))
        results.append(r)
    return common.emit({"benchmark": "popularity", "runs": results}, t0)


if __name__ == "__main__":
    main()
