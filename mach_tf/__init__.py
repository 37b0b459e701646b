"""mach_tf: MACH (Merged-Average Classifiers via Hashing) for TensorFlow/Keras.

Public API::

    from mach_tf import MachConfig, HashFamily, MachModel, train_run, train_worker
    from mach_tf import evaluate_model

The pieces, in data-flow order: :mod:`mach_tf.config` (the persisted configuration),
:mod:`mach_tf.hashing` (classes -> buckets), :mod:`mach_tf.text` (raw text -> hashed
tf-idf features, in the graph), :mod:`mach_tf.model` (one Keras model per
repetition group), :mod:`mach_tf.train` (per-worker training), :mod:`mach_tf.inference`
(merged-average top-k), :mod:`mach_tf.metrics`, :mod:`mach_tf.evaluate`.
"""

from mach_tf.config import MachConfig
from mach_tf.hashing import HashFamily
from mach_tf.version import __version__


def __getattr__(name):
    # TensorFlow-heavy pieces load on first use so `mach-tf --help` stays instant.
    lazy = {
        "MachModel": ("mach_tf.model", "MachModel"),
        "build_model": ("mach_tf.model", "build_model"),
        "MergedScorer": ("mach_tf.inference", "MergedScorer"),
        "RankingMetrics": ("mach_tf.metrics", "RankingMetrics"),
        "train_run": ("mach_tf.train", "train"),
        "train_worker": ("mach_tf.train", "train_worker"),
        "evaluate_model": ("mach_tf.evaluate", "evaluate"),
        "SyntheticSpec": ("mach_tf.synthetic", "SyntheticSpec"),
        "TextFeaturizer": ("mach_tf.text", "TextFeaturizer"),
    }
    if name in lazy:
        import importlib

        module, attr = lazy[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'mach_tf' has no attribute {name!r}")


__all__ = ["HashFamily", "MachConfig", "MachModel", "MergedScorer", "RankingMetrics",
           "SyntheticSpec", "TextFeaturizer", "__version__", "build_model", "evaluate_model",
           "train_run", "train_worker"]
