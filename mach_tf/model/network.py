"""The per-repetition classifier f_r: x -> logits over B buckets.

:class:`MachModel` holds a group of G repetitions (G = 1 is one repetition alone) with
separate weights: ``[batch, n]`` padded sparse input, or a dense ``[batch, d]`` vector
(optionally through the user's own Keras encoder, shared when frozen, else one per
repetition) -> ``[batch, G, B]`` logits. A group
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
from mach_tf.model.encoders import build_encoders, output_dim
from mach_tf.model.layers import DenseInput, GroupedDense, SparseDense
from mach_tf.model.losses import BucketLoss, StepCache
from mach_tf.model.metrics import BucketAccuracy, RepetitionLoss
from mach_tf.model.optimizers import make_optimizer

INPUT_KEYS = ("feature_ids", "feature_values")
#: The input of a dense run's model: float32 ``[batch, d]``.
DENSE_KEY = "embedding"


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
        input_format: ``"sparse"`` or ``"dense"`` (``num_features`` is then d).
        encoders: For a dense model, the user's Keras encoders (models, or their Keras
            serializations): none, one shared by the G repetitions, or one per repetition;
            the first layer then reads their output.
        encoder_trainable: Whether the encoders train (``False``: they run in inference
            mode and their weights stay as loaded).
        shared_input: One sparse input layer for the G repetitions (its kernel seeded by
            the first repetition's seed), whose ``[batch, H]`` output each repetition's
            later layers read (dropout draws each repetition's own mask). Training only:
            :func:`split` gives each repetition a copy of it.
        kernel_initializer: Every layer's kernel initializer instead of each layer's own
            seeded one: ``"zeros"`` for a model whose weights are set right after it is
            built (:func:`split`, :func:`stack`), which skips drawing D * G * H random
            numbers that would be overwritten. Not part of the model's config.

    Call with a dict of ``feature_ids`` (int, ``[batch, n]``, -1 padded) and
    ``feature_values`` (float32, ``[batch, n]``), or for a dense model ``embedding``
    (float32 ``[batch, d]``); returns logits ``[batch, G, B]``.
    """

    def __init__(self, num_features, num_buckets, hidden_units, repetitions=(0,), seeds=None,
                 activation="relu", dropout=0.0, feature_norm="l2", feature_weighting="none",
                 precision="float32", input_format="sparse", encoders=(),
                 encoder_trainable=True, kernel_initializer=None, shared_input=False,
                 **kwargs):
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
        self.input_format = input_format
        self.shared_input = bool(shared_input)
        if self.shared_input and (input_format != "sparse" or not self.hidden_units):
            raise ValueError("MachModel: shared_input needs sparse input and a hidden layer")
        self.encoder_trainable = bool(encoder_trainable)
        self.encoders = [keras.saving.deserialize_keras_object(e) if isinstance(e, dict)
                         else e for e in encoders]
        if self.encoders and (input_format != "dense" or len(self.encoders) not in (1, g)):
            raise ValueError(f"MachModel: {len(self.encoders)} encoders for {g} dense "
                             f"repetitions (input_format={input_format!r}): give none, one "
                             f"shared or one per repetition")
        for enc in self.encoders:
            enc.trainable = self.encoder_trainable
        # Without hidden layers the input layer is the output layer: a linear model from
        # the features to the B bucket logits (the MACH paper's classifier for sparse text
        # features).
        init = {} if kernel_initializer is None else {"kernel_initializer": kernel_initializer}
        first = self.hidden_units[0] if self.hidden_units else self.num_buckets
        first_activation = activation if self.hidden_units else None
        if input_format == "dense":
            width = self.num_features
            if self.encoders:
                width = output_dim(self.encoders[0], self.num_features, f"{self.name}'s encoder")
            self.dense_input = DenseInput(width, first, groups=g,
                                          activation=first_activation, normalize=feature_norm,
                                          seeds=self.seeds, dtype=precision, name="dense_input",
                                          **init)
        else:
            shared = self.shared_input
            self.sparse_input = SparseDense(self.num_features, first,
                                            groups=1 if shared else g,
                                            activation=first_activation,
                                            normalize=feature_norm,
                                            seeds=self.seeds[:1] if shared else self.seeds,
                                            weighting=feature_weighting, dtype=precision,
                                            name="sparse_input", **init)
        self.hidden = [GroupedDense(h, groups=g, activation=activation,
                                    seeds=[s + 101 * (i + 1) for s in self.seeds],
                                    dtype=precision, name=f"hidden_{i + 1}", **init)
                       for i, h in enumerate(self.hidden_units[1:])]
        self.output_layer = GroupedDense(
            self.num_buckets, groups=g, activation=None, seeds=[s + 7 for s in self.seeds],
            dtype=precision, name="buckets", **init) if self.hidden_units else None
        self.drop = keras.layers.Dropout(self.dropout, dtype=precision) \
            if self.dropout > 0 and self.hidden_units else None

    @property
    def input_layer(self):
        """The first layer of every repetition (sparse or dense): repetition ``g``'s
        ``[D, H]`` kernel is its ``block(g)``."""
        return self.dense_input if self.input_format == "dense" else self.sparse_input

    @property
    def dense_layers(self) -> list:
        """The layers after the sparse input layer (hidden, then output), in order."""
        return self.hidden + ([self.output_layer] if self.output_layer is not None else [])

    def build(self, input_shape=None):
        for enc in self.encoders:
            if not enc.built:
                enc.build((None, self.num_features))
        self.input_layer.build(None)
        width = self.input_layer.units
        for layer in self.dense_layers:
            layer.build((None, self.groups, width))
            width = layer.units
        self.built = True

    def _first(self, inputs, training):
        if self.input_format != "dense":
            h = self.sparse_input(inputs["feature_ids"], inputs["feature_values"])
            # [batch, 1, H] -> [batch, G, H]: the gradient sums the G repetitions' parts.
            return tf.repeat(h, self.groups, axis=1) if self.shared_input else h
        x = tf.cast(inputs[DENSE_KEY], tf.float32)
        mode = bool(training) and self.encoder_trainable
        if len(self.encoders) == 1:
            x = self.encoders[0](x, training=mode)
        elif self.encoders:  # one encoder per repetition: [batch, G, e]
            x = tf.stack([enc(x, training=mode) for enc in self.encoders], axis=1)
        return self.dense_input(x)

    def call(self, inputs, training=False):
        h = self._first(inputs, training)
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
                "precision": self.precision, "input_format": self.input_format,
                "encoders": [keras.saving.serialize_keras_object(e) for e in self.encoders],
                "encoder_trainable": self.encoder_trainable,
                "shared_input": self.shared_input}

    def build_from_config(self, config):
        self.build(None)

    def get_build_config(self):
        return {"built": True}

    # -- per-repetition weights ----------------------------------------------------------
    def repetition_weights(self, g: int) -> list[np.ndarray]:
        """The weights of the group's ``g``-th repetition, in layer order (its encoder's,
        if any, are :meth:`encoder_of`'s)."""
        out = list(self.input_layer.block(0 if self.shared_input else g))
        for layer in self.dense_layers:
            out.extend(layer.block(g))
        return out

    def encoder_of(self, g: int):
        """The encoder repetition ``g`` reads through (``None`` without one)."""
        if not self.encoders:
            return None
        return self.encoders[0] if len(self.encoders) == 1 else self.encoders[g]

    def set_repetition_weights(self, g: int, weights: Sequence[np.ndarray]) -> None:
        if self.shared_input:
            raise ValueError(f"{self.name}: a shared input layer has no repetition's own "
                             f"weights to set")
        ws = list(weights)
        self.input_layer.set_block(g, ws[0], ws[1])
        i = 2
        for layer in self.dense_layers:
            kv, bv = np.array(layer.kernel), np.array(layer.bias)
            kv[g], bv[g] = ws[i], ws[i + 1]
            layer.kernel.assign(kv)
            layer.bias.assign(bv)
            i += 2


