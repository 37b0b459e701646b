"""Keras 3 layers of the per-repetition networks.

A *group* of G repetitions shares one layer object but never shares weights: the input
layer's kernel is ``[D, G * H]``, whose column block ``g`` is repetition ``g``'s own input
layer (one GEMM serves all G; the gathered sparse input keeps each block in its own
variable, see :class:`SparseDense`), and every later layer holds a ``[G, in, out]`` kernel
applied with one batched matmul. Repetition ``g``'s outputs depend
only on its own blocks, so training G repetitions together computes exactly the gradients
that training each alone would.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

#: Up to this many features the sparse input is scattered into a dense ``[batch, D]`` matrix
#: and multiplied with one GEMM; above it the kernel rows of the non-zeros are gathered (the
#: GEMM's cost grows with D, the gather's with the non-zeros). Measured on 2 CPU cores, the
#: GEMM is faster up to D of about 100x the non-zeros per example (benchmarks/RESULTS.md).
DENSE_INPUT_MAX_FEATURES = 8192
#: The attribute that marks a kernel whose gradient arrives as rows (``tf.IndexedSlices``):
#: the gathered input kernel above ``DENSE_INPUT_MAX_FEATURES``. Optimizers that know it
#: may keep per-row state for it (:class:`mach_tf.model.optimizers.SparseAdam`).
ROW_SPARSE = "mach_row_sparse"


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


class _RepetitionBlocks:
    """Repetition ``g``'s ``[D, H]`` input kernel and ``[H]`` bias, whether the layer holds
    one ``[D, G * H]`` kernel (column block ``g``) or one ``[D, H]`` variable per
    repetition (``_kernel_variables()`` lists the layer's kernel variables)."""

    def _per_repetition(self) -> bool:
        return len(self._kernel_variables()) == self.groups

    def block(self, g):
        """Repetition ``g``'s weights ``(kernel [D, H], bias [H])`` as numpy arrays."""
        sl = slice(g * self.units, (g + 1) * self.units)
        kernels = self._kernel_variables()
        kernel = np.asarray(kernels[g]) if self._per_repetition() else \
            np.asarray(kernels[0])[:, sl]
        return kernel, np.asarray(self.bias)[sl]

    def set_block(self, g, kernel, bias) -> None:
        """Sets repetition ``g``'s weights (``kernel [D, H]``, ``bias [H]``)."""
        sl = slice(g * self.units, (g + 1) * self.units)
        if self._per_repetition():
            self._kernel_variables()[g].assign(kernel)
        else:
            _assign_columns(self._kernel_variables()[0], sl, kernel)
        _assign_columns(self.bias, sl, bias)

    def kernel_blocks(self) -> list[np.ndarray]:
        """Every repetition's ``[D, H]`` kernel, in the group's order."""
        kernels = self._kernel_variables()
        if self._per_repetition():
            return [np.asarray(kernel) for kernel in kernels]
        return np.split(np.asarray(kernels[0]), self.groups, axis=1)

    def set_kernel_blocks(self, blocks) -> None:
        """Sets every repetition's ``[D, H]`` kernel (one assign per variable)."""
        kernels = self._kernel_variables()
        if self._per_repetition():
            for kernel, value in zip(kernels, blocks, strict=True):
                kernel.assign(value)
        else:
            kernels[0].assign(np.concatenate(list(blocks), axis=1))


def _assign_columns(variable, columns: slice, value) -> None:
    """Assigns ``value`` to ``variable[..., columns]`` (a read, a numpy write, an assign)."""
    whole = np.array(variable)
    whole[..., columns] = value
    variable.assign(whole)


@keras.saving.register_keras_serializable(package="mach_tf")
class SparseDense(_RepetitionBlocks, keras.layers.Layer):
    """Dense layer over a padded sparse input: ``y = act(x W + b)`` with x sparse.

    Inputs are ``(feature_ids, feature_values)``, both ``[batch, n]``, ids padded with -1.
    Up to ``DENSE_INPUT_MAX_FEATURES`` features the input is scattered into a dense
    ``[batch, D]`` matrix and multiplied with one GEMM; above, the rows of W named by the
    ids are gathered, scaled by the values and summed per example, so the cost follows the
    non-zeros, not D. The gathered kernel is held as G variables of ``[D, H]``, one per
    repetition: a step's gathered rows, their gradient and their optimizer update are then
    ``[non-zeros, H]`` blocks, not ``[non-zeros, G * H]``, and stay in the CPU's caches
    (at the tagging shape, G = 4 and H = 512 on an AVX2 CPU, a training step took 255 ms
    against 316 ms with one ``[D, G * H]`` kernel; benchmarks/RESULTS.md). With
    ``weighting="idf"`` each value is first multiplied by its feature's weight (a
    non-trainable ``[D]`` variable set from the training data with
    :meth:`set_feature_weights`, saved with the layer); with ``normalize="l2"`` each
    example's values are then scaled to unit L2 norm.

    Args:
        input_dim: D, the number of features.
        units: Output width per repetition (H).
        groups: Repetitions sharing this layer object (G); the output is ``[batch, G, H]``.
        activation: Activation after the bias.
        normalize: ``"l2"`` or ``"none"``.
        seeds: One initialisation seed per repetition.
        kernel_initializer: Initializer of each ``[D, H]`` block.
        weighting: ``"idf"`` (per-feature weights, all 1 until set) or ``"none"``.
    """

    def __init__(self, input_dim, units, groups=1, activation="relu", normalize="l2",
                 seeds=None, kernel_initializer="glorot_uniform", weighting="none", **kwargs):
        # Casts are explicit (see ``call``): the values are normalised in float32 and the
        # gathered path reads float32 rows, never a bfloat16 copy of the whole kernel.
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.units = int(units)
        self.groups = int(groups)
        self.activation = keras.activations.get(activation)
        self.normalize = normalize
        self.weighting = weighting
        if weighting not in ("none", "idf"):
            raise ValueError(f"SparseDense: weighting must be 'none' or 'idf', got {weighting!r}")
        self.seeds = [int(s) for s in (seeds if seeds is not None else range(self.groups))]
        self.kernel_initializer = keras.initializers.serialize(
            keras.initializers.get(kernel_initializer))
        if len(self.seeds) != self.groups:
            raise ValueError(f"SparseDense: {len(self.seeds)} seeds for {self.groups} groups")

    @property
    def gathered(self) -> bool:
        """Whether the kernel's rows are gathered (D above ``DENSE_INPUT_MAX_FEATURES``)."""
        return self.input_dim > DENSE_INPUT_MAX_FEATURES

    def build(self, input_shape=None):
        if self.gathered:
            # One [D, H] variable per repetition (class docstring), each marked so that
            # the optimizer updates only its touched rows.
            self.kernels = [self.add_weight(
                name="kernel" if self.groups == 1 else f"kernel_{g}",
                shape=(self.input_dim, self.units),
                initializer=_block_init(self.kernel_initializer, [seed],
                                        (self.input_dim, self.units), axis=1))
                for g, seed in enumerate(self.seeds)]
            for kernel in self.kernels:
                setattr(kernel, ROW_SPARSE, True)
        else:
            self.kernels = [self.add_weight(
                name="kernel", shape=(self.input_dim, self.groups * self.units),
                initializer=_block_init(self.kernel_initializer, self.seeds,
                                        (self.input_dim, self.units), axis=1))]
        self.bias = self.add_weight(name="bias", shape=(self.groups * self.units,),
                                    initializer="zeros")
        self.feature_weights = None
        if self.weighting != "none":
            self.feature_weights = self.add_weight(
                name="feature_weights", shape=(self.input_dim,), initializer="ones",
                trainable=False)
        self.built = True

    def set_feature_weights(self, weights) -> None:
        """Sets the per-feature weights (``weighting="idf"``), e.g. from
        :func:`mach_tf.training.feature_weights.idf_weights`.

        Raises:
            ValueError: for a layer without weighting, or weights of the wrong shape.
        """
        if self.feature_weights is None:
            raise ValueError(f"{self.name}: weighting='none' has no feature weights")
        weights = np.asarray(weights, np.float32)
        if weights.shape != (self.input_dim,):
            raise ValueError(f"{self.name}: feature weights of shape {weights.shape}, "
                             f"expected ({self.input_dim},)")
        self.feature_weights.assign(weights)

    def call(self, feature_ids, feature_values):
        batch = tf.shape(feature_ids)[0]
        compute = self.compute_dtype
        rows, ids, values = sparse_to_flat(feature_ids, feature_values)
        if self.feature_weights is not None:
            values = values * tf.gather(tf.convert_to_tensor(self.feature_weights), ids)
        if self.normalize == "l2":
            # Dividing by the row's largest |value| first keeps the sum of squares finite
            # and non-zero for any finite float32 input: plainly squared, 1e20 overflows
            # (the row would silently become all zeros) and 1e-25 underflows.
            peak = tf.math.unsorted_segment_max(tf.abs(values), rows, batch)
            values = values / tf.gather(tf.where(peak > 0, peak, tf.ones_like(peak)), rows)
            sq = tf.math.unsorted_segment_sum(tf.square(values), rows, batch)
            values = values * tf.gather(tf.math.rsqrt(tf.maximum(sq, 1e-12)), rows)
        if not self.gathered:
            # Small D: one dense [batch, D] x [D, G*H] GEMM beats gathering nnz rows of G*H
            # (5x on bibtex's D=1836); the kernel's Adam update is dense either way.
            x = tf.scatter_nd(tf.stack([rows, ids], axis=1), values,
                              tf.stack([tf.cast(batch, tf.int64), self.input_dim]))
            kernel = tf.convert_to_tensor(self.kernels[0])
            if compute != "float32":  # mixed precision: the GEMM in bfloat16
                x, kernel = tf.cast(x, compute), tf.cast(kernel, compute)
            out = tf.matmul(x, kernel) + tf.cast(self.bias, compute)
        else:
            # The tf.Variable itself, so the rows are read by a ResourceGather: reading a
            # variable the optimizer scatters into as a tensor copies all D * H weights
            # every step (28 of a 116 ms step at the tagging shape, D = 20,000, G * H = 2,048).
            # tf.where lists the non-zeros row by row, so the rows are sorted: the sorted
            # segment sum is 2-3x faster than the unsorted one on CPU (forward and
            # gradient). It stops at the last row with a non-zero: pad to the batch.
            weights = values[:, None]
            parts = [tf.math.segment_sum(tf.gather(kernel.value, ids) * weights, rows)
                     for kernel in self.kernels]
            summed = parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
            summed = tf.pad(summed, [[0, tf.cast(batch, tf.int64)
                                      - tf.shape(summed, out_type=tf.int64)[0]], [0, 0]])
            out = tf.cast(summed + self.bias, compute)
        out = tf.reshape(self.activation(out), [batch, self.groups, self.units])
        return out

    def compute_output_shape(self, feature_ids_shape, feature_values_shape=None):
        return (feature_ids_shape[0], self.groups, self.units)

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, units=self.units, groups=self.groups,
                      activation=keras.activations.serialize(self.activation),
                      normalize=self.normalize, seeds=self.seeds,
                      kernel_initializer=self.kernel_initializer, weighting=self.weighting)
        return config

    def _kernel_variables(self) -> list:
        return self.kernels


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


