"""Merged-average inference: the decoders, evaluation, ranking metrics and queries.

Modules: :mod:`~mach_tf.inference.decoder` (:class:`MergedTopK`, the one merged top-k
decoder, exact or by candidates), :mod:`~mach_tf.inference.scorer` (merged top-k of a
run's stacked repetitions in Python), :mod:`~mach_tf.inference.reference` (numpy
references the decoders are checked against), :mod:`~mach_tf.inference.ranking` (P@k,
nDCG@k, PSP@k), :mod:`~mach_tf.inference.evaluation` (``mach-tf evaluate``),
:mod:`~mach_tf.inference.predict` (``mach-tf predict``), :mod:`~mach_tf.inference.centroids`
(label centroids, a re-ranking signal the benchmarks measure).
"""

from mach_tf.inference.decoder import (AUTO_EXACT_MAX_CLASSES, DECODERS, DEFAULT_CANDIDATE_BUCKETS,
                                       MergedTopK, candidate_index, resolve_decoder)
from mach_tf.inference.evaluation import evaluate, popularity_baseline, resolve_export
from mach_tf.inference.predict import pad_batch, predict_lines, predict_text_lines
from mach_tf.inference.ranking import RankingMetrics, precision_at_k, propensities
from mach_tf.inference.reference import candidate_topk_numpy, exact_topk_numpy, topk_agree
from mach_tf.inference.scorer import MergedScorer

__all__ = ["AUTO_EXACT_MAX_CLASSES", "DECODERS", "DEFAULT_CANDIDATE_BUCKETS", "MergedScorer",
           "MergedTopK", "RankingMetrics", "candidate_index", "candidate_topk_numpy",
           "evaluate", "exact_topk_numpy", "pad_batch", "popularity_baseline",
           "precision_at_k", "predict_lines", "predict_text_lines", "propensities",
           "resolve_decoder", "resolve_export", "topk_agree"]