def build_model(config: MachConfig, repetitions: Sequence[int],
                run: str | None = None) -> MachModel:
    """A built (initialised) model holding ``repetitions`` of ``config`` (a run with an
    encoder file needs its ``run`` directory, where the file is kept)."""
    seeds = [repetition_seed(config, r) for r in repetitions]
    encoders = build_encoders(config.encoder, seeds, run) if config.encoder else []
    model = MachModel(
        config.num_features, config.num_buckets, config.hidden_units,
        repetitions=list(repetitions), seeds=seeds,
        activation=config.activation, dropout=config.dropout,
        feature_norm=config.feature_norm, feature_weighting=config.feature_weighting,
        precision=config.precision, input_format=config.input_format, encoders=encoders,
        encoder_trainable=bool(config.encoder and config.encoder["trainable"]),
        name="mach_" + "_".join(f"{r:03d}" for r in repetitions)[:200],
        shared_input=config.shared_input_layer and len(repetitions) > 1)
    model.build(None)
    return model


def clone_encoder(encoder):
    """A copy of a Keras encoder with its weights (not shared with the original)."""
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(encoder))
    copy.set_weights(encoder.get_weights())
    return copy


def _like(model: MachModel, repetitions, seeds, encoders=()) -> MachModel:
    m = MachModel(model.num_features, model.num_buckets, model.hidden_units,
                  repetitions=repetitions, seeds=seeds, activation=model.activation,
                  dropout=model.dropout, feature_norm=model.feature_norm,
                  feature_weighting=model.feature_weighting, input_format=model.input_format,
                  encoders=list(encoders), encoder_trainable=model.encoder_trainable,
                  name="mach_" + "_".join(f"{r:03d}" for r in repetitions)[:200],
                  kernel_initializer="zeros")  # every weight is set right after
    m.build(None)
    weights = getattr(model.input_layer, "feature_weights", None)
    if weights is not None:
        m.sparse_input.set_feature_weights(np.asarray(weights))
    return m


