"""Raw text -> hashed, tf-idf weighted sparse features, in the graph.

:class:`TextFeaturizer` is a Keras layer made of stock TensorFlow ops only, so the very
same layer featurises the training data (in the tf.data pipeline, so the per-repetition
networks keep their sparse input) and the queries of the exported ``predict_text``
signature (inside the SavedModel, so TensorFlow Serving runs it): training and serving
cannot disagree.

A batch of strings ``[batch]`` becomes ``feature_ids`` int64 ``[batch, n]`` (ascending per
row, padded with -1) and ``feature_values`` float32 ``[batch, n]`` (padded with 0):

1. **Normalise**: decode UTF-8 (invalid bytes are an ``InvalidArgument`` error), map every
   character through the fold table (:mod:`mach_tf.text.normalization`: compatibility
   decomposition, case folding, accents dropped, punctuation and symbols to spaces).
2. **Tokenise**: split on spaces.
3. **N-grams**: word n-grams of widths ``1..word_ngrams`` (joined by a space) and, with
   ``char_ngrams = n > 0``, the character n-grams of each word padded as ``<word>``,
   prefixed ``#`` (a character the fold never leaves in a word, so they never meet a word).
4. **Hash**: ``tf.strings.to_hash_bucket_fast(gram, D)``: FarmHash ``Fingerprint64 mod D``,
   fixed forever and the same on every platform (:mod:`mach_tf.text.farmhash` computes
   it in pure Python; ``tests/text/test_featurizer.py`` pins golden values).
5. **Weigh**: grams hashed to the same id are merged, counted (``tf``, or ``1 + ln tf``
   with ``sublinear_tf``) and, with ``weighting="tfidf"``, multiplied by
   ``ln((1 + N) / (1 + df)) + 1`` (smoothed idf) from the document frequencies ``df``
   counted by :meth:`TextFeaturizer.adapt` over the training texts (weights of the layer,
   so a saved or exported model carries them); then each row is scaled to unit L2 norm.

:mod:`mach_tf.text.reference` computes the same features in plain Python; export checks
the serving graph against it. A run's adapted featuriser is :mod:`mach_tf.text.statistics`'.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from mach_tf.config import TextSettings
from mach_tf.text.normalization import fold_table, table_sha256

#: The prefix of character n-grams in the hashed strings.
CHAR_GRAM_PREFIX = "#"
_SENTINEL = 0xD800  # a surrogate: never the code point of valid UTF-8


def _constant_initializer(array: np.ndarray):
    def init(shape, dtype=None):
        return tf.constant(array, dtype=dtype, shape=shape)
    return init


@keras.saving.register_keras_serializable(package="mach_tf")
class TextFeaturizer(keras.layers.Layer):
    """Strings in, hashed tf-idf sparse features out (module docstring).

    Args:
        num_features: D, the hash space (feature ids in ``[0, D)``).
        word_ngrams: Word n-grams of widths ``1..word_ngrams``.
        char_ngrams: Width of the character n-grams inside words (0: none).
        weighting: ``"tfidf"`` or ``"tf"``.
        sublinear_tf: ``1 + ln(tf)`` instead of the raw count.

    Weights (all non-trainable, made in ``build``): the fold table (``fold_keys``,
    ``fold_offsets``, ``fold_values``, int32), ``document_frequency`` (int64 ``[D]``) and
    ``num_documents`` (int64 scalar), zero until :meth:`adapt` or :meth:`set_statistics`.
    Before adapting, idf is 1 for every feature.

    Call with a string tensor ``[batch]`` (or ``[batch, 1]``); returns a dict of
    ``feature_ids`` int64 ``[batch, n]`` (-1 padded) and ``feature_values`` float32
    ``[batch, n]``.
    """

    def __init__(self, num_features, word_ngrams=2, char_ngrams=0, weighting="tfidf",
                 sublinear_tf=True, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.num_features = int(num_features)
        self.word_ngrams = int(word_ngrams)
        self.char_ngrams = int(char_ngrams)
        self.weighting = weighting
        self.sublinear_tf = bool(sublinear_tf)
        if self.num_features < 1 or self.num_features > 2**31:
            raise ValueError(f"TextFeaturizer: num_features must be in [1, 2^31], got "
                             f"{self.num_features}")
        TextSettings(**self.settings())  # validates the rest

    def settings(self) -> dict:
        return {"word_ngrams": self.word_ngrams, "char_ngrams": self.char_ngrams,
                "weighting": self.weighting, "sublinear_tf": self.sublinear_tf}

    def build(self, input_shape=None):
        keys, offsets, values = fold_table()
        for name, arr in (("fold_keys", keys), ("fold_offsets", offsets),
                          ("fold_values", values)):
            setattr(self, name, self.add_weight(
                name=name, shape=arr.shape, dtype="int32", trainable=False,
                initializer=_constant_initializer(arr)))
        self.document_frequency = self.add_weight(
            name="document_frequency", shape=(self.num_features,), dtype="int64",
            trainable=False, initializer="zeros")
        self.num_documents = self.add_weight(name="num_documents", shape=(), dtype="int64",
                                             trainable=False, initializer="zeros")
        self.built = True

    # -- the graph -----------------------------------------------------------------------
    def fold(self, texts):
        """Normalised strings ``[batch]`` (step 1 of the module docstring)."""
        texts = tf.convert_to_tensor(texts, tf.string)
        cps = tf.strings.unicode_decode(texts, "UTF-8", errors="replace",
                                        replacement_char=_SENTINEL)
        flat = cps.flat_values
        bad = tf.reduce_any(tf.equal(cps, _SENTINEL), axis=1)
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            ["text must be valid UTF-8; rows that are not:",
             tf.reshape(tf.where(bad), [-1])], summarize=16)
        with tf.control_dependencies([check]):
            flat = tf.identity(flat)
        keys = tf.convert_to_tensor(self.fold_keys)
        offsets = tf.convert_to_tensor(self.fold_offsets)
        values = tf.convert_to_tensor(self.fold_values)
        idx = tf.minimum(tf.searchsorted(keys, flat, side="left", out_type=tf.int32),
                         tf.size(keys) - 1)
        found = tf.equal(tf.gather(keys, idx), flat)
        num_values = tf.size(values)
        position = tf.range(tf.size(flat), dtype=tf.int32)
        # Each code point becomes a range of `source`: its fold in `values`, or itself
        # (appended after `values`) when the table does not list it.
        starts = tf.where(found, tf.gather(offsets, idx), num_values + position)
        limits = tf.where(found, tf.gather(offsets, idx + 1), num_values + position + 1)
        source = tf.concat([values, flat], axis=0)
        out = tf.gather(source, tf.ragged.range(starts, limits).flat_values)
        lengths = tf.math.unsorted_segment_sum(limits - starts, cps.value_rowids(),
                                               cps.nrows())
        folded = tf.RaggedTensor.from_row_lengths(out, tf.cast(lengths, tf.int64))
        return tf.strings.unicode_encode(folded, "UTF-8")

    def grams(self, texts):
        """The n-gram strings of each text: ragged ``[batch, None]`` (steps 1-3)."""
        tokens = tf.strings.split(self.fold(texts), sep=" ")
        tokens = tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)
        parts = [tf.strings.ngrams(tokens, list(range(1, self.word_ngrams + 1)),
                                   separator=" ")]
        if self.char_ngrams:
            chars = tf.strings.unicode_split(tokens, "UTF-8")
            cg = tf.strings.ngrams(chars, self.char_ngrams, separator="",
                                   pad_values=("<", ">"), padding_width=1,
                                   preserve_short_sequences=True).merge_dims(1, 2)
            parts.append(cg.with_flat_values(
                tf.strings.join([CHAR_GRAM_PREFIX, cg.flat_values])))
        return tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]

    def hashed(self, texts):
        """``(rows, ids, counts, nrows)``: each (text, feature) pair once, ascending by
        text then id, with how many of the text's grams hashed to it."""
        grams = self.grams(texts)
        d = tf.constant(self.num_features, tf.int64)
        ids = tf.strings.to_hash_bucket_fast(grams.flat_values, self.num_features)
        keys = tf.sort(grams.value_rowids() * d + ids)
        unique, _, counts = tf.unique_with_counts(keys, out_idx=tf.int64)
        return unique // d, unique % d, counts, grams.nrows()

    def call(self, inputs):
        texts = tf.convert_to_tensor(inputs)
        if texts.shape.rank == 2:
            texts = tf.squeeze(texts, axis=1)
        rows, ids, counts, nrows = self.hashed(texts)
        tf_ = tf.cast(counts, tf.float32)
        if self.sublinear_tf:
            tf_ = 1.0 + tf.math.log(tf_)
        if self.weighting == "tfidf":
            n = tf.cast(self.num_documents, tf.float64)
            df = tf.cast(tf.gather(self.document_frequency, ids), tf.float64)
            idf = tf.cast(tf.math.log((1.0 + n) / (1.0 + df)) + 1.0, tf.float32)
            values = tf_ * idf
        else:
            values = tf_
        norm = tf.math.unsorted_segment_sum(tf.square(values), rows, nrows)
        values = values * tf.gather(tf.math.rsqrt(tf.maximum(norm, 1e-30)), rows)
        ragged_ids = tf.RaggedTensor.from_value_rowids(ids, rows, nrows)
        ragged_values = tf.RaggedTensor.from_value_rowids(values, rows, nrows)
        return {"feature_ids": ragged_ids.to_tensor(default_value=-1),
                "feature_values": ragged_values.to_tensor(default_value=0.0)}

    def compute_output_spec(self, inputs):
        batch = inputs.shape[0]
        return {"feature_ids": keras.KerasTensor((batch, None), dtype="int64"),
                "feature_values": keras.KerasTensor((batch, None), dtype="float32")}

    # -- statistics ----------------------------------------------------------------------
    def adapt(self, data, batch_size: int = 1024, steps: int | None = None) -> None:
        """Counts document frequencies over ``data`` and stores them in the layer.

        Args:
            data: A ``tf.data.Dataset`` of string batches (or of dicts with ``"text"``), or
                a list / array of strings.
            batch_size: Batch size when ``data`` is a list or array.
            steps: Stop after this many batches (default: all).
        """
        if not self.built:
            self.build(None)
        if not isinstance(data, tf.data.Dataset):
            data = tf.data.Dataset.from_tensor_slices(
                tf.constant(np.asarray(list(data), dtype=object), tf.string)).batch(batch_size)
        df = np.zeros(self.num_features, np.int64)
        n = 0
        count = tf.function(self._document_ids,
                            input_signature=[tf.TensorSpec([None], tf.string)],
                            autograph=False)
        for i, batch in enumerate(data):
            if steps is not None and i >= steps:
                break
            texts = batch["text"] if isinstance(batch, dict) else batch
            ids, rows = count(tf.reshape(texts, [-1]))
            df += np.bincount(ids.numpy(), minlength=self.num_features)
            n += int(rows.numpy())
        self.set_statistics(df, n)

    def _document_ids(self, texts):
        _, ids, _, nrows = self.hashed(texts)
        return ids, nrows

    def set_statistics(self, document_frequency, num_documents: int) -> None:
        """Sets the document frequencies (int ``[D]``) and the number of documents."""
        if not self.built:
            self.build(None)
        df = np.asarray(document_frequency)
        if df.shape != (self.num_features,) or df.dtype.kind not in "iu":
            raise ValueError(f"document frequencies must be integers of shape "
                             f"({self.num_features},), got {df.dtype} {df.shape}")
        if int(num_documents) < 0 or (df.size and (df.min() < 0 or df.max() > num_documents)):
            raise ValueError(f"document frequencies must lie in [0, num_documents="
                             f"{num_documents}]")
        self.document_frequency.assign(df.astype(np.int64))
        self.num_documents.assign(np.int64(num_documents))

    def statistics(self) -> tuple[np.ndarray, int]:
        """``(document_frequency [D] int64, num_documents)``."""
        return (np.asarray(self.document_frequency, dtype=np.int64),
                int(np.asarray(self.num_documents)))

    def fold_table_sha256(self) -> str:
        return table_sha256(np.asarray(self.fold_keys), np.asarray(self.fold_offsets),
                            np.asarray(self.fold_values))

    def get_config(self):
        config = super().get_config()
        config.update(num_features=self.num_features, **self.settings())
        return config
