"""The MACH configuration: one dataclass, persisted as the run's ``config.json``.

Everything that defines a trained MACH model lives here: the label space (K), the input
space (D), the hashing (B, R and the persisted hash coefficients), the per-repetition
network, the training settings, and for models of raw text the featuriser's settings
(:class:`TextSettings`, the config's ``text`` section). Training writes it once; export and
evaluation read it back and never recompute any of it another way. Free of TensorFlow, so
a config is read and validated cheaply.

Where a text run's adapted statistics live: the document frequencies are ``D`` integers
(65,536 by default, millions for large hash spaces), too many for ``config.json``, which
is read, compared field by field on every rerun and copied into every completion marker
and export info file. They are written once, beside it, as ``RUN/text_statistics.npy``
(int64 ``[D]``, loaded with ``allow_pickle=False``); the config records the file's name,
the number of documents and a SHA-256 of the counts, so a changed or swapped file is
refused and two runs adapted on different data never pass for the same config.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from mach_tf.hashing import MAX_CLASSES, HashFamily
from mach_tf.inputs import (DEFAULT_TEXT_FEATURES, INPUT_FORMATS, TEXT_OVERRIDES,  # noqa: F401
                            EncoderSettings, TextSettings)

FORMAT_VERSION = 1

LOSSES = ("softmax", "sigmoid")
MERGES = ("prob", "logprob")
OUTPUT_BIAS_INITS = ("zeros", "log_prior")
FEATURE_NORMS = ("none", "l2")
FEATURE_WEIGHTINGS = ("none", "idf")
OPTIMIZERS = ("adam", "adam_rowwise", "adam_dense", "adamw", "sgd")
LR_SCHEDULES = ("constant", "plateau", "cosine")
PRECISIONS = ("float32", "mixed_bfloat16")
#: Metrics the merged validation computes (cut-offs 1, 3, 5); any can drive early stopping.
VALIDATION_METRICS = ("p@1", "p@3", "p@5", "ndcg@1", "ndcg@3", "ndcg@5")


def _next_pow2(x: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1.0, x))))


def default_buckets(num_classes: int) -> int:
    """B from K: about ``8 * sqrt(K)`` rounded up to a power of two (K itself up to 32).

    The cost of a repetition's output layer grows with B while MACH's accuracy needs B large
    enough that few frequent classes share a bucket; ``O(sqrt K)`` buckets keep the output
    layers of all repetitions together far below K while each bucket holds ``O(sqrt K)``
    classes that the R repetitions separate (see docs/defaults.md).
    """
    if num_classes <= 32:
        return max(2, num_classes)
    return max(32, _next_pow2(8.0 * math.sqrt(num_classes)))


#: R up to :data:`MANY_CLASSES` classes. Each group of repetitions costs the same, and the
#: merge's gains flatten past about 8 repetitions: on the development splits of bibtex,
#: corel5k, delicious and a 50,000-class tagging-shaped set the first 12 repetitions of a
#: 16-repetition run scored within 0.005 of all 16 on P@1, P@3 and P@5, at three quarters
#: of the training (docs/defaults.md, "How many repetitions").
DEFAULT_REPETITIONS = 12
#: Beyond this many classes R drops to :data:`LARGE_K_REPETITIONS` (cost grows with R * B).
MANY_CLASSES = 100_000
LARGE_K_REPETITIONS = 8


def default_repetitions(num_classes: int) -> int:
    """R from K: 12 repetitions up to 100k classes, 8 beyond (cost grows with R * B)."""
    return DEFAULT_REPETITIONS if num_classes <= MANY_CLASSES else LARGE_K_REPETITIONS


#: A Keras head's bucket layers hold at most 1/HEAD_OUTPUT_SHARE of a full softmax's K
#: outputs (R * B <= K / 5), with at least :data:`MIN_HEAD_REPETITIONS` repetitions.
HEAD_OUTPUT_SHARE = 5
MIN_HEAD_REPETITIONS = 4


def default_head_repetitions(num_classes: int, num_buckets: int) -> int:
    """R of a MACH head on a dense encoder (:class:`mach_tf.MachClassifier`): that of
    :func:`default_repetitions`, cut so that the R bucket layers hold at most a fifth of a
    full softmax's outputs (``R * B <= K / 5``), at least :data:`MIN_HEAD_REPETITIONS`.

    On an encoder's output every repetition's layer costs ``B * d`` parameters (and
    ``B * d`` multiply-adds per example), against ``K * d`` for a softmax; at K = 100,000
    R = 4 of B = 4,096 buckets hold 6.1 times fewer than the softmax and score as well as
    R = 16 does on the dense benchmark (benchmarks/RESULTS.md, docs/defaults.md).
    """
    return int(min(default_repetitions(num_classes),
                   max(MIN_HEAD_REPETITIONS,
                       num_classes // (HEAD_OUTPUT_SHARE * max(1, num_buckets)))))


#: Per-repetition parameters of the sparse input layer (D x first width) the default
#: network may spend: 2^24 (64 MB in float32) keeps R = 12 repetitions under 1 GB and the
#: dense Adam update of a group's input kernel affordable on a CPU.
INPUT_LAYER_BUDGET = 1 << 24
#: From this many training examples on, the default network gets a second hidden layer
#: (it helped with 9,690 examples and hurt with 3,660; docs/defaults.md) ...
DEEP_MIN_EXAMPLES = 8_000
#: ... if there are also this many training examples per class: with few examples per
#: class the narrower second layer is a bottleneck before the B buckets (dev P@1 0.407
#: against 0.481 without it at 50,000 classes and 0.4 examples per class; delicious, with
#: 13 per class, gains 0.02 from it; docs/defaults.md).
DEEP_MIN_EXAMPLES_PER_CLASS = 5


def _prev_pow2(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(1.0, x))))


def default_hidden_units(num_features: int, num_examples: int | None,
                         num_classes: int | None = None) -> list[int]:
    """The per-repetition network from D, N and K.

    * First width 512, narrowed for large D so that the input layer stays within
      :data:`INPUT_LAYER_BUDGET` parameters per repetition (a power of two, at least 64):
      512 up to D = 32,768, 128 at D = 100,000.
    * A second hidden layer of 256 from :data:`DEEP_MIN_EXAMPLES` training examples on,
      when there are at least :data:`DEEP_MIN_EXAMPLES_PER_CLASS` examples per class.

    Measured on dev splits carved from the training files (docs/defaults.md): [512] beat
    [256] on bibtex and corel5k by about 0.01 P@1/P@3/P@5 and tied on delicious; a second
    layer added 0.02 P@1 and 0.01 to 0.015 P@3/P@5 on delicious (9,690 dev-training
    examples) and cost 0.01 P@1 on bibtex (3,660), where it overfits.
    """
    width = 512
    if num_features * width > INPUT_LAYER_BUDGET:
        width = max(64, _prev_pow2(INPUT_LAYER_BUDGET / num_features))
    per_class = num_examples / num_classes if num_examples and num_classes else math.inf
    if num_examples and num_examples >= DEEP_MIN_EXAMPLES and \
            per_class >= DEEP_MIN_EXAMPLES_PER_CLASS:
        return [width, 256]
    return [width]


def default_dropout(num_examples: int | None, num_classes: int | None = None) -> float:
    """Dropout from N and K: 0.5, or none with fewer than
    :data:`DEEP_MIN_EXAMPLES_PER_CLASS` training examples per class.

    With many examples per class dropout regularises (delicious, 13 per class: dev P@1
    0.707 against 0.682 without); with few, most classes are seen a handful of times and
    dropout only slows their learning (50,000 classes, 0.4 per class: 0.468 against 0.448
    with it, and fewer epochs to the best; docs/defaults.md).
    """
    if num_examples and num_classes and \
            num_examples / num_classes < DEEP_MIN_EXAMPLES_PER_CLASS:
        return 0.0
    return 0.5


#: The popularity penalty below ``DEEP_MIN_EXAMPLES_PER_CLASS`` training examples per class
#: (docs/defaults.md, "Popular buckets"): on the tagging-shaped dev split (0.4 per class)
#: +0.035 P@1, +0.023 P@3, +0.014 P@5; on bibtex, corel5k and delicious (12 to 30 per
#: class) no gain beyond the noise, so none there.
POPULARITY_PENALTY = 0.2


def default_popularity_penalty(num_examples: int | None, num_classes: int | None = None,
                               loss: str = "softmax", merge: str = "logprob") -> float:
    """:data:`POPULARITY_PENALTY` with fewer than :data:`DEEP_MIN_EXAMPLES_PER_CLASS`
    training examples per class (and the softmax loss with the ``logprob`` merge, which it
    is defined for), else 0."""
    if loss == "softmax" and merge == "logprob" and num_examples and num_classes and \
            num_examples / num_classes < DEEP_MIN_EXAMPLES_PER_CLASS:
        return POPULARITY_PENALTY
    return 0.0


def default_output_bias_init(num_examples: int | None,
                             num_classes: int | None = None) -> str:
    """``"log_prior"`` below :data:`DEEP_MIN_EXAMPLES_PER_CLASS` training examples per class,
    else ``"zeros"`` (docs/defaults.md, "The output layer's starting bias"): where classes
    are rare the start from the label shares gained on both development splits measured
    (+0.025 P@1 on the tagging-shaped set, +0.020 P@5 on seq_GO); from 5 per class on it
    moved P@k only within the noise, and the epochs to the early stop both ways."""
    if num_examples and num_classes and \
            num_examples / num_classes < DEEP_MIN_EXAMPLES_PER_CLASS:
        return "log_prior"
    return "zeros"


def default_epochs(num_examples: int | None, batch_size: int) -> int:
    """The epoch cap from N: enough epochs for about 4,000 optimizer steps, in [10, 60].

    Early stopping on the merged validation metric usually ends training well before the
    cap; the cap only bounds the cost. Small datasets need many epochs to take enough
    steps (bibtex: 17 steps per epoch, best after 10 to 25 epochs); large ones reach the
    same number of steps in a few epochs (docs/defaults.md).
    """
    if not num_examples:
        return 30
    steps = max(1, math.ceil(num_examples / batch_size))
    return int(min(60, max(10, math.ceil(4000 / steps))))


def default_validation_fraction(num_examples: int | None,
                                max_examples: int = 5000) -> float:
    """The share of the training data held out for validation: 10%, at most 5,000 points.

    Enough points to tell epochs apart (the standard error of P@1 on 500 points is about
    0.02), few enough that small datasets keep 90% of their points for training.
    """
    if not num_examples:
        return 0.1
    return float(min(0.1, max_examples / num_examples))


# -- the config ------------------------------------------------------------------------
@dataclasses.dataclass
class MachConfig:
    """Hyper-parameters and identity of a MACH model.

    Attributes:
        num_classes: K, the number of classes (labels are ids in ``[0, K)``).
        num_features: D, the dimension of the sparse input (feature ids in ``[0, D)``), or
            d, the width of a dense run's vectors.
        num_buckets: B, buckets per repetition.
        num_repetitions: R, independent repetitions.
        hidden_units: Widths of the hidden layers of every repetition's network; empty for a
            linear model (features to bucket logits, as in the MACH paper).
        activation: Hidden-layer activation (any Keras activation name).
        dropout: Dropout rate after each hidden layer.
        feature_norm: ``"l2"`` scales each example's feature values to unit L2 norm inside
            the model (so serving applies it too); ``"none"`` feeds them as they are.
        feature_weighting: ``"idf"`` multiplies each feature's value by its inverse document
            frequency ``log((1 + N) / (1 + df_j)) + 1``, learned from the training data and
            stored in the model (so serving applies it too), before ``feature_norm``;
            ``"none"`` leaves the values as they are.
        loss: ``"softmax"``: cross-entropy against the example's label buckets as a
            distribution (each label carries 1/|y| of the mass); ``"sigmoid"``: binary
            cross-entropy per bucket against the multi-hot bucket set.
        merge: What is averaged over repetitions to score a class: ``"prob"`` the bucket
            probability (the paper's estimator), ``"logprob"`` its logarithm.
        popularity_penalty: ``p >= 0``: served scores add ``-p * log Pi_r(b)`` to each
            repetition's bucket scores, ``Pi_r(b)`` the training frequency of bucket ``b``
            (the smoothed shares of its classes' label counts), so that a class whose
            buckets are all crowded with popular classes is not ranked up by them. Applied
            when a trained run is loaded for inference (evaluation, export), never in
            training. Needs ``loss="softmax"`` and ``merge="logprob"`` (it is then a shift
            of the output layer's bias).
        output_bias_init: Where each repetition's output bias starts training:
            ``"log_prior"``, the bias a network without input would learn from the
            training label counts (with the softmax loss the log of each bucket's share of
            the labels; :func:`mach_tf.model.network.initial_output_bias`), so the first
            steps need not learn the buckets' popularity; ``"zeros"`` (the default of a
            config built field by field, and of runs made before this field existed).
            :meth:`from_data` takes :func:`default_output_bias_init`: ``"log_prior"`` below
            5 training examples per class.
        optimizer: ``"adam"`` (:class:`mach_tf.optimizers.SparseAdam`: Adam whose
            update of the sparse input kernel above ``DENSE_INPUT_MAX_FEATURES`` features
            is lazy, i.e. touches only the rows of the batch's features; exactly Adam
            otherwise), ``"adam_rowwise"`` (the same, but that kernel updated by
            row-wise Adagrad: one accumulator per feature row, a third of the memory
            traffic and no per-element optimizer state; see
            :mod:`mach_tf.model.optimizers`), ``"adam_dense"`` (Keras' Adam: every row of
            every kernel updated every step), ``"adamw"`` or ``"sgd"``.
        learning_rate: Peak learning rate.
        row_wise_lr_factor: With ``optimizer="adam_rowwise"``, the row-wise Adagrad rate
            of the gathered input kernel as a multiple of ``learning_rate``.
        lr_schedule: ``"constant"``; ``"plateau"`` halves the rate when the merged
            validation metric has not improved for 2 epochs; ``"cosine"`` decays it to 0
            over ``epochs``.
        precision: ``"float32"``, or ``"mixed_bfloat16"``: training's matmuls run in
            bfloat16 on float32 weights (fast on CPUs with AMX or AVX-512 BF16 and on
            GPUs with bfloat16 units); saved repetitions and exports are float32 either way.
        batch_size: Examples per training step.
        epochs: Maximum training epochs per repetition (early stopping may end sooner).
        early_stopping_patience: Stop a group after this many epochs without improvement of
            the merged validation metric and restore its best epoch's weights; 0 trains
            all ``epochs`` (the metric is still logged when there is validation data).
        early_stopping_metric: The merged validation metric early stopping watches (one
            of ``VALIDATION_METRICS``).
        validation_fraction: Share of the training data held out (by a keyed hash of
            each serialized example, so every worker holds out the same points) for the
            merged validation metric when no separate validation data is given; 0 holds
            out nothing.
        validation_max_examples: At most this many validation points are scored after
            each epoch.
        group_size: Repetitions trained together in one Keras model by a worker (their
            weights stay separate; only the input pipeline and the kernels' launches are
            shared).
        shared_input_layer: Whether a group's repetitions share one sparse input layer
            (one ``[D, H]`` kernel per group, whose output every repetition's own later
            layers read; each saved repetition holds a copy of it). Cheaper to train, but
            the repetitions are no longer independent below the hidden layer: measured on
            the development splits it costs 0.01 to 0.03 P@1 where classes have few
            examples (docs/defaults.md). Needs sparse input and a hidden layer.
        seed: Seeds the hash coefficients (unless ``hashing`` is given), weight
            initialisation and shuffling.
        hashing: The persisted hash family (``HashFamily.to_dict()``); drawn from ``seed``
            when omitted.
        text: For models trained on raw text, the featuriser's settings and where its
            adapted statistics live (:meth:`TextSettings.to_dict`); the
            featuriser maps text to ``num_features`` hashed features. ``None`` for sparse
            input data.
        input_format: ``"sparse"`` (features, or text featurised into them) or
            ``"dense"``: each example is a float vector ``embedding`` of ``num_features``
            values, read by each repetition's first layer, or by ``encoder``.
        encoder: For dense runs built on the user's Keras encoder, where it comes from and
            its fingerprint (:meth:`EncoderSettings.to_dict`); ``None`` otherwise.
        format_version: Version of this file's schema.
    """

    num_classes: int
    num_features: int
    num_buckets: int
    num_repetitions: int
    hidden_units: list[int] = dataclasses.field(default_factory=lambda: [256])
    activation: str = "relu"
    dropout: float = 0.5
    feature_norm: str = "l2"
    feature_weighting: str = "none"
    loss: str = "softmax"
    merge: str = "logprob"
    popularity_penalty: float = 0.0
    output_bias_init: str = "zeros"
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    row_wise_lr_factor: float = 10.0
    lr_schedule: str = "constant"
    precision: str = "float32"
    batch_size: int = 256
    epochs: int = 30
    early_stopping_patience: int = 2
    early_stopping_metric: str = "ndcg@5"
    validation_fraction: float = 0.1
    validation_max_examples: int = 5000
    group_size: int = 4
    shared_input_layer: bool = False
    seed: int = 0
    hashing: dict | None = None
    text: dict | None = None
    input_format: str = "sparse"
    encoder: dict | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self.hidden_units = [int(h) for h in self.hidden_units]
        if self.hashing is None:
            self.hashing = HashFamily.from_seed(
                self.num_repetitions, self.num_buckets, self.seed).to_dict()
        self.validate()

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_data(cls, num_classes: int, num_features: int, num_examples: int | None = None,
                  **overrides: Any) -> "MachConfig":
        """A config sized to the data: K classes, D features, N training examples.

        B and R follow from K, the network from D and N, the epoch cap and the validation
        share from N (see docs/defaults.md for the measurements behind each default);
        anything given in ``overrides`` wins.
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        overrides.setdefault("num_buckets", default_buckets(num_classes))
        overrides.setdefault("num_repetitions", default_repetitions(num_classes))
        overrides.setdefault("hidden_units", default_hidden_units(num_features, num_examples,
                                                                  num_classes))
        overrides.setdefault("dropout", default_dropout(num_examples, num_classes))
        overrides.setdefault("output_bias_init", default_output_bias_init(num_examples,
                                                                          num_classes))
        overrides.setdefault("popularity_penalty", default_popularity_penalty(
            num_examples, num_classes, overrides.get("loss", cls.loss),
            overrides.get("merge", cls.merge)))
        batch = overrides.get("batch_size", cls.batch_size)
        overrides.setdefault("epochs", default_epochs(num_examples, batch))
        overrides.setdefault("validation_fraction", default_validation_fraction(
            num_examples, overrides.get("validation_max_examples",
                                        cls.validation_max_examples)))
        return cls(num_classes=int(num_classes), num_features=int(num_features), **overrides)

    def validate(self) -> None:
        """Raises ValueError naming the first field that is out of range."""
        def bad(field, why):
            raise ValueError(f"MachConfig.{field}: {why}")

        if not 1 <= self.num_classes <= MAX_CLASSES:
            bad("num_classes", f"must be in [1, {MAX_CLASSES}], got {self.num_classes}")
        if self.num_features < 1:
            bad("num_features", f"must be >= 1, got {self.num_features}")
        if self.num_buckets < 2:
            bad("num_buckets", f"must be >= 2, got {self.num_buckets}")
        if self.num_repetitions < 1:
            bad("num_repetitions", f"must be >= 1, got {self.num_repetitions}")
        if any(h < 1 for h in self.hidden_units):
            bad("hidden_units", f"widths must be positive, got {self.hidden_units} (an "
                                f"empty list is a linear model)")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", f"must be in [0, 1), got {self.dropout}")
        for field, allowed in (("loss", LOSSES), ("merge", MERGES),
                               ("output_bias_init", OUTPUT_BIAS_INITS),
                               ("feature_norm", FEATURE_NORMS),
                               ("feature_weighting", FEATURE_WEIGHTINGS),
                               ("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES),
                               ("precision", PRECISIONS), ("input_format", INPUT_FORMATS),
                               ("early_stopping_metric", VALIDATION_METRICS)):
            if getattr(self, field) not in allowed:
                bad(field, f"must be one of {allowed}, got {getattr(self, field)!r}")
        if self.learning_rate <= 0:
            bad("learning_rate", f"must be > 0, got {self.learning_rate}")
        if self.popularity_penalty < 0:
            bad("popularity_penalty", f"must be >= 0, got {self.popularity_penalty}")
        if self.popularity_penalty > 0 and (self.loss, self.merge) != ("softmax", "logprob"):
            bad("popularity_penalty", f"needs loss='softmax' and merge='logprob', got "
                                      f"{self.loss!r} and {self.merge!r}")
        if self.row_wise_lr_factor <= 0:
            bad("row_wise_lr_factor", f"must be > 0, got {self.row_wise_lr_factor}")
        if self.batch_size < 1 or self.epochs < 1 or self.group_size < 1:
            bad("batch_size/epochs/group_size", "must be >= 1")
        if self.shared_input_layer and (self.input_format != "sparse" or not self.hidden_units):
            bad("shared_input_layer", f"needs sparse input and a hidden layer (the shared "
                                      f"layer is the first hidden one), got input_format="
                                      f"{self.input_format!r}, hidden_units="
                                      f"{self.hidden_units}")
        if self.early_stopping_patience < 0:
            bad("early_stopping_patience", f"must be >= 0, got {self.early_stopping_patience}")
        if not 0.0 <= self.validation_fraction < 1.0:
            bad("validation_fraction", f"must be in [0, 1), got {self.validation_fraction}")
        if self.validation_max_examples < 1:
            bad("validation_max_examples", f"must be >= 1, got {self.validation_max_examples}")
        if self.format_version != FORMAT_VERSION:
            bad("format_version", f"this mach-tf reads version {FORMAT_VERSION}, "
                                  f"got {self.format_version}")
        if self.text is not None:
            self.text = TextSettings.from_dict(self.text).to_dict()  # validates, fills in
            if self.feature_weighting != "none":
                bad("feature_weighting", "must be 'none' for text models: the text "
                                         "featuriser already weights its features by tf-idf")
        if self.input_format == "dense" and self.text is not None:
            bad("text", "a dense run reads vectors, not text")
        if self.input_format == "dense" and self.feature_weighting != "none":
            bad("feature_weighting", "must be 'none' for dense inputs (it weights sparse "
                                     "features by their document frequency)")
        if self.encoder is not None:
            self.encoder = EncoderSettings.from_dict(self.encoder).to_dict()
            if self.input_format != "dense":
                bad("encoder", "needs input_format='dense': an encoder reads the dense "
                               "vectors 'embedding'")
            if self.encoder["trainable"] and self.group_size != 1:
                bad("group_size", f"must be 1 with a trainable encoder (each repetition "
                                  f"trains its own copy), got {self.group_size}")
        family = self.hash_family  # validates the coefficients
        if family.num_repetitions != self.num_repetitions:
            bad("hashing", f"holds {family.num_repetitions} functions for "
                           f"num_repetitions={self.num_repetitions}")
        if family.num_buckets != self.num_buckets:
            bad("hashing", f"num_buckets {family.num_buckets} != {self.num_buckets}")

    @property
    def hash_family(self) -> HashFamily:
        return HashFamily.from_dict(self.hashing)

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "MachConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"MachConfig: unknown field(s) {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "MachConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "MachConfig":
        """A copy with ``changes``; the hash family is redrawn when R, B or seed change."""
        d = self.to_dict()
        d.update(changes)
        if {"num_repetitions", "num_buckets", "seed"} & set(changes) and "hashing" not in changes:
            d["hashing"] = None
        return MachConfig.from_dict(d)

    def num_params(self) -> int:
        """Trainable parameters of all R repetitions together."""
        encoder = self.encoder or {}
        first = encoder.get("output_dim") or self.num_features
        widths = [first] + self.hidden_units + [self.num_buckets]
        per_rep = sum(i * o + o for i, o in zip(widths[:-1], widths[1:]))
        if encoder.get("trainable"):
            per_rep += encoder.get("num_params") or 0
        return per_rep * self.num_repetitions
