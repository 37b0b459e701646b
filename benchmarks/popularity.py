"""The popularity penalty, and the number of repetitions, on the development split of runs
already trained.

    python -m benchmarks.popularity --json RUN [RUN ...] [--penalty 0 0.1 0.2 0.3]
        [--repetitions 4 8 12] [--centroid-weight 4 8] [--centroid-features 256]

The penalty only changes how trained repetitions are served (``popularity_penalty`` in
``mach_tf.config``: each repetition's bucket scores minus ``p`` times the log training
frequency of the bucket), so every value can be scored on one trained run. For each run
the held-out validation split its training carved (``RUN/validation.json``, never the
test split) is scored by the exact merge of all repetitions, with the bucket frequencies
taken from the run's label counts minus the held-out points' own labels (what the
training side saw), and P@1/P@3/P@5 reported per penalty.

``--centroid-weight w ...`` also scores every penalty with ``w`` times the cosine of each
point with every class's label centroid added to the merged score
(:mod:`mach_tf.inference.centroids`, built from the training side of the split only, at
most ``--centroid-features`` entries per class), for all R and each ``--repetitions`` r.

``--repetitions r ...`` also scores the merge of the run's first r repetitions, per
penalty. A repetition's initial weights follow from its index and the seed, its group
(G consecutive repetitions) is the same whatever R is, and so are the group's batches and
early stopping (it watches the group's own merge), while its hash function is one
independent draw from the same family. So the first r repetitions of a run (r a multiple
of G) are trained as a run with ``num_repetitions=r`` trains its own, up to the draw of the
hash functions: the gain from R can be read off one trained run.

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorflow as tf

from benchmarks import common
from mach_tf import rundir
from mach_tf.inference.centroids import DEFAULT_MAX_FEATURES, label_centroids
from mach_tf.inference.decoder import exact_scores
from mach_tf.inference.ranking import RankingMetrics
from mach_tf.inference.scorer import MergedScorer
from mach_tf.model.network import bucket_prior
from mach_tf.training.validation import DataSplit, load_sample


def dev_bucket_scores(run: str):
    """``(config, bucket scores [n, R, B] of every repetition, the held-out sample,
    training-side counts)`` on the run's held-out validation split."""
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
    scores = [scorer.bucket_scores({k: tf.constant(v) for k, v in inputs.items()}).numpy()
              for inputs, _ in sample.batches]
    return config, np.concatenate(scores), sample, counts


def precision(scores: np.ndarray, labels, ks=(1, 3, 5)) -> dict:
    """P@k of the top of ``scores`` as evaluation computes it (:class:`RankingMetrics`),
    ties going to the smaller class id as in exact decoding (a single repetition ties
    every class of a bucket)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :max(ks)]
    metrics = RankingMetrics(ks)
    metrics.update(top, labels)
    result = metrics.result()
    return {f"p@{k}": round(float(result[f"p@{k}"]), 4) for k in ks}


def dev_centroid_similarity(run: str, config, sample, max_features: int) -> np.ndarray:
    """``cos(x, centroid_c)`` ``[n, K]`` of the run's held-out ``sample``
    (:func:`dev_bucket_scores`), the centroids built from the training side of its split."""
    split = DataSplit.from_dict(rundir.read_json(rundir.validation_path(run)))
    centroids = label_centroids(split.train, config.num_classes, config.num_features,
                                split.train_filter(), max_features=max_features)
    return np.concatenate([centroids.similarity(inputs["feature_ids"],
                                                inputs["feature_values"])
                           for inputs, _ in sample.batches])


def score_penalties(run: str, penalties, repetitions=(), centroid_weights=(),
                    centroid_features: int = DEFAULT_MAX_FEATURES) -> dict:
    """P@k of the run's dev split per penalty, with all its repetitions (``by_penalty``)
    and with its first r for each r in ``repetitions`` (``by_repetitions``); with
    ``centroid_weights``, per weight, R and penalty (``by_centroid_weight``)."""
    config, scores, sample, counts = dev_bucket_scores(run)
    labels = sample.labels
    table = config.hash_family.table(config.num_classes)
    priors = {p: bucket_prior(config.replace(popularity_penalty=float(p)), counts)
              for p in penalties}

    def by_penalty(r: int, extra=None) -> dict:
        merged = exact_scores(tf.constant(scores[:, :r]), tf.constant(table[:r])).numpy()
        if extra is not None:
            merged = merged + extra
        out = {}
        for p, prior in priors.items():
            offset = 0.0 if prior is None else \
                prior[np.arange(r)[:, None], table[:r]].mean(axis=0)[None]
            out[str(p)] = precision(merged + offset, labels)
        return out

    n = rundir.read_json(rundir.train_data_path(run))["num_examples"]
    result = {"run": run, "num_dev": len(labels), "num_classes": int(config.num_classes),
              "num_repetitions": int(config.num_repetitions),
              "examples_per_class": round(n / config.num_classes, 2),
              "by_penalty": by_penalty(config.num_repetitions)}
    subsets = sorted({int(r) for r in repetitions})
    if any(r < 1 or r > config.num_repetitions for r in subsets):
        raise ValueError(f"{run}: --repetitions must be in 1..{config.num_repetitions}, "
                         f"got {subsets}")
    if subsets:
        result["by_repetitions"] = {str(r): by_penalty(r) for r in subsets}
    if centroid_weights:
        sim = dev_centroid_similarity(run, config, sample, centroid_features)
        result["centroid_features"] = int(centroid_features)
        result["by_centroid_weight"] = {
            str(w): {str(r): by_penalty(r, float(w) * sim)
                     for r in sorted(set(subsets) | {config.num_repetitions})}
            for w in centroid_weights}
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.popularity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories trained with validation")
    p.add_argument("--penalty", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    p.add_argument("--repetitions", type=int, nargs="*", default=[],
                   help="also score the merge of the first r repetitions, for each r")
    p.add_argument("--centroid-weight", type=float, nargs="*", default=[],
                   help="also score with w times the label-centroid cosine added, for each w")
    p.add_argument("--centroid-features", type=int, default=DEFAULT_MAX_FEATURES,
                   help="entries kept per label centroid")
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    results = []
    for run in args.runs:
        r = score_penalties(run, args.penalty, args.repetitions, args.centroid_weight,
                            args.centroid_features)
        common.say("popularity", args, f"{run}: " + ", ".join(
            f"p={p}: P@1 {v['p@1']:.4f} P@5 {v['p@5']:.4f}" for p, v in r["by_penalty"].items()))
        results.append(r)
    return common.emit({"benchmark": "popularity", "runs": results}, t0)


if __name__ == "__main__":
    main()
