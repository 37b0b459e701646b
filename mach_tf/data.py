"""Where converted datasets meet the model: configs sized to data, data checked against a
config, and parsed TFRecord batches turned into model inputs and bucket targets.

The datasets themselves are :mod:`tfrecords_tools`' (manifest, tf.data reader); what
depends on MACH lives here: the hash family turns labels into each repetition's bucket
targets, and a text run's featuriser turns raw text into the sparse inputs its networks
take (in the tf.data pipeline, so they never see strings).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.errors import RunDirError
from mach_tf.hashing import buckets_tf
from mach_tf.inputs import DEFAULT_TEXT_FEATURES, TEXT_OVERRIDES, TextSettings
from mach_tf.model.encoders import encoder_settings
from mach_tf.model.network import DENSE_KEY
from tfrecords_tools.dataset import (batch_and_parse, graph_only, make_dataset,
                                     make_record_dataset)
from tfrecords_tools.manifest import Manifest

#: The keys of ``train --encoder-file/--encoder/--freeze-encoder`` among config overrides.
ENCODER_OVERRIDES = ("encoder_file", "encoder_function", "freeze_encoder")


# -- the data and the config --------------------------------------------------------------
def config_for_data(train: str, **overrides) -> MachConfig:
    """A config sized to the training data's manifest (K, D, N), with ``overrides`` (dense
    data may also name an encoder: ``encoder_file``, ``encoder_function``,
    ``freeze_encoder``)."""
    m = Manifest.load(train)
    num_features, overrides = data_config_overrides(m, overrides)  # text: D and featuriser
    return MachConfig.from_data(m.num_labels, num_features, m.num_examples, **overrides)


def data_config_overrides(manifest, overrides: dict) -> tuple[int, dict]:
    """``(num_features, overrides)`` of a config sized to a dataset.

    For text data, D is the featuriser's hash space (``text_features`` in ``overrides``,
    default :data:`DEFAULT_TEXT_FEATURES`) and ``word_ngrams`` / ``char_ngrams`` become the
    config's ``text`` settings; for sparse data, D is the manifest's; for dense data, D is
    the vectors' width d, the input format ``"dense"``, the vectors are fed as they are
    (``feature_norm="none"`` unless asked), and an encoder named in ``overrides``
    (:data:`ENCODER_OVERRIDES`) becomes the config's ``encoder`` section (a trainable one
    trains each repetition alone: ``group_size=1``).

    Raises:
        ValueError: text settings asked for sparse or dense data, an encoder for other
            than dense data.
        mach_tf.errors.EncoderError: an encoder that cannot be loaded or used.
    """
    out = {k: v for k, v in overrides.items()
           if k not in TEXT_OVERRIDES and k not in ENCODER_OVERRIDES}
    given = [k for k in TEXT_OVERRIDES if overrides.get(k) is not None]
    encoder = {k: overrides.get(k) for k in ENCODER_OVERRIDES}
    if manifest.embedding_dim is not None:
        if given:
            raise ValueError(f"{manifest.path}: holds dense vectors; "
                             f"{', '.join('--' + k.replace('_', '-') for k in given)} apply to "
                             f"text data (convert it with --format text)")
        out["input_format"] = "dense"
        out.setdefault("feature_norm", "none")
        if encoder["encoder_file"] is not None or encoder["encoder_function"] is not None:
            out["encoder"] = encoder_settings(
                manifest.embedding_dim, file=encoder["encoder_file"],
                function=encoder["encoder_function"],
                frozen=bool(encoder["freeze_encoder"]))
            if out["encoder"]["trainable"]:
                out.setdefault("group_size", 1)
        elif encoder["freeze_encoder"]:
            raise ValueError("--freeze-encoder needs --encoder-file")
        return manifest.embedding_dim, out
    if any(v for v in encoder.values()):
        raise ValueError(f"{manifest.path}: holds {'text' if manifest.text else 'sparse'} "
                         f"data; an encoder reads dense vectors (convert them with "
                         f"'mach-tf convert --format dense')")
    if not manifest.text:
        if given:
            raise ValueError(f"{manifest.path}: holds sparse features; "
                             f"{', '.join('--' + k.replace('_', '-') for k in given)} apply to "
                             f"text data (convert it with --format text)")
        return manifest.num_features, out
    if overrides.get("text_features") is not None and int(overrides["text_features"]) < 1:
        raise ValueError(f"text_features must be >= 1, got {overrides['text_features']}")
    num_features = int(overrides.get("text_features") or DEFAULT_TEXT_FEATURES)
    out["text"] = TextSettings(**{k: overrides[k] for k in ("word_ngrams", "char_ngrams")
                                  if overrides.get(k) is not None}).to_dict()
    return num_features, out


def check_data(config: MachConfig, data: str, role: str) -> None:
    """Refuses data the run's config cannot take, before training or evaluation starts.

    The manifest's dimensions are declared ones (the converter refuses any id beyond
    them), so data whose dimensions fit the config holds only ids the model knows.

    Raises:
        RunDirError: naming the data, the field and both values.
    """
    m = Manifest.load(data)
    check_data_kind(config, m, role)
    dense = config.input_format == "dense"
    beyond = [f"{field}={have}, beyond the run's config ({mine}={want})"
              for field, have, mine, want in (
                  ("num_features", m.num_features, "num_features", config.num_features),
                  ("num_labels", m.num_labels, "num_classes", config.num_classes))
              if have > want and not (dense and field == "num_features")]
    if beyond:
        raise RunDirError(
            f"{m.path}: {role} data has " + "; ".join(beyond) + " (its ids may lie "
            "beyond what the model knows); convert it with the run's dimensions or train a "
            "new run sized to it")
    if role == "training" and m.num_examples == 0:
        raise RunDirError(f"{m.path}: training data has no examples")


def refuse_dense(manifest, role: str, reads: str = "sparse features or raw text") -> None:
    """Refuses a dataset of dense embeddings for a model of sparse features or text.

    Raises:
        RunDirError: naming the manifest and what the run reads.
    """
    if manifest.embedding_dim is not None:
        raise RunDirError(
            f"{manifest.path}: {role} data holds dense embeddings (converted with --format "
            f"dense, embedding_dim={manifest.embedding_dim}) but the run's model reads "
            f"{reads}; convert the data with --format xmc, libsvm or text")


def check_data_kind(config, manifest, role: str) -> None:
    """Refuses text data for a model of sparse features, and the other way round, dense
    data for either, and sparse, text or other-width data for a dense model.

    Raises:
        RunDirError: naming the manifest and what the run expects.
    """
    if config.input_format == "dense":
        if manifest.embedding_dim is None:
            kind = "raw text" if manifest.text else "sparse features"
            raise RunDirError(
                f"{manifest.path}: {role} data holds {kind} "
                f"but the run's model reads dense vectors of {config.num_features} values; "
                f"convert them with 'mach-tf convert --format dense'")
        if manifest.embedding_dim != config.num_features:
            raise RunDirError(
                f"{manifest.path}: {role} data has embedding_dim={manifest.embedding_dim}, "
                f"the run's model reads vectors of num_features={config.num_features}")
        return
    refuse_dense(manifest, role, "raw text" if config.text is not None else "sparse features")
    if manifest.text and config.text is None:
        raise RunDirError(
            f"{manifest.path}: {role} data holds raw text (converted with --format text) "
            f"but the run's model reads sparse features; train a new run on text data (its "
            f"config then records the text featuriser)")
    if not manifest.text and config.text is not None:
        raise RunDirError(
            f"{manifest.path}: {role} data holds sparse features but the run's model reads "
            f"raw text; convert the data with 'mach-tf convert --format text' "
            f"(lines 'labels<TAB>text')")


# -- batches -------------------------------------------------------------------------------
def to_model_inputs(batch: dict) -> dict:
    """Ragged ``feature_ids``/``feature_values`` -> padded dense (ids padded with -1); a
    dense batch's ``embedding`` as it is."""
    if DENSE_KEY in batch:
        return {DENSE_KEY: tf.cast(batch[DENSE_KEY], tf.float32)}
    ids = batch["feature_ids"]
    vals = batch["feature_values"]
    if isinstance(ids, tf.RaggedTensor):
        ids = ids.to_tensor(default_value=-1)
        vals = vals.to_tensor(default_value=0.0)
    return {"feature_ids": tf.cast(ids, tf.int64), "feature_values": tf.cast(vals, tf.float32)}


