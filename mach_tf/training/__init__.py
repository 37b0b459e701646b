"""Training a group of repetitions: run preparation, the input pipeline, the group's fit
with its callbacks and step checkpoints, the validation split, feature weights,
TensorBoard summaries, and the keras-tuner search.

Modules: :mod:`~mach_tf.training.prepare` (config and training-data facts, once per run),
:mod:`~mach_tf.training.pipeline` (thread budget, a group's epochs of batches),
:mod:`~mach_tf.training.group` (:func:`setup_group`, :func:`train_group`),
:mod:`~mach_tf.training.callbacks` (merged validation, early stopping, plateau schedule,
divergence guard), :mod:`~mach_tf.training.progress` (the group's progress record and
epoch lines), :mod:`~mach_tf.training.checkpoint` (step checkpoints and the resumable
fit), :mod:`~mach_tf.training.validation` (the held-out split and sample),
:mod:`~mach_tf.training.feature_weights` (idf), :mod:`~mach_tf.training.tensorboard`
(per-repetition, merged and HParams summaries), :mod:`~mach_tf.training.tuning`
(keras-tuner; needs the ``tune`` extra, so it is imported only by name:
``from mach_tf.training.tuning import tune``). Which worker trains which group is
:mod:`mach_tf.launch`'s.
"""

from mach_tf.training.callbacks import MergedValidation, training_callbacks
from mach_tf.training.checkpoint import GroupCheckpoint, fit_resumable
from mach_tf.training.group import GroupSetup, best_epoch_summary, setup_group, train_group
from mach_tf.training.pipeline import configure_threads, epochs_dataset
from mach_tf.training.prepare import count_labels, prepare_run
from mach_tf.training.progress import GroupProgress
from mach_tf.training.tensorboard import final_validation, write_run_summary
from mach_tf.training.validation import DataSplit, data_split, load_sample

__all__ = ["DataSplit", "GroupCheckpoint", "GroupProgress", "GroupSetup", "MergedValidation",
           "best_epoch_summary", "configure_threads", "count_labels", "data_split",
           "epochs_dataset", "final_validation", "fit_resumable", "load_sample", "prepare_run",
           "setup_group", "train_group", "training_callbacks", "write_run_summary"]
