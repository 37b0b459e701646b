"""In-Python merged top-k over a run's repetitions stacked in one model (evaluation and
the checks of the demo and export)."""

from __future__ import annotations

import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.inference.decoder import DEFAULT_CANDIDATE_BUCKETS, MergedTopK
from mach_tf.model.network import MachModel, bucket_scores


class MergedScorer:
    """In-Python merged top-k over a model holding all R repetitions.

    Args:
        config: The run's :class:`~mach_tf.config.MachConfig`.
        model: A :class:`~mach_tf.model.MachModel` holding repetitions ``0..R-1`` in order.
        decoder: ``"exact"``, ``"candidates"`` or ``"auto"``.
        candidate_buckets: m, buckets per repetition for candidate decoding.
        excluded_classes: Class ids never returned (see :class:`MergedTopK`).
    """

    def __init__(self, config: MachConfig, model: MachModel, decoder: str = "auto",
                 candidate_buckets: int = DEFAULT_CANDIDATE_BUCKETS, excluded_classes=()):
        if list(model.repetitions) != list(range(config.num_repetitions)):
            raise ValueError(f"model holds repetitions {model.repetitions}, expected "
                             f"0..{config.num_repetitions - 1}")
        self.config = config
        self.model = model
        self.topk_layer = MergedTopK(config.num_classes, config.hashing, decoder=decoder,
                                     candidate_buckets=candidate_buckets,
                                     excluded_classes=excluded_classes)
        self.decoder = self.topk_layer.decoder

    def bucket_scores(self, inputs):
        logits = self.model(inputs, training=False)
        return bucket_scores(logits, self.config.loss, self.config.merge)

    def topk(self, inputs, k: int):
        """``(scores [batch, k], class_ids [batch, k])`` for padded sparse ``inputs``."""
        return self._topk_fn(inputs, k)

    @tf.function(reduce_retracing=True, autograph=False)
    def _topk_fn(self, inputs, k):
        return self.topk_layer(self.bucket_scores(inputs), k=k)

    def eval_batch_size(self, default: int = 256) -> int:
        """A batch size whose ``[batch, K]`` exact scores stay near 256 MB."""
        if self.decoder != "exact":
            return default
        return int(max(1, min(default, (64 << 20) // max(self.config.num_classes, 1))))
