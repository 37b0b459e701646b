"""MACH as a Keras model: any encoder, a :class:`~mach_tf.layers.MachHead`, and the merged
top-k over all K classes (every Keras backend).

    encoder = keras.Sequential([keras.Input((32,)), keras.layers.Dense(128, "relu")])
    model = mach_tf.MachClassifier(encoder, num_classes=200)
    model.compile()                      # Adam, MachLoss
    model.fit(x, y, epochs=5)            # y: int [n, max_labels] class ids padded with -1
    ids, scores = model.predict_topk(x_test, k=5)

B defaults from K as ``mach-tf train`` picks it (:func:`mach_tf.config.default_buckets`),
R from K and B so that the head holds at most a fifth of a full softmax's outputs
(:func:`mach_tf.config.default_head_repetitions`), and the hash family is the one a run
directory with the same seed persists.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from mach_tf.config import default_buckets, default_head_repetitions
from mach_tf.layers import MachHead, bucket_table, merged_topk
from mach_tf.losses import MachLoss
from mach_tf.metrics import MergedPrecisionAtK


@keras.saving.register_keras_serializable(package="mach_tf")
class MachClassifier(keras.Model):
    """An encoder followed by R independent bucket classifiers, trained on class ids.

    Args:
        encoder: Any Keras model or layer mapping the inputs to ``[batch, d]``.
        num_classes: K.
        num_buckets: B; by default :func:`mach_tf.config.default_buckets` of K.
        num_repetitions: R; by default :func:`mach_tf.config.default_head_repetitions` of
            K and B (``R * B <= K / 5``, at least 4).
        hidden_units: Hidden widths of every repetition's classifier (see
            :class:`MachHead`).
        dropout: Dropout after each hidden layer of the head.
        seed: Seeds the hash family and the head's initialisation.

    Calling the model returns the bucket logits ``[batch, R, B]``; :meth:`predict_topk`
    returns the merged top k classes.
    """

    def __init__(self, encoder, num_classes: int, num_buckets: int | None = None,
                 num_repetitions: int | None = None, hidden_units: Sequence[int] = (),
                 dropout: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_classes = int(num_classes)
        self.num_buckets = int(num_buckets or default_buckets(self.num_classes))
        self.num_repetitions = int(num_repetitions or default_head_repetitions(
            self.num_classes, self.num_buckets))
        self.hidden_units = [int(h) for h in hidden_units]
        self.dropout = float(dropout)
        self.seed = int(seed)
        self.head = MachHead(self.num_buckets, self.num_repetitions, self.hidden_units,
                             self.dropout, self.seed, name="mach_head")
        # Recomputed from the seed, never saved: HashFamily.from_seed is pinned by a
        # golden-value test, so a loaded model hashes as the one that was saved.
        self.table = bucket_table(self.num_classes, self.num_buckets, self.num_repetitions,
                                  self.seed)

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build(input_shape)
        self.head.build(self.encoder.compute_output_shape(input_shape))
        self.built = True

    def call(self, inputs, training=None):
        return self.head(self.encoder(inputs, training=training), training=training)

    def _mach_args(self) -> dict:
        return {"num_classes": self.num_classes, "num_buckets": self.num_buckets,
                "num_repetitions": self.num_repetitions, "seed": self.seed}

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Keras' ``compile`` with MACH's defaults: ``loss=None`` is :class:`MachLoss`.

        No metric by default: a merged metric ranks all K classes at every step, which at
        K = 100,000 makes a training step about 6 times slower (benchmarks/RESULTS.md).
        Pass ``metrics=self.merged_metrics(1, 5)`` (or :class:`MergedPrecisionAtK` /
        :class:`~mach_tf.metrics.MergedNDCGAtK` objects) to track them anyway.
        """
        if loss is None:
            loss = MachLoss(**self._mach_args())
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def merged_metrics(self, *ks: int) -> list:
        """``MergedPrecisionAtK(k)`` for each of ``ks`` (default 1), for this model's K, B, R
        and seed: ``model.compile(metrics=model.merged_metrics(1, 5))``."""
        return [MergedPrecisionAtK(k, **self._mach_args()) for k in (ks or (1,))]

    def compile_from_config(self, config):
        # What Keras does for models whose compile() is its own (it skips, and warns, for
        # any override): compile as saved, then make the optimizer's variables so that
        # loading restores its state.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def predict_topk(self, x, k: int = 5, batch_size: int = 256):
        """The k best classes of every example by merged score.

        Args:
            x: Inputs as for ``predict``: arrays (or a dict or list of them), or a
                ``tf.data.Dataset`` of input batches (or of ``(inputs, targets)``).
            k: How many classes per example; beyond K, padded with id -1 and score -inf.
            batch_size: Examples per step for array inputs.

        Returns:
            ``(label_ids int64 [n, k], scores float32 [n, k])``, best first.
        """
        ids, scores = [], []
        for batch in _batches(x, batch_size):
            logits = self.predict_on_batch(batch)
            s, i = merged_topk(logits, self.table, k)
            ids.append(keras.ops.convert_to_numpy(i).astype(np.int64))
            scores.append(keras.ops.convert_to_numpy(s).astype(np.float32))
        if not ids:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return np.concatenate(ids), np.concatenate(scores)

    def get_config(self):
        config = super().get_config()
        config.update(encoder=keras.saving.serialize_keras_object(self.encoder),
                      hidden_units=list(self.hidden_units), dropout=self.dropout,
                      **self._mach_args())
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(
            config["encoder"], custom_objects=custom_objects)
        return cls(**config)


def _batches(x, batch_size: int):
    """Input batches of arrays (or a dict or list of them), sliced; or of a dataset, the
    inputs of each of its elements."""
    if hasattr(x, "element_spec"):  # a tf.data.Dataset, without importing TensorFlow
        for element in x:
            yield element[0] if isinstance(element, tuple) else element
        return
    x = keras.tree.map_structure(np.asarray, x)
    n = len(keras.tree.flatten(x)[0])
    for start in range(0, n, batch_size):
        yield keras.tree.map_structure(lambda a: a[start:start + batch_size], x)
