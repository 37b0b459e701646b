"""The per-repetition classifier f_r: sparse x -> logits over B buckets.

:class:`MachModel` holds a group of G repetitions (G = 1 is one repetition alone) with
separate weights: ``[batch, n]`` padded sparse input -> ``[batch, G, B]`` logits. A group
trained together can be split into G single-repetition models (:func:`split`), each saved
and exported on its own, and any set of single repetitions can be stacked back into one
group (:func:`stack`) for fast merged inference.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.model.layers import GroupedDense, SparseDense
from mach_tf.model.losses import BucketLoss, StepCache
from mach_tf.model.metrics import BucketAccuracy, RepetitionLoss
from mach_tf.model.optimizers import make_optimizer

INPUT_KEYS = ("feature_ids", "feature_values")


def repetition_seed(config: MachConfig, repetition: int) -> int:
    """The weight-initialisation seed of repetition ``r`` (independent of its group)."""
    return int((config.seed * 1_000_003 + 7919 * (repetition + 1)) % (2**31 - 1))


@keras.saving.register_keras_serializable(package="mach_tf")
class MachModel(keras.Model):
    """G independent MACH repetition networks sharing one input pipeline.

    Args:
        num_features: D.
        num_buckets: B.
        hidden_units: Hidden widths (the first is the sparse input layer's).
        repetitions: Ids of the G repetitions this model holds (for bookkeeping, naming
            and initialisation seeds).
        seeds: One initialisation seed per repetition.
        activation: Hidden activation.
        dropout: Dropout after each hidden layer.
        feature_norm: ``"l2"`` or ``"none"``.
        feature_weighting: ``"idf"`` or ``"none"`` (see :class:`SparseDense`).
        precision: ``"float32"``, or ``"mixed_bfloat16"``: the matmuls run in bfloat16 on
            float32 weights (the logits are returned in float32). Training only: the
            repetitions are saved, stacked and exported in float32.

    Call with a dict of ``feature_ids`` (int, ``[batch, n]``, -1 padded) and
    ``feature_values`` (float32, ``[batch, n]``); returns logits ``[batch, G, B]``.
    """

    def __init__(self, num_features, num_buckets, hidden_units, repetitions=(0,), seeds=None,
                 activation="relu", dropout=0.0, feature_norm="l2", feature_weighting="none",
                 precision="float32", **kwargs):
        # The model never casts its inputs: each layer casts what it computes with.
        super().__init__(dtype=precision, autocast=False, **kwargs)
        self.precision = precision
        self.num_features = int(num_features)
        self.num_buckets = int(num_buckets)
        self.hidden_units = [int(h) for h in hidden_units]
        self.repetitions = [int(r) for r in repetitions]
        self.groups = len(self.repetitions)
        self.seeds = [int(s) for s in (seeds if seeds is not None else self.repetitions)]
        self.activation = activation
        self.dropout = float(dropout)
        self.feature_norm = feature_norm
        self.feature_weighting = feature_weighting
        g = self.groups
        # Without hidden layers the sparse input layer is the output layer: a linear model
        # from the features to the B bucket logits (the MACH paper's classifier for
        # sparse text features).
        first = self.hidden_units[0] if self.hidden_units else self.num_buckets
        self.sparse_input = SparseDense(self.num_features, first, groups=g,
                                        activation=activation if self.hidden_units else None,
                                        normalize=feature_norm, seeds=self.seeds,
                                        weighting=feature_weighting, dtype=precision,
                                        name="sparse_input")
        self.hidden = [GroupedDense(h, groups=g, activation=activation,
                                    seeds=[s + 101 * (i + 1) for s in self.seeds],
                                    dtype=precision, name=f"hidden_{i + 1}")
                       for i, h in enumerate(self.hidden_units[1:])]
        self.output_layer = GroupedDense(
            self.num_buckets, groups=g, activation=None, seeds=[s + 7 for s in self.seeds],
            dtype=precision, name="buckets") if self.hidden_units else None
        self.drop = keras.layers.Dropout(self.dropout, dtype=precision) \
            if self.dropout > 0 and self.hidden_units else None

    @property
    def dense_layers(self) -> list:
        """The layers after the sparse input layer (hidden, then output), in order."""
        return self.hidden + ([self.output_layer] if self.output_layer is not None else [])

    def build(self, input_shape=None):
        self.sparse_input.build(None)
        width = self.sparse_input.units
        for layer in self.dense_layers:
            layer.build((None, self.groups, width))
            width = layer.units
        self.built = True

    def call(self, inputs, training=False):
        h = self.sparse_input(inputs["feature_ids"], inputs["feature_values"])
        if self.drop is not None:
            h = self.drop(h, training=training)
        for layer in self.hidden:
            h = layer(h)
            if self.drop is not None:
                h = self.drop(h, training=training)
        if self.output_layer is not None:
            h = self.output_layer(h)
        return tf.cast(h, tf.float32)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "num_features": self.num_features, "num_buckets": self.num_buckets,
                "hidden_units": self.hidden_units, "repetitions": self.repetitions,
                "seeds": self.seeds, "activation": self.activation, "dropout": self.dropout,
                "feature_norm": self.feature_norm, "feature_weighting": self.feature_weighting,
                "precision": self.precision}

    def build_from_config(self, config):
        self.build(None)

    def get_build_config(self):
        return {"built": True}

    # -- per-repetition weights ----------------------------------------------------------
    def repetition_weights(self, g: int) -> list[np.ndarray]:
        """The weights of the group's ``g``-th repetition, in layer order."""
        out = list(self.sparse_input.block(g))
        for layer in self.dense_layers:
            out.extend(layer.block(g))
        return out

    def set_repetition_weights(self, g: int, weights: Sequence[np.ndarray]) -> None:
        ws = list(weights)
        k, b = self.sparse_input.kernel, self.sparse_input.bias
        h = self.sparse_input.units
        kv, bv = np.array(k), np.array(b)
        kv[:, g * h:(g + 1) * h], bv[g * h:(g + 1) * h] = ws[0], ws[1]
        k.assign(kv)
        b.assign(bv)
        i = 2
        for layer in self.dense_layers:
            kv, bv = np.array(layer.kernel), np.array(layer.bias)
            kv[g], bv[g] = ws[i], ws[i + 1]
            layer.kernel.assign(kv)
            layer.bias.assign(bv)
            i += 2


def build_model(config: MachConfig, repetitions: Sequence[int]) -> MachModel:
    """A built (initialised) model holding ``repetitions`` of ``config``."""
    model = MachModel(
        config.num_features, config.num_buckets, config.hidden_units,
        repetitions=list(repetitions),
        seeds=[repetition_seed(config, r) for r in repetitions],
        activation=config.activation, dropout=config.dropout,
        feature_norm=config.feature_norm, feature_weighting=config.feature_weighting,
        precision=config.precision,
        name="mach_" + "_".join(f"{r:03d}" for r in repetitions)[:200])
    model.build(None)
    return model


def _like(model: MachModel, repetitions, seeds) -> MachModel:
    m = MachModel(model.num_features, model.num_buckets, model.hidden_units,
                  repetitions=repetitions, seeds=seeds, activation=model.activation,
                  dropout=model.dropout, feature_norm=model.feature_norm,
                  feature_weighting=model.feature_weighting,
                  name="mach_" + "_".join(f"{r:03d}" for r in repetitions)[:200])
    m.build(None)
    if model.sparse_input.feature_weights is not None:
        m.sparse_input.set_feature_weights(np.asarray(model.sparse_input.feature_weights))
    return m


def split(model: MachModel) -> list[MachModel]:
    """The group's repetitions as G single-repetition models (weights copied)."""
    out = []
    for g, (r, s) in enumerate(zip(model.repetitions, model.seeds)):
        m = _like(model, [r], [s])
        m.set_repetition_weights(0, model.repetition_weights(g))
        out.append(m)
    return out


def stack(models: Sequence[MachModel]) -> MachModel:
    """One group model holding every repetition of ``models`` (weights copied).

    All models must share D, B, the hidden widths, activation, feature normalisation and
    feature weights.
    """
    first = models[0]

    def shape(m):
        return (m.num_features, m.num_buckets, m.hidden_units, m.activation, m.feature_norm,
                m.feature_weighting)

    for m in models[1:]:
        if shape(m) != shape(first):
            raise ValueError(f"cannot stack {m.name} with {first.name}: different shapes")
        if first.sparse_input.feature_weights is not None and not np.array_equal(
                np.asarray(m.sparse_input.feature_weights),
                np.asarray(first.sparse_input.feature_weights)):
            raise ValueError(f"cannot stack {m.name} with {first.name}: different feature "
                             f"weights (trained on different data?)")
    reps = [r for m in models for r in m.repetitions]
    seeds = [s for m in models for s in m.seeds]
    out = _like(first, reps, seeds)
    # Concatenate blocks directly: one assign per variable, not per repetition.
    out.sparse_input.kernel.assign(
        np.concatenate([np.asarray(m.sparse_input.kernel) for m in models], axis=1))
    out.sparse_input.bias.assign(
        np.concatenate([np.asarray(m.sparse_input.bias) for m in models], axis=0))
    for i, layer in enumerate(out.dense_layers):
        srcs = [m.dense_layers[i] for m in models]
        layer.kernel.assign(np.concatenate([np.asarray(s.kernel) for s in srcs], axis=0))
        layer.bias.assign(np.concatenate([np.asarray(s.bias) for s in srcs], axis=0))
    return out


#: Added to every class's label count before the bucket frequencies are taken (so a class
#: never seen in training still counts a little).
PRIOR_SMOOTHING = 0.5


def bucket_prior(config: MachConfig, label_counts) -> np.ndarray | None:
    """``[R, B]`` float32: ``-popularity_penalty * log Pi_r(b)``, ``Pi_r(b)`` the share of
    the training labels (counts smoothed by :data:`PRIOR_SMOOTHING`) whose class falls in
    bucket ``b`` of repetition ``r``; ``None`` when the penalty is 0 or the counts are
    unknown."""
    if not config.popularity_penalty or label_counts is None:
        return None
    counts = np.asarray(label_counts, np.float64)
    if counts.shape != (config.num_classes,):
        raise ValueError(f"label counts for {counts.shape[0]} classes, the config has "
                         f"{config.num_classes}")
    share = (counts + PRIOR_SMOOTHING) / (counts.sum() + PRIOR_SMOOTHING * counts.size)
    table = config.hash_family.table(config.num_classes)
    freq = np.stack([np.bincount(row, weights=share, minlength=config.num_buckets)
                     for row in table])
    return (-config.popularity_penalty * np.log(np.maximum(freq, 1e-30))).astype(np.float32)


def add_bucket_prior(model: MachModel, prior: np.ndarray) -> None:
    """Adds each repetition's row of :func:`bucket_prior` to its output bias. With the
    softmax loss and the ``logprob`` merge this adds the row to the bucket scores, up to a
    constant per example and repetition that does not change any ranking."""
    layer = model.output_layer if model.output_layer is not None else model.sparse_input
    rows = np.asarray(prior)[model.repetitions]  # [G, B]
    bias = np.asarray(layer.bias)
    layer.bias.assign((bias + rows.reshape(bias.shape)).astype(bias.dtype))


def bucket_scores(logits, loss: str = "softmax", merge: str = "prob"):
    """Turns logits ``[..., B]`` into the per-bucket scores that are averaged over R.

    ``merge="prob"`` gives the bucket probability P_r(b | x) (softmax, or sigmoid for the
    sigmoid loss); ``merge="logprob"`` its logarithm.
    """
    logits = tf.cast(logits, tf.float32)
    if loss == "softmax":
        return tf.nn.softmax(logits) if merge == "prob" else tf.nn.log_softmax(logits)
    return tf.sigmoid(logits) if merge == "prob" else tf.math.log_sigmoid(logits)


def compile_model(model: MachModel, config: MachConfig, steps_per_epoch: int | None = None):
    """Compiles with the bucket loss and per-repetition bucket accuracy and loss metrics
    (``rep_XXX_acc``, ``rep_XXX_loss``; a group of one has ``bucket_acc`` and ``loss``)."""
    metrics = [BucketAccuracy(None, name="bucket_acc")]
    if model.groups > 1:
        metrics += [BucketAccuracy(g, name=f"rep_{r:03d}_acc")
                    for g, r in enumerate(model.repetitions)]
        metrics += [RepetitionLoss(g, config.loss, name=f"rep_{r:03d}_loss")
                    for g, r in enumerate(model.repetitions)]
    loss = BucketLoss(config.loss)
    cache = StepCache()  # one log-sum-exp and one arg-max per step for loss and metrics
    for obj in (loss, *metrics):
        obj.step_cache = cache
    model.compile(optimizer=make_optimizer(config, steps_per_epoch), loss=loss,
                  metrics=metrics, jit_compile=False)
    return model
