"""The text featuriser in plain Python and numpy, independent of the graph.

Computes what :class:`mach_tf.text.TextFeaturizer` computes (same fold table, same grams,
FarmHash through :mod:`mach_tf.text.farmhash`, same weighting), written separately so that a
bug in the graph (a wrong n-gram, hash, merge or weight) shows up as a difference. Export
verification featurises its sample queries here and checks that ``predict_text`` on the
raw strings answers like ``serving_default`` on these features; tests compare the two on
adversarial strings. It is slow (pure Python hashing): meant for a few thousand texts.
"""

from __future__ import annotations

import math

import numpy as np

from mach_tf.text.farmhash import fingerprint64
from mach_tf.text.normalization import fold_text

CHAR_GRAM_PREFIX = "#"


def tokens(text: str, table=None) -> list[str]:
    """The words of ``text`` after folding (split on spaces, empty pieces dropped)."""
    return [t for t in fold_text(text, table).split(" ") if t]


def _ngrams(seq: list[str], n: int, sep: str) -> list[str]:
    return [sep.join(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def char_ngrams(word: str, n: int) -> list[str]:
    """Character n-grams of ``<word>``; the whole ``<word>`` when it is shorter than n."""
    padded = ["<"] + list(word) + [">"]
    if len(padded) < n:
        return ["".join(padded)]
    return _ngrams(padded, n, "")


def grams(text: str, word_ngrams: int = 2, char_ngrams_width: int = 0,
          table=None) -> list[str]:
    """Every n-gram string of ``text`` that gets hashed (with repeats)."""
    words = tokens(text, table)
    out = [g for n in range(1, word_ngrams + 1) for g in _ngrams(words, n, " ")]
    if char_ngrams_width:
        out += [CHAR_GRAM_PREFIX + g for w in words for g in char_ngrams(w, char_ngrams_width)]
    return out


def featurize(texts, num_features: int, word_ngrams: int = 2, char_ngrams: int = 0,
              weighting: str = "tfidf", sublinear_tf: bool = True,
              document_frequency=None, num_documents: int = 0,
              table=None) -> list[tuple[list[int], list[float]]]:
    """Sparse features of each text: ``[(ids ascending, values), ...]``.

    Args:
        texts: Strings (or UTF-8 bytes).
        num_features: D.
        word_ngrams, char_ngrams, weighting, sublinear_tf: The featuriser's settings.
        document_frequency: int ``[D]`` (``None``: all zero, i.e. idf 1).
        num_documents: N.
        table: The fold table ``(keys, offsets, values)`` (default: this Python's).

    Raises:
        UnicodeDecodeError: for bytes that are not UTF-8 (the graph refuses them too).
    """
    df = None if document_frequency is None else np.asarray(document_frequency, np.int64)
    rows = []
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        counts: dict[int, int] = {}
        for g in grams(text, word_ngrams, char_ngrams, table):
            i = fingerprint64(g) % num_features
            counts[i] = counts.get(i, 0) + 1
        ids = sorted(counts)
        tf_ = np.asarray([counts[i] for i in ids], np.float32)
        if sublinear_tf:
            tf_ = np.float32(1.0) + np.log(tf_)
        if weighting == "tfidf":
            d = np.zeros(len(ids)) if df is None else df[ids].astype(np.float64)
            idf = (np.log((1.0 + num_documents) / (1.0 + d)) + 1.0).astype(np.float32)
            values = tf_ * idf
        else:
            values = tf_
        norm = math.sqrt(float(np.sum(values.astype(np.float64) ** 2)))
        values = (values / np.float32(max(norm, 1e-15))).astype(np.float32)
        rows.append((ids, values.tolist()))
    return rows


def featurize_like(layer, texts) -> list[tuple[list[int], list[float]]]:
    """:func:`featurize` with the settings, statistics and fold table held by ``layer``
    (a :class:`mach_tf.text.TextFeaturizer`), read from its weights."""
    df, n = layer.statistics()
    table = (np.asarray(layer.fold_keys), np.asarray(layer.fold_offsets),
             np.asarray(layer.fold_values))
    return featurize(texts, layer.num_features, document_frequency=df, num_documents=n,
                     table=table, **layer.settings())