def split(model: MachModel) -> list[MachModel]:
    """The group's repetitions as G single-repetition models (weights copied; each gets its
    own copy of the encoder it reads through)."""
    out = []
    for g, (r, s) in enumerate(zip(model.repetitions, model.seeds)):
        enc = model.encoder_of(g)
        m = _like(model, [r], [s], [clone_encoder(enc)] if enc is not None else [])
        m.set_repetition_weights(0, model.repetition_weights(g))
        out.append(m)
    return out


def _stacked_encoders(models: Sequence[MachModel]) -> list:
    """The encoders of the stack of ``models``: none, one when every repetition reads
    through the same frozen encoder (equal weights), else one per repetition."""
    if not models[0].encoders:
        return []
    per_rep = [m.encoder_of(g) for m in models for g in range(m.groups)]
    first = per_rep[0]
    if not models[0].encoder_trainable and all(
            all(np.array_equal(a, b) for a, b in zip(first.get_weights(), e.get_weights()))
            for e in per_rep[1:]):
        return [clone_encoder(first)]
    return [clone_encoder(e) for e in per_rep]


def stack(models: Sequence[MachModel]) -> MachModel:
    """One group model holding every repetition of ``models`` (weights copied).

    All models must share D, B, the hidden widths, activation, feature normalisation and
    feature weights, the input format and whether they have encoders.
    """
    first = models[0]

    def shape(m):
        return (m.num_features, m.num_buckets, m.hidden_units, m.activation, m.feature_norm,
                m.feature_weighting, m.input_format, bool(m.encoders), m.encoder_trainable)

    first_weights = getattr(first.input_layer, "feature_weights", None)
    for m in models[1:]:
        if shape(m) != shape(first):
            raise ValueError(f"cannot stack {m.name} with {first.name}: different shapes")
        if first_weights is not None and not np.array_equal(
                np.asarray(m.input_layer.feature_weights), np.asarray(first_weights)):
            raise ValueError(f"cannot stack {m.name} with {first.name}: different feature "
                             f"weights (trained on different data?)")
    reps = [r for m in models for r in m.repetitions]
    seeds = [s for m in models for s in m.seeds]
    out = _like(first, reps, seeds, _stacked_encoders(models))
    # Concatenate blocks directly: one assign per variable, not per repetition.
    out.input_layer.set_kernel_blocks(
        [block for m in models for block in m.input_layer.kernel_blocks()])
    out.input_layer.bias.assign(
        np.concatenate([np.asarray(m.input_layer.bias) for m in models], axis=0))
    for i, layer in enumerate(out.dense_layers):
        srcs = [m.dense_layers[i] for m in models]
        layer.kernel.assign(np.concatenate([np.asarray(s.kernel) for s in srcs], axis=0))
        layer.bias.assign(np.concatenate([np.asarray(s.bias) for s in srcs], axis=0))
    return out


