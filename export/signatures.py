"""The serving graph: padded sparse features, dense vectors, tf.Examples or raw text in,
merged top-k out.

A model trained on text also has ``predict_text`` (query strings ``[batch]`` in): the
run's :class:`~mach_tf.text.TextFeaturizer`, adapted statistics and normalisation table
included, is part of the graph, so the server featurises queries exactly as training did.
A model trained on dense vectors (``input_format="dense"``) takes ``embedding`` float32
``[batch, d]`` instead of sparse features, and tf.Examples holding it; its encoder, if any,
is inside the repetitions' model, so the requests are the same with or without one.

Everything here is stock TensorFlow ops, so TensorFlow Serving runs it as is. Large tensors
(the class -> bucket table or the inverted index, held as weights by the
:class:`~mach_tf.inference.decoder.MergedTopK` layer that decodes merged validation and
evaluation too; the label names) are variables, assets and lookup tables, never graph
constants, so a model of millions of classes stays far from the GraphDef's 2 GB limit.
"""

from __future__ import annotations

import tensorflow as tf

from export.archive import SignatureArchive
from mach_tf.config import MachConfig
from mach_tf.inference.decoder import MergedTopK
from mach_tf.inference.filters import check_filters
from mach_tf.model.network import DENSE_KEY, MachModel, bucket_scores

METHOD_NAME = "tensorflow/serving/predict"
SERVING_DEFAULT = "serving_default"
PREDICT_EXAMPLES = "predict_examples"
PREDICT_TEXT = "predict_text"
#: Every signature's filtered twin takes three more inputs (see :data:`FILTER_SPECS`).
FILTERED = "_filtered"
OUTPUT_KEYS = ("label_ids", "scores", "labels")
#: The filtered signatures' extra inputs: ids padded with -1 (a row of only -1: no
#: exclusion / no restriction) and the number of classes to return (0: the export's k).
FILTER_SPECS = [tf.TensorSpec([None, None], tf.int64, name="exclude_ids"),
                tf.TensorSpec([None, None], tf.int64, name="restrict_ids"),
                tf.TensorSpec([], tf.int32, name="top_k")]


def label_table(path: str) -> tf.lookup.StaticHashTable:
    """Line number -> line text, from an asset file of one label name per line."""
    init = tf.lookup.TextFileInitializer(
        path, key_dtype=tf.int64, key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        value_dtype=tf.string, value_index=tf.lookup.TextFileIndex.WHOLE_LINE)
    return tf.lookup.StaticHashTable(init, default_value="")


def _assert_unique_ids(feature_ids):
    """A repeated id would be summed with its values normalised apart, an answer to a query
    nobody sent: refused, as the text parser refuses it."""
    s = tf.sort(feature_ids, axis=-1)
    repeated = tf.logical_and(tf.equal(s[:, 1:], s[:, :-1]), s[:, 1:] >= 0)
    return tf.debugging.assert_equal(
        tf.reduce_any(repeated), False,
        message="feature_ids must not repeat within a row (padding -1 aside)")


