"""The per-repetition networks: sparse input -> logits over B buckets, trained on bucket
targets.

Modules: :mod:`~mach_tf.model.layers` (the sparse input layer and the grouped dense layers
of G repetitions), :mod:`~mach_tf.model.network` (:class:`MachModel`, building, splitting
and stacking groups, compiling), :mod:`~mach_tf.model.losses` (the bucket loss),
:mod:`~mach_tf.model.metrics` (bucket accuracy, per-repetition loss),
:mod:`~mach_tf.model.optimizers` (lazy Adam for the sparse input kernel).
"""

from mach_tf.model.layers import GroupedDense, SparseDense
from mach_tf.model.losses import BucketLoss, bucket_loss
from mach_tf.model.metrics import BucketAccuracy, RepetitionLoss
from mach_tf.model.network import (MachModel, bucket_scores, build_model, compile_model,
                                   repetition_seed, split, stack)
from mach_tf.model.optimizers import SparseAdam, make_optimizer

__all__ = ["BucketAccuracy", "BucketLoss", "GroupedDense", "MachModel", "RepetitionLoss",
           "SparseAdam", "SparseDense", "bucket_loss", "bucket_scores", "build_model",
           "compile_model", "make_optimizer", "repetition_seed", "split", "stack"]
