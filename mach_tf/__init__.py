"""mach_tf: MACH (Merged-Average Classifiers via Hashing) for TensorFlow/Keras.

Public API::

    import mach_tf

    config = mach_tf.MachConfig.from_data(num_classes=5000, num_features=20000)
    mach_tf.train("runs/r1", "data/tfr/train", config=config, workers=2)
    print(mach_tf.evaluate("runs/r1", "data/tfr/test"))

The package follows the data: :mod:`mach_tf.config` (the persisted configuration),
:mod:`mach_tf.hashing` (classes -> buckets), :mod:`mach_tf.rundir` (the run directory),
:mod:`mach_tf.data` (datasets meet the model), then one sub-package per stage:
:mod:`mach_tf.model` (the per-repetition networks), :mod:`mach_tf.text` (raw text ->
features, in the graph), :mod:`mach_tf.training` (a group's fit), :mod:`mach_tf.launch`
(workers, claims, local and Ray launchers), :mod:`mach_tf.inference` (merged top-k,
evaluation, metrics, queries), :mod:`mach_tf.datasets` (synthetic data, TFDS) and
:mod:`mach_tf.cli`. :mod:`mach_tf.errors` holds the exceptions users act on.

MACH as a Keras output head on any encoder, in ``keras.ops`` (every Keras backend):
:class:`mach_tf.MachClassifier` (``fit`` on class ids, ``predict_topk``), built from
:mod:`mach_tf.layers` (``MachHead``, the merged top-k), :mod:`mach_tf.losses`
(``MachLoss``) and :mod:`mach_tf.metrics` (``MergedPrecisionAtK``, ``MergedNDCGAtK``).
"""

import importlib

from mach_tf.config import MachConfig, TextSettings
from mach_tf.errors import ClaimLost, NonFiniteLossError, RunDirError, UnreadableCheckpointError
from mach_tf.hashing import HashFamily
from mach_tf.version import __version__

# TensorFlow-backed pieces load on first use, so that ``mach-tf --help`` (which imports
# this package) answers without loading TensorFlow.
_LAZY = {
    "train": "mach_tf.launch.local",
    "train_worker": "mach_tf.launch.worker",
    "evaluate": "mach_tf.inference.evaluation",
    "MachClassifier": "mach_tf.classifier",
    "MachModel": "mach_tf.model.network",
    "build_model": "mach_tf.model.network",
    "MergedTopK": "mach_tf.inference.decoder",
    "MergedScorer": "mach_tf.inference.scorer",
    "RankingMetrics": "mach_tf.inference.ranking",
    "SyntheticSpec": "mach_tf.datasets.synthetic",
    "TextFeaturizer": "mach_tf.text.featurizer",
}

__all__ = ["ClaimLost", "HashFamily", "MachClassifier", "MachConfig", "MachModel",
           "MergedScorer", "MergedTopK", "NonFiniteLossError", "RankingMetrics", "RunDirError",
           "SyntheticSpec", "TextFeaturizer", "TextSettings", "UnreadableCheckpointError",
           "__version__", "build_model", "evaluate", "train", "train_worker"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mach_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