def validate_request(feature_ids, feature_values, num_features: int):
    """Request checks that raise InvalidArgument instead of answering wrongly."""
    checks = [
        tf.debugging.assert_equal(
            tf.shape(feature_ids), tf.shape(feature_values),
            message="feature_ids and feature_values must have the same shape [batch, n]"),
        tf.debugging.assert_greater_equal(
            feature_ids, tf.constant(-1, tf.int64),
            message="feature_ids must be >= 0 (or -1 for padding)"),
        tf.debugging.assert_less(
            feature_ids, tf.constant(num_features, tf.int64),
            message=f"feature_ids must be < num_features={num_features}"),
        tf.debugging.assert_all_finite(
            feature_values, message="feature_values must be finite (no NaN or Inf)"),
        _assert_unique_ids(feature_ids),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(feature_ids), tf.identity(feature_values)


def validate_embedding(embedding, width: int):
    """Dense request checks that raise InvalidArgument instead of answering wrongly: rows of
    ``width`` (d) values, all finite. Returns ``embedding`` with its static shape
    ``[batch, d]``."""
    checks = [
        tf.debugging.assert_equal(
            tf.shape(embedding)[1], width,
            message=f"{DENSE_KEY} must have num_features={width} values per row "
                    f"(shape [batch, {width}])"),
        tf.debugging.assert_all_finite(
            embedding, message=f"{DENSE_KEY} must be finite (no NaN or Inf)"),
    ]
    with tf.control_dependencies(checks):
        return tf.ensure_shape(tf.identity(embedding), [None, width])


def parse_dense_examples(examples, width: int):
    """``embedding`` float32 ``[batch, d]`` of serialized tf.Examples (a missing feature, or
    one of another length, fails inside ``parse_example`` with InvalidArgument)."""
    return tf.io.parse_example(examples, {
        DENSE_KEY: tf.io.FixedLenFeature([width], tf.float32)})[DENSE_KEY]


def decoded_answer(topk: MergedTopK, scores, table=None, filters=None) -> dict:
    """A signature's outputs (:data:`OUTPUT_KEYS`) from bucket scores ``[batch, R, B]``.

    Args:
        topk: The export's decoder (its ``k`` is the export's top k).
        scores: Bucket scores, as :func:`~mach_tf.model.network.bucket_scores` gives them.
        table: A :func:`label_table`, or ``None`` to name classes by their ids.
        filters: A filtered signature's ``(exclude_ids, restrict_ids, top_k)``, checked by
            :func:`~mach_tf.inference.filters.check_filters`; ``None`` for the plain one.
    """
    if filters is None:
        top_scores, ids = topk(scores)
    else:
        exclude_ids, restrict_ids, k = filters
        checks = check_filters(exclude_ids, restrict_ids, k, tf.shape(scores)[0],
                               topk.num_classes, topk.k)
        with tf.control_dependencies(checks):
            top_scores, ids = topk(scores, exclude_ids=tf.identity(exclude_ids),
                                   restrict_ids=tf.identity(restrict_ids))
        k = tf.where(k > 0, k, topk.k)  # a prefix of the export's top k, best first
        top_scores, ids = top_scores[:, :k], ids[:, :k]
    names = table.lookup(ids) if table is not None else tf.strings.as_string(ids)
    return {"label_ids": ids, "scores": top_scores, "labels": names}


def build_archive(config: MachConfig, model: MachModel, top_k: int, decoder: str,
                  candidate_buckets: int, label_names_path: str | None = None,
                  featurizer=None, excluded_classes=()):
    """A :class:`~export.archive.SignatureArchive` with the ``serving_default`` and
    ``predict_examples`` signatures (see DESIGN.md for their tensors), and ``predict_text``
    for text models; each with its ``NAME_filtered`` twin, which also takes a request's
    ``exclude_ids``, ``restrict_ids`` and ``top_k`` (:data:`FILTER_SPECS`). A dense model
    (``config.input_format == "dense"``) takes ``embedding`` float32 ``[batch, d]`` in
    ``serving_default`` and tf.Examples holding ``embedding`` float32 ``[d]`` in
    ``predict_examples``.

    Args:
        config: The run's config.
        model: All R repetitions stacked in order ``0..R-1``.
        top_k: Classes returned per query.
        decoder: ``"exact"`` or ``"candidates"``.
        candidate_buckets: m for candidate decoding.
        label_names_path: A file of K label names (one per line), or ``None`` to return the
            ids as strings.
        featurizer: The run's adapted :class:`~mach_tf.text.TextFeaturizer` for a text
            model: adds ``predict_text`` (``text`` string ``[batch]``), and
            ``predict_examples`` then reads each example's ``text`` feature.
        excluded_classes: Class ids no signature ever returns (retired classes).
    """
    archive = SignatureArchive()
    topk = MergedTopK(config.num_classes, config.hashing, k=top_k, decoder=decoder,
                      candidate_buckets=candidate_buckets, excluded_classes=excluded_classes,
                      name="mach_decoder")
    table = None
    if label_names_path is not None:
        table = label_table(label_names_path)
        archive.track(table)
    num_features = config.num_features

    def scored(inputs, filters, values: str):
        logits = model(inputs, training=False)
        scores = tf.debugging.assert_all_finite(
            bucket_scores(logits, config.loss, config.merge),
            message=f"the model's scores are not finite for this request ({values} "
                    f"too large for a model trained with feature_norm='none'?)")
        return decoded_answer(topk, scores, table, filters)

    def answer(feature_ids, feature_values, filters=None):
        feature_ids, feature_values = validate_request(feature_ids, feature_values,
                                                       num_features)
        return scored({"feature_ids": feature_ids, "feature_values": feature_values},
                      filters, "feature_values")

    def dense_answer(embedding, filters=None):
        return scored({DENSE_KEY: validate_embedding(embedding, num_features)}, filters,
                      f"{DENSE_KEY} values")

    def dense_default(embedding):
        return dense_answer(embedding)

    def dense_default_filtered(embedding, exclude_ids, restrict_ids, top_k):
        return dense_answer(embedding, (exclude_ids, restrict_ids, top_k))

    def dense_examples(examples):
        return dense_answer(parse_dense_examples(examples, num_features))

    def dense_examples_filtered(examples, exclude_ids, restrict_ids, top_k):
        return dense_answer(parse_dense_examples(examples, num_features),
                            (exclude_ids, restrict_ids, top_k))

    def serving_default(feature_ids, feature_values):
        return answer(feature_ids, feature_values)

    def serving_default_filtered(feature_ids, feature_values, exclude_ids, restrict_ids,
                                 top_k):
        return answer(feature_ids, feature_values, (exclude_ids, restrict_ids, top_k))

    def predict_text(text):
        return answer(**featurizer(text))

    def predict_text_filtered(text, exclude_ids, restrict_ids, top_k):
        return answer(**featurizer(text), filters=(exclude_ids, restrict_ids, top_k))

    def parse_text(examples):
        return tf.io.parse_example(examples, {
            "text": tf.io.FixedLenFeature([], tf.string, default_value="")})["text"]

    def predict_text_examples(examples):
        return predict_text(parse_text(examples))

    def predict_text_examples_filtered(examples, exclude_ids, restrict_ids, top_k):
        return predict_text_filtered(parse_text(examples), exclude_ids, restrict_ids, top_k)

    def parse_sparse(examples):
        # A malformed serialized example fails inside parse_example with InvalidArgument.
        parsed = tf.io.parse_example(examples, {
            "feature_ids": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64),
            "feature_values": tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int64)})
        ids, vals = parsed["feature_ids"], parsed["feature_values"]
        checks = [
            tf.debugging.assert_equal(
                ids.row_lengths(), vals.row_lengths(),
                message="each example needs as many feature_values as feature_ids"),
            # -1 pads dense requests; inside a tf.Example it would silently drop a feature.
            tf.debugging.assert_non_negative(
                ids.flat_values, message="feature_ids in a tf.Example must be >= 0"),
        ]
        with tf.control_dependencies(checks):
            return ids.to_tensor(default_value=-1), vals.to_tensor(default_value=0.0)

    def predict_examples(examples):
        return answer(*parse_sparse(examples))

    def predict_examples_filtered(examples, exclude_ids, restrict_ids, top_k):
        return answer(*parse_sparse(examples), (exclude_ids, restrict_ids, top_k))

    sparse_spec = [tf.TensorSpec([None, None], tf.int64, name="feature_ids"),
                   tf.TensorSpec([None, None], tf.float32, name="feature_values")]
    examples_spec = [tf.TensorSpec([None], tf.string, name="examples")]
    endpoints = [(SERVING_DEFAULT, serving_default, serving_default_filtered, sparse_spec)]
    if config.input_format == "dense":
        # [batch, None], not [batch, d]: a row of another width is refused by the graph
        # with InvalidArgument naming d (validate_embedding), through either loader.
        endpoints = [(SERVING_DEFAULT, dense_default, dense_default_filtered,
                      [tf.TensorSpec([None, None], tf.float32, name=DENSE_KEY)]),
                     (PREDICT_EXAMPLES, dense_examples, dense_examples_filtered,
                      examples_spec)]
    elif featurizer is None:
        endpoints.append((PREDICT_EXAMPLES, predict_examples, predict_examples_filtered,
                          examples_spec))
    else:
        endpoints += [(PREDICT_EXAMPLES, predict_text_examples,
                       predict_text_examples_filtered, examples_spec),
                      (PREDICT_TEXT, predict_text, predict_text_filtered,
                       [tf.TensorSpec([None], tf.string, name="text")])]
    for name, plain, filtered, spec in endpoints:
        archive.add_signature(name, plain, spec)
        archive.add_signature(name + FILTERED, filtered, spec + FILTER_SPECS)
    return archive
