"""Training metrics of a group: bucket accuracy and each repetition's own loss (and the
same per repetition of a validation batch, :func:`repetition_batch_stats`).

Both read the step's logits through the loss's :class:`~mach_tf.model.losses.StepCache`,
so a group's loss and metrics compute one log-sum-exp and one arg-max per step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from mach_tf.model.losses import bucket_loss, cached, repetition_losses


@keras.saving.register_keras_serializable(package="mach_tf")
class BucketAccuracy(keras.metrics.Metric):
    """Share of labelled examples whose top bucket is one of their label buckets.

    Args:
        index: Group position of the repetition to measure; ``None`` averages over all.
    """

    def __init__(self, index=None, name="bucket_acc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.index = index
        self.step_cache = None  # set by compile_model
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        def per_repetition():  # hit and has-a-label flags [batch, G], all repetitions
            labels = tf.cast(y_true, tf.int32)
            top = tf.argmax(y_pred, axis=-1, output_type=tf.int32)[..., None]
            return (tf.reduce_any(tf.equal(labels, top), axis=-1),
                    tf.reduce_any(labels >= 0, axis=-1))

        hit, has = cached(self.step_cache, y_pred, "hits", per_repetition)
        if self.index is not None:
            hit, has = hit[:, self.index], has[:, self.index]
        self.hits.assign_add(tf.reduce_sum(tf.cast(hit & has, tf.float32)))
        self.total.assign_add(tf.reduce_sum(tf.cast(has, tf.float32)))

    def result(self):
        return tf.math.divide_no_nan(self.hits, self.total)

    def reset_state(self):
        self.hits.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update(index=self.index)
        return config


@keras.saving.register_keras_serializable(package="mach_tf")
class RepetitionLoss(keras.metrics.Mean):
    """Mean bucket loss of one repetition of a group (the compiled loss sums them all),
    so TensorBoard can show each repetition's training loss.

    Args:
        index: Group position of the repetition.
        kind: The loss kind (``config.loss``).
    """

    def __init__(self, index=0, kind="softmax", name="rep_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.index = index
        self.kind = kind
        self.step_cache = None  # set by compile_model: the loss's own values are reused

    def update_state(self, y_true, y_pred, sample_weight=None):
        g = self.index
        if self.step_cache is None:
            per = bucket_loss(y_true[:, g:g + 1], y_pred[:, g:g + 1], self.kind)
        else:
            per = self.step_cache.get(y_pred, "loss", lambda: repetition_losses(
                y_true, y_pred, self.kind))[:, g]
        return super().update_state(per, sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(index=self.index, kind=self.kind)
        return config


def repetition_batch_stats(logits, targets, loss: str):
    """``(loss sum [G], hits [G], labelled [G])`` of a batch: each repetition's summed
    training loss (:func:`~mach_tf.model.losses.bucket_loss`), its points whose top bucket
    holds a label, and its points with a label.

    Args:
        logits: ``[batch, G, B]``.
        targets: int32 ``[batch, G, L]`` label buckets, -1 padded.
        loss: The config's loss.
    """
    groups = logits.shape[1]
    losses = tf.stack([tf.reduce_sum(bucket_loss(targets[:, g:g + 1], logits[:, g:g + 1],
                                                 loss)) for g in range(groups)])
    top = tf.argmax(logits, axis=-1, output_type=tf.int32)[..., None]  # [batch, G, 1]
    has = tf.reduce_any(targets >= 0, axis=-1)
    hit = tf.reduce_any(tf.equal(targets, top), axis=-1) & has
    return (losses, tf.reduce_sum(tf.cast(hit, tf.float32), axis=0),
            tf.reduce_sum(tf.cast(has, tf.float32), axis=0))