@keras.saving.register_keras_serializable(package="mach_tf")
class DenseInput(_RepetitionBlocks, keras.layers.Layer):
    """The first layer of G repetitions over a dense input: ``y_g = act(x_g W_g + b_g)``.

    The kernel is ``[d, G * H]`` (column block ``g`` is repetition ``g``'s), as
    :class:`SparseDense`'s GEMM path; both give and set repetition ``g``'s block the same
    way, so a group is split and stacked the same way. The input is
    ``[batch, d]``, read by every repetition (one GEMM serves all G), or ``[batch, G, d]``,
    one vector per repetition (each repetition's own encoder output). With
    ``normalize="l2"`` each vector is first scaled to unit L2 norm.

    Args:
        input_dim: d.
        units: Output width per repetition (H); the output is ``[batch, G, H]``.
        groups: G.
        activation: Activation after the bias.
        normalize: ``"l2"`` or ``"none"``.
        seeds: One initialisation seed per repetition.
        kernel_initializer: Initializer of each ``[d, H]`` block.
    """

    def __init__(self, input_dim, units, groups=1, activation="relu", normalize="none",
                 seeds=None, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.units = int(units)
        self.groups = int(groups)
        self.activation = keras.activations.get(activation)
        if normalize not in ("none", "l2"):
            raise ValueError(f"DenseInput: normalize must be 'none' or 'l2', got {normalize!r}")
        self.normalize = normalize
        self.seeds = [int(s) for s in (seeds if seeds is not None else range(self.groups))]
        self.kernel_initializer = keras.initializers.serialize(
            keras.initializers.get(kernel_initializer))
        if len(self.seeds) != self.groups:
            raise ValueError(f"DenseInput: {len(self.seeds)} seeds for {self.groups} groups")

    def build(self, input_shape=None):
        self.kernel = self.add_weight(
            name="kernel", shape=(self.input_dim, self.groups * self.units),
            initializer=_block_init(self.kernel_initializer, self.seeds,
                                    (self.input_dim, self.units), axis=1))
        self.bias = self.add_weight(name="bias", shape=(self.groups * self.units,),
                                    initializer="zeros")
        self.built = True

    def call(self, x):
        x = tf.cast(x, self.compute_dtype)
        if self.normalize == "l2":
            x = tf.math.l2_normalize(x, axis=-1)
        kernel = tf.cast(self.kernel, self.compute_dtype)
        bias = tf.cast(self.bias, self.compute_dtype)
        if x.shape.rank == 2:
            out = tf.reshape(tf.matmul(x, kernel) + bias, [-1, self.groups, self.units])
        else:  # [batch, G, d] x [G, d, H]: one batched GEMM
            blocks = tf.transpose(tf.reshape(kernel, [self.input_dim, self.groups,
                                                      self.units]), [1, 0, 2])
            out = tf.transpose(tf.matmul(tf.transpose(x, [1, 0, 2]), blocks), [1, 0, 2])
            out = out + tf.reshape(bias, [self.groups, self.units])
        return self.activation(out)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.groups, self.units)

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, units=self.units, groups=self.groups,
                      activation=keras.activations.serialize(self.activation),
                      normalize=self.normalize, seeds=self.seeds,
                      kernel_initializer=self.kernel_initializer)
        return config

    def _kernel_variables(self) -> list:
        return [self.kernel]