def bucket_targets(labels: tf.RaggedTensor, config: MachConfig,
                   repetitions: Sequence[int]) -> tf.Tensor:
    """The label buckets of each repetition: int32 ``[batch, G, L]``, padded with -1.

    Args:
        labels: Ragged int64 ``[batch, None]`` class ids.
        config: The run's config (its persisted hash family).
        repetitions: The G repetitions of the group, in group order.
    """
    return padded_targets(label_buckets(labels, config, repetitions))


def label_buckets(labels: tf.RaggedTensor, config: MachConfig,
                  repetitions: Sequence[int]) -> tf.RaggedTensor:
    """Each label's bucket in each repetition: ragged int32 ``[batch, None, G]`` (the
    unpadded form of :func:`bucket_targets`)."""
    family = config.hash_family.subset(repetitions)
    b = buckets_tf(labels.flat_values, tf.constant(family.a, tf.int64),
                   tf.constant(family.b, tf.int64), family.num_buckets,
                   family.prime)  # [G, nnz]
    return tf.RaggedTensor.from_row_splits(tf.cast(tf.transpose(b), tf.int32),
                                           labels.row_splits)


def padded_targets(buckets: tf.RaggedTensor) -> tf.Tensor:
    """:func:`label_buckets` ``[batch, None, G]`` -> ``[batch, G, L]`` padded with -1."""
    return tf.transpose(buckets.to_tensor(default_value=-1), [0, 2, 1])


