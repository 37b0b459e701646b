"""Optimizers sized for MACH's sparse input layers.

The gathered sparse input layer holds one ``[D, H]`` kernel per repetition, but a batch
touches only the rows of the features it contains; its gradient arrives as
``tf.IndexedSlices``. Keras' Adam turns that into a dense ``[D, H]`` update every step
(read and write the whole kernel and both moment slots), which dominates training time once
D reaches the 10^5..10^6 features of real catalogues. :class:`SparseAdam` updates only the
touched rows ("lazy" Adam: the moments of untouched rows are not decayed that step, as in
TF Addons' LazyAdam) and applies dense gradients with TensorFlow's fused
``ResourceApplyAdam`` kernel (one pass over memory instead of about seven). The touched
rows take the same fused kernel: gathered into three scratch variables, updated there in
one pass, and scattered back, instead of eleven elementwise passes over them (at the
tagging shape, rows of 2,048 floats, the input kernel's update took 35.5 ms against 45.0
and the training step 94.9 against 106.4 ms: benchmarks/RESULTS.md, "An epoch of the
default run").

Even lazy, Adam reads and writes three ``[rows, H]`` blocks per kernel and step (the
weights and both moments). With ``row_wise=True`` the gathered input kernel (marked
:data:`mach_tf.model.layers.ROW_SPARSE`) is updated by row-wise Adagrad instead, the rule
large embedding tables are trained with: one accumulator per feature row, the mean
squared gradient of the row added to it, and the row moved by
``lr * factor * g / sqrt(accumulator)``. One block is written instead of three, and a
kernel's optimizer state (and so its checkpoints) shrinks from ``2 * D * H`` numbers to
``D``; each repetition's kernel keeps its own accumulator, so a group trains each
repetition as it would be trained alone. Every other weight keeps Adam.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.model.layers import ROW_SPARSE

#: Keeps ``1 / sqrt(accumulator)`` finite for a row whose gradients were all zero.
_ROW_EPSILON = 1e-10


@keras.saving.register_keras_serializable(package="mach_tf")
class SparseAdam(keras.optimizers.Adam):
    """Adam with lazy sparse updates and a fused dense update (TensorFlow backend).

    Same arguments and the same update as ``keras.optimizers.Adam`` (``amsgrad`` is not
    supported) except that for ``IndexedSlices`` gradients only the rows present in the
    gradient are updated.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 row_wise=False, row_wise_factor=10.0,
                 name="sparse_adam", **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("SparseAdam does not support amsgrad")
        kwargs.pop("amsgrad", None)
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=False, name=name, **kwargs)
        self.row_wise = bool(row_wise)
        self.row_wise_factor = float(row_wise_factor)

    def build(self, var_list):
        if self.built:
            return
        self._row_scratch = _RowScratch(_scratch(var) for var in var_list)
        if not self.row_wise:
            super().build(var_list)
            return
        super(keras.optimizers.Adam, self).build(var_list)  # the base optimizer's state
        self._momentums, self._velocities = [], []
        for var in var_list:
            if getattr(var, ROW_SPARSE, False):
                # One accumulator per row, kept where the momentum would be.
                self._momentums.append(self.add_variable(
                    (var.shape[0],), initializer="zeros", dtype=var.dtype,
                    name="row_accumulator"))
                self._velocities.append(None)
            else:
                self._momentums.append(self.add_variable_from_reference(var, "momentum"))
                self._velocities.append(self.add_variable_from_reference(var, "velocity"))

    def _row_wise_step(self, gradient, var, accumulator, learning_rate):
        dtype = var.dtype
        lr = tf.cast(learning_rate, dtype) * self.row_wise_factor
        acc = accumulator.value if isinstance(accumulator, keras.Variable) else accumulator
        if isinstance(gradient, tf.IndexedSlices):
            rows, g = _sum_rows(gradient, dtype)
            a = tf.gather(acc, rows) + tf.reduce_mean(tf.square(g), axis=1)
            acc.scatter_update(tf.IndexedSlices(a, rows))
            var.scatter_sub(tf.IndexedSlices(
                g * (lr * tf.math.rsqrt(a + _ROW_EPSILON))[:, None], rows))
            return
        g = tf.cast(gradient, dtype)
        acc.assign_add(tf.reduce_mean(tf.square(g), axis=1))
        var.assign_sub(g * (lr * tf.math.rsqrt(acc + _ROW_EPSILON))[:, None])

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        b1 = tf.cast(self.beta_1, dtype)
        b2 = tf.cast(self.beta_2, dtype)
        b1_power = tf.pow(b1, step)
        b2_power = tf.pow(b2, step)
        eps = tf.cast(self.epsilon, dtype)
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]
        var = variable.value if isinstance(variable, keras.Variable) else variable
        if v is None:  # a row-wise kernel (see build)
            self._row_wise_step(gradient, var, m, learning_rate)
            return
        state = (var, m.value if isinstance(m, keras.Variable) else m,
                 v.value if isinstance(v, keras.Variable) else v)

        def fused_adam(weights, momentum, velocity, grad):
            tf.raw_ops.ResourceApplyAdam(
                var=weights.handle, m=momentum.handle, v=velocity.handle,
                beta1_power=b1_power, beta2_power=b2_power, lr=lr, beta1=b1, beta2=b2,
                epsilon=eps, grad=grad, use_locking=False, use_nesterov=False)

        if not isinstance(gradient, tf.IndexedSlices):
            fused_adam(*state, tf.cast(gradient, dtype))
            return
        # Lazy Adam on the touched rows: the fused kernel on copies of those rows.
        rows, g = _sum_rows(gradient, dtype)
        scratch = self._row_scratch[index]
        for part, whole in zip(scratch, state):
            part.assign(tf.gather(whole, rows))
        fused_adam(*scratch, g)
        for part, whole in zip(scratch, state):
            whole.scatter_update(tf.IndexedSlices(part.read_value(), rows))
            part.assign(tf.zeros_like(part[:0]))  # hold no rows between steps

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad", None)
        config.update(row_wise=self.row_wise, row_wise_factor=self.row_wise_factor)
        return config


