"""Keras 3 layers of the per-repetition networks.

A *group* of G repetitions shares one layer object but never shares weights: the sparse
input layer's kernel is ``[D, G * H]``, whose column block ``g`` is repetition ``g``'s own
input layer (one gather of a row serves all G), and every later layer holds a
``[G, in, out]`` kernel applied with one batched matmul. Repetition ``g``'s outputs depend
only on its own blocks, so training G repetitions together computes exactly the gradients
that training each alone would.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def _block_init(initializer, seeds, block_shape, axis):
    """An initializer that draws each repetition's block with its own seed.

    Seeding per repetition (not per group) makes a repetition's initial weights the same
    whichever group it is trained in.
    """
    def init(shape, dtype=None):
        blocks = []
        for s in seeds:
            cfg = keras.initializers.serialize(keras.initializers.get(initializer))
            if "seed" in cfg.get("config", {}):
                cfg["config"]["seed"] = int(s)
            blocks.append(keras.initializers.deserialize(cfg)(block_shape, dtype=dtype))
        return keras.ops.concatenate(blocks, axis=axis) if axis is not None else \
            keras.ops.stack(blocks, axis=0)
    return init


def sparse_to_flat(feature_ids, feature_values):
    """Flattens padded sparse inputs to ``(rows, ids, values)`` over the real entries.

    ``feature_ids`` is int ``[batch, n]`` padded with -1; entries with id < 0 are padding.
    """
    ids = tf.cast(feature_ids, tf.int64)
    mask = ids >= 0
    where = tf.where(mask)
    rows = where[:, 0]
    return rows, tf.gather_nd(ids, where), tf.gather_nd(
        tf.cast(feature_values, tf.float32), where)


@keras.saving.register_keras_serializable(package="mach_tf")
class SparseDense(keras.layers.Layer):
    """Dense layer over a padded sparse input: ``y = act(x W + b)`` with x sparse.

    Inputs are ``(feature_ids, feature_values)``, both ``[batch, n]``, ids padded with -1.
    The product is a gather of the rows of W named by the ids, scaled by the values and
    summed per example, so its cost follows the non-zeros, not D. With ``normalize="l2"``
    each example's values are first scaled to unit L2 norm.

    Args:
        input_dim: D, the number of features.
        units: Output width per repetition (H).
        groups: Repetitions sharing this layer object (G); the output is ``[batch, G, H]``.
        activation: Activation after the bias.
        normalize: ``"l2"`` or ``"none"``.
        seeds: One initialisation seed per repetition.
        kernel_initializer: Initializer of each ``[D, H]`` block.
    """

    def __init__(self, input_dim, units, groups=1, activation="relu", normalize="l2",
                 seeds=None, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.units = int(units)
        self.groups = int(groups)
        self.activation = keras.activations.get(activation)
        self.normalize = normalize
        self.seeds = [int(s) for s in (seeds if seeds is not None else range(self.groups))]
        self.kernel_initializer = keras.initializers.serialize(
            keras.initializers.get(kernel_initializer))
        if len(self.seeds) != self.groups:
            raise ValueError(f"SparseDense: {len(self.seeds)} seeds for {self.groups} groups")

    def build(self, input_shape=None):
        self.kernel = self.add_weight(
            name="kernel", shape=(self.input_dim, self.groups * self.units),
            initializer=_block_init(self.kernel_initializer, self.seeds,
                                    (self.input_dim, self.units), axis=1))
        self.bias = self.add_weight(name="bias", shape=(self.groups * self.units,),
                                    initializer="zeros")
        self.built = True

    def call(self, feature_ids, feature_values):
        batch = tf.shape(feature_ids)[0]
        rows, ids, values = sparse_to_flat(feature_ids, feature_values)
        if self.normalize == "l2":
            # Dividing by the row's largest |value| first keeps the sum of squares finite
            # and non-zero for any finite float32 input: plainly squared, 1e20 overflows
            # (the row would silently become all zeros) and 1e-25 underflows.
            peak = tf.math.unsorted_segment_max(tf.abs(values), rows, batch)
            values = values / tf.gather(tf.where(peak > 0, peak, tf.ones_like(peak)), rows)
            sq = tf.math.unsorted_segment_sum(tf.square(values), rows, batch)
            values = values * tf.gather(tf.math.rsqrt(tf.maximum(sq, 1e-12)), rows)
        emb = tf.gather(self.kernel, ids) * values[:, None]
        out = tf.math.unsorted_segment_sum(emb, rows, batch) + self.bias
        out = tf.reshape(self.activation(out), [batch, self.groups, self.units])
        return out

    def compute_output_shape(self, ids_shape, values_shape=None):
        return (ids_shape[0], self.groups, self.units)

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, units=self.units, groups=self.groups,
                      activation=keras.activations.serialize(self.activation),
                      normalize=self.normalize, seeds=self.seeds,
                      kernel_initializer=self.kernel_initializer)
        return config

    def block(self, g):
        """Repetition ``g``'s weights ``(kernel [D, H], bias [H])`` as numpy arrays."""
        sl = slice(g * self.units, (g + 1) * self.units)
        return np.asarray(self.kernel)[:, sl], np.asarray(self.bias)[sl]


@keras.saving.register_keras_serializable(package="mach_tf")
class GroupedDense(keras.layers.Layer):
    """G independent dense layers applied as one batched matmul.

    Input ``[batch, G, in]``, output ``[batch, G, units]``; kernel ``[G, in, units]``.

    Args:
        units: Output width.
        groups: G.
        activation: Activation (``None`` for logits).
        seeds: One initialisation seed per repetition.
        kernel_initializer: Initializer of each ``[in, units]`` block.
    """

    def __init__(self, units, groups=1, activation=None, seeds=None,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.groups = int(groups)
        self.activation = keras.activations.get(activation)
        self.seeds = [int(s) for s in (seeds if seeds is not None else range(self.groups))]
        self.kernel_initializer = keras.initializers.serialize(
            keras.initializers.get(kernel_initializer))
        if len(self.seeds) != self.groups:
            raise ValueError(f"GroupedDense: {len(self.seeds)} seeds for {self.groups} groups")

    def build(self, input_shape):
        in_dim = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel", shape=(self.groups, in_dim, self.units),
            initializer=_block_init(self.kernel_initializer, self.seeds,
                                    (in_dim, self.units), axis=None))
        self.bias = self.add_weight(name="bias", shape=(self.groups, self.units),
                                    initializer="zeros")
        self.built = True

    def call(self, x):
        if self.groups == 1:
            y = tf.matmul(x[:, 0, :], self.kernel[0])[:, None, :]
        else:
            # [G, batch, in] x [G, in, out] -> [G, batch, out]: one batched GEMM.
            y = tf.transpose(tf.matmul(tf.transpose(x, [1, 0, 2]), self.kernel), [1, 0, 2])
        return self.activation(y + self.bias)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.groups, self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, groups=self.groups,
                      activation=keras.activations.serialize(self.activation),
                      seeds=self.seeds, kernel_initializer=self.kernel_initializer)
        return config

    def block(self, g):
        return np.asarray(self.kernel)[g], np.asarray(self.bias)[g]