def model_inputs(featurizer):
    """Model inputs of a parsed batch: its sparse features, or its text featurised by
    ``featurizer`` (a :class:`mach_tf.text.TextFeaturizer`) for text datasets."""
    if featurizer is None:
        return to_model_inputs
    return lambda b: featurizer(b["text"])


def training_dataset(data, config: MachConfig, repetitions: Sequence[int], *,
                     shuffle: bool = True, seed: int | None = None,
                     batch_size: int | None = None, repeat: bool = False,
                     featurizer=None, record_filter=None) -> tf.data.Dataset:
    """``(inputs, targets)`` batches for training the given repetitions (text datasets
    featurised by ``featurizer`` in the pipeline).

    ``record_filter`` keeps only some serialized records (see
    :func:`tfrecords_tools.dataset.make_dataset`), e.g. the training side of a split.
    """
    records = make_record_dataset(data, shuffle=shuffle,
                                  seed=config.seed if seed is None else seed, repeat=repeat,
                                  record_filter=record_filter)
    return training_batches(records, config, repetitions,
                            batch_size=batch_size, featurizer=featurizer)


def training_batches(records: tf.data.Dataset, config: MachConfig,
                     repetitions: Sequence[int], *, batch_size: int | None = None,
                     featurizer=None) -> tf.data.Dataset:
    """``(inputs, targets)`` batches of a stream of serialized records."""
    ds = batch_and_parse(records, batch_size or config.batch_size,
                         with_text=featurizer is not None,
                         embedding_dim=config.num_features
                         if config.input_format == "dense" else None)
    reps = list(repetitions)
    inputs = model_inputs(featurizer)
    return ds.map(graph_only(lambda b: (inputs(b),
                                        bucket_targets(b["labels"], config, reps))),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def evaluation_dataset(data, batch_size: int, featurizer=None, raw_text: bool = False,
                       record_filter=None) -> tf.data.Dataset:
    """``(inputs, labels)`` batches in file order; labels stay ragged. Text datasets are
    featurised by ``featurizer``, or with ``raw_text`` give their strings as inputs;
    ``record_filter`` keeps only some serialized records."""
    ds = make_dataset(data, batch_size, shuffle=False,
                      with_text=featurizer is not None or raw_text, record_filter=record_filter)
    inputs = (lambda b: b["text"]) if raw_text else model_inputs(featurizer)
    return ds.map(graph_only(lambda b: (inputs(b), b["labels"])),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