def _scratch(var) -> tuple:
    """Three empty variables shaped like rows of ``var`` (its weights, both moments) that
    the fused Adam kernel updates a step's touched rows in."""
    shape = tf.TensorShape([None]).concatenate(var.shape[1:])
    with tf.init_scope():  # built inside the first traced step, the variables outlive it
        empty = tf.zeros([0] + list(var.shape[1:]), var.dtype)
        return tuple(tf.Variable(empty, shape=shape, trainable=False, name=f"rows_{n}")
                     for n in ("weights", "momentum", "velocity"))


class _RowScratch:
    """Each variable's scratch rows (:func:`_scratch`, by variable index), held outside
    the optimizer's tracked and saved state: a plain object, so neither Keras' nor
    TensorFlow's tracking sees them."""

    def __init__(self, parts):
        self.parts = list(parts)

    def __getitem__(self, index):
        return self.parts[index]


def _sum_rows(gradient: tf.IndexedSlices, dtype) -> tuple[tf.Tensor, tf.Tensor]:
    """``(unique rows, their summed gradient rows)``: scatter ops must see each row once.

    Sorted first, the sum is a sorted segment sum: on 2 CPU cores at the tagging shape
    (5,120 ids, 3,094 unique, rows of 2,048) 16 ms against 26 ms for the unsorted sum, of
    a lazy Adam update of about 90 ms.
    """
    order = tf.argsort(gradient.indices, stable=True)
    rows, pos = tf.unique(tf.gather(gradient.indices, order))
    return rows, tf.math.segment_sum(tf.gather(tf.cast(gradient.values, dtype), order), pos)


def make_optimizer(config: MachConfig, steps_per_epoch: int | None = None):
    """The optimizer named by the config, with its learning-rate schedule.

    ``lr_schedule="cosine"`` decays the rate to 0 over ``epochs * steps_per_epoch`` steps
    (it needs ``steps_per_epoch``); ``"plateau"`` keeps a plain rate that
    :func:`mach_tf.training.callbacks.training_callbacks` lowers when the merged
    validation stalls.
    """
    lr = config.learning_rate
    if config.lr_schedule == "cosine":
        if not steps_per_epoch:
            raise ValueError("lr_schedule='cosine' needs steps_per_epoch")
        lr = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=int(steps_per_epoch * config.epochs))
    if config.optimizer in ("adam", "adam_rowwise"):
        # Same update as Keras' Adam, but a gathered input kernel's IndexedSlices gradient
        # updates only the batch's rows instead of the whole [D, H] kernel and its two
        # moment slots (lazy Adam; see docs/design.md); "adam_rowwise" updates those
        # kernels by row-wise Adagrad (module docstring).
        return SparseAdam(learning_rate=lr, row_wise=config.optimizer == "adam_rowwise",
                          row_wise_factor=config.row_wise_lr_factor)
    if config.optimizer == "adam_dense":
        return keras.optimizers.Adam(learning_rate=lr)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr)
    return keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