#: Added to every class's label count before the bucket frequencies are taken (so a class
#: never seen in training still counts a little).
PRIOR_SMOOTHING = 0.5


def bucket_shares(config: MachConfig, label_counts) -> np.ndarray:
    """``[R, B]`` float64: ``Pi_r(b)``, the share of the training labels (counts smoothed by
    :data:`PRIOR_SMOOTHING`) whose class falls in bucket ``b`` of repetition ``r``; a
    bucket that holds no class has share 0.

    Raises:
        ValueError: for counts of another number of classes than the config's.
    """
    counts = np.asarray(label_counts, np.float64)
    if counts.shape != (config.num_classes,):
        raise ValueError(f"label counts for {counts.shape[0]} classes, the config has "
                         f"{config.num_classes}")
    share = (counts + PRIOR_SMOOTHING) / (counts.sum() + PRIOR_SMOOTHING * counts.size)
    table = config.hash_family.table(config.num_classes)
    return np.stack([np.bincount(row, weights=share, minlength=config.num_buckets)
                     for row in table])


def bucket_prior(config: MachConfig, label_counts) -> np.ndarray | None:
    """``[R, B]`` float32: ``-popularity_penalty * log Pi_r(b)`` (:func:`bucket_shares`);
    ``None`` when the penalty is 0 or the counts are unknown."""
    if not config.popularity_penalty or label_counts is None:
        return None
    freq = bucket_shares(config, label_counts)
    return (-config.popularity_penalty * np.log(np.maximum(freq, 1e-30))).astype(np.float32)


#: A bucket that holds no class starts with the bias of a share this many times smaller
#: than a uniform bucket's (``1 / B``): far below every real bucket, and finite.
EMPTY_BUCKET_SHARE = 0.01


def initial_output_bias(config: MachConfig, label_counts, num_examples: int) -> np.ndarray:
    """``[R, B]`` float32: the output bias an input-free network would learn, where
    ``config.output_bias_init == "log_prior"`` starts training.

    With the softmax loss the target of an example is its labels' buckets as a
    distribution, and the bias-only optimum is the log of each bucket's share of the
    labels, ``log Pi_r(b)`` (:func:`bucket_shares`). With the sigmoid loss it is the log-odds
    of a bucket holding at least one of an example's labels, ``1 - (1 - Pi_r(b))^L`` with
    ``L`` the mean number of labels per example. A bucket that holds no class takes
    :data:`EMPTY_BUCKET_SHARE` ``/ B``.

    Args:
        config: The run's config.
        label_counts: ``[K]`` training frequency of every label.
        num_examples: The number of training examples the counts come from.
    """
    floor = EMPTY_BUCKET_SHARE / config.num_buckets
    share = np.maximum(bucket_shares(config, label_counts), floor)
    if config.loss == "softmax":
        return np.log(share).astype(np.float32)
    per_example = float(np.sum(label_counts)) / max(1, int(num_examples))
    hit = np.clip(-np.expm1(max(per_example, 1e-12) * np.log1p(-np.minimum(share, 1.0 - 1e-12))),
                  floor, 1.0 - floor)
    return (np.log(hit) - np.log1p(-hit)).astype(np.float32)


def add_bucket_prior(model: MachModel, prior: np.ndarray) -> None:
    """Adds each repetition's row of :func:`bucket_prior` to its output bias. With the
    softmax loss and the ``logprob`` merge this adds the row to the bucket scores, up to a
    constant per example and repetition that does not change any ranking."""
    layer = model.output_layer if model.output_layer is not None else model.input_layer
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
