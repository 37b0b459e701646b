"""The text featuriser: hash stability (golden values), the normalisation table (pinned),
agreement of the graph with the pure-Python reference, the .keras round trip, adapt, and
the settings recorded in the config."""

import json
import random
import unicodedata

import keras
import numpy as np
import pytest
import tensorflow as tf

from mach_tf.config import MachConfig, TextSettings
from mach_tf.text.farmhash import fingerprint64, hash_bucket
from mach_tf.text.featurizer import TextFeaturizer
from mach_tf.text.normalization import fold_table, fold_text, table_sha256
from mach_tf.text.reference import featurize, featurize_like, grams
from mach_tf.text.statistics import statistics_sha256

# FarmHash Fingerprint64, the hash of tf.strings.to_hash_bucket_fast: fixed forever and on
# every platform. These values were computed once and must never change; if they do, every
# trained text model would silently read other features.
GOLDEN_FINGERPRINTS = {
    "": 11160318154034397263,
    "a": 12917804110809363939,
    "red": 991092756973969910,
    "red shoes": 14233081532990773702,
    "#<sh": 16067507232745371375,
    "crème brûlée": 2654486557888217681,
    "x" * 17: 11306081951414300581,
    "y" * 40: 276292113409495006,
    "z" * 64: 294799756062990872,
    "q" * 65: 7692644312256273193,
    "the quick brown fox jumps over the lazy dog, then over the lazy cat, then home again":
        17648060347484947677,
}
# SHA-256 of the normalisation table. Measured identical on Python 3.8, 3.9, 3.10, 3.11,
# 3.12 and 3.13 (Unicode 12.1 .. 15.1; see mach_tf/text_fold.py for why it is stable).
GOLDEN_FOLD_TABLE = "4bd40fdd75f0bda4324f547da20fbfc92ceb3a0f37d8872d43141a75c083404c"
# Feature ids of one query under the default settings plus character trigrams, D = 2^16.
GOLDEN_FEATURES = [1042, 13449, 14850, 16685, 22381, 25078, 31542, 31720, 32473, 34184,
                   38334, 38753, 46831, 50184, 53107, 57882, 59401, 61139, 61431, 62809]


def random_texts(n, seed=0, max_len=40):
    """Adversarial strings: cases, accents composed and decomposed, compatibility forms,
    other scripts, emoji, controls, odd white space, repeats."""
    rng = random.Random(seed)
    alphabet = list("abcdeABCDE    ,.!-_'/") + [
        "é", "É", "ß", "ﬁ", "İ", "ı", "Σ", "ς", "①", "½", "ｆ", "Ｇ", "\u0301", "\u0308", "न",
        "म", "स्", "😀", "\u00a0", "\u2028", "\x00", "\t", "中", "文", "\ufffd", "\u200b",
        "\U0001d400", "Å", "Ω", "ǅ", "ŉ"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, max_len)))
            for _ in range(n)]


# -- hashing -------------------------------------------------------------------------------
def test_fingerprint_golden_values():
    for text, value in GOLDEN_FINGERPRINTS.items():
        assert fingerprint64(text) == value, text
    ours = [hash_bucket(t, 2**16) for t in GOLDEN_FINGERPRINTS]
    theirs = tf.strings.to_hash_bucket_fast(list(GOLDEN_FINGERPRINTS), 2**16).numpy()
    assert theirs.tolist() == ours


def test_python_fingerprint_equals_tensorflow_on_every_length():
    rng = random.Random(1)
    data = [bytes(rng.randrange(256) for _ in range(n)) for n in range(0, 200)]
    data += [s.encode("utf-8") for s in random_texts(50, seed=2, max_len=150)]
    for modulus in (2**63 - 1, 1_000_003, 2**16):
        got = tf.strings.to_hash_bucket_fast(tf.constant(data), modulus).numpy().tolist()
        assert got == [fingerprint64(s) % modulus for s in data]


# -- normalisation -------------------------------------------------------------------------
def test_fold_table_is_pinned():
    keys, offsets, values = fold_table()
    assert table_sha256(keys, offsets, values) == GOLDEN_FOLD_TABLE
    assert np.all(np.diff(keys) > 0) and offsets[0] == 0 and offsets[-1] == len(values)


@pytest.mark.parametrize("text,folded", [
    ("Red Running-Shoes!", "red running shoes "),
    ("Crème BRÛLÉE", "creme brulee"),
    ("cre\u0300me", "creme"),
    ("ＦＵＬＬ ﬁne ① ½", "full fine 1 1 2"),
    ("Straße STRASSE", "strasse strasse"),
    ("ẞ", "ẞ"),  # U+1E9E came in Unicode 5.1: later than the table, passed through
    ("ΣΊΣΥΦΟΣ σίσυφος", "σισυφοσ σισυφοσ"),
    ("İstanbul", "istanbul"),
    ("नमस्ते", "नमस्ते"),
    ("a\tb\x00c\u00a0d\u2028e", "a b c d e"),
    ("emoji 😀", "emoji 😀"),
])
def test_fold_examples(text, folded):
    assert fold_text(text) == folded


def test_fold_does_not_depend_on_the_clients_normalisation():
    for text in random_texts(300, seed=3):
        forms = {fold_text(unicodedata.normalize(f, text))
                 for f in ("NFC", "NFD", "NFKC", "NFKD")}
        assert len(forms) == 1, text
        assert fold_text(fold_text(text)) == fold_text(text)


# -- the layer against the Python reference -------------------------------------------------
@pytest.mark.parametrize("settings", [
    {}, {"char_ngrams": 3}, {"word_ngrams": 3, "char_ngrams": 5},
    {"word_ngrams": 1, "weighting": "tf", "sublinear_tf": False}])
def test_layer_matches_python_reference(settings):
    texts = random_texts(300, seed=4)
    layer = TextFeaturizer(1024, **settings)  # small D: many collisions to merge
    layer.adapt(texts[:150], batch_size=64)
    out = layer(tf.constant(texts))
    ids, vals = out["feature_ids"].numpy(), out["feature_values"].numpy()
    assert ids.dtype == np.int64 and vals.dtype == np.float32
    for i, (ref_ids, ref_vals) in enumerate(featurize_like(layer, texts)):
        keep = ids[i] >= 0
        assert ids[i][keep].tolist() == ref_ids, texts[i]
        np.testing.assert_allclose(vals[i][keep], ref_vals, rtol=1e-6, atol=1e-7)
        assert np.all(ids[i][~keep] == -1) and np.all(vals[i][~keep] == 0)


def test_golden_features_and_normalisation_inside_the_layer():
    layer = TextFeaturizer(2**16, char_ngrams=3)
    out = layer(tf.constant(["Red Running-Shoes", "ＲＥＤ running shoes!", "", "?!"]))
    ids = out["feature_ids"].numpy()
    assert ids[0].tolist() == GOLDEN_FEATURES and ids[1].tolist() == GOLDEN_FEATURES
    assert np.all(ids[2:] == -1)
    np.testing.assert_allclose(np.sum(out["feature_values"].numpy()[:2] ** 2, axis=1), 1.0,
                               rtol=1e-6)
    assert sorted(set(grams("Red Running-Shoes"))) == [
        "red", "red running", "running", "running shoes", "shoes"]


def test_adapt_learns_document_frequencies():
    layer = TextFeaturizer(2**16, word_ngrams=1)
    layer.adapt(tf.data.Dataset.from_tensor_slices(
        ["red shoes", "red hat", "blue hat", "red red"]).batch(3))
    df, n = layer.statistics()
    assert n == 4 and df[hash_bucket("red", 2**16)] == 3 and df[hash_bucket("blue", 2**16)] == 1
    assert df.sum() == 7  # each document counts a feature once
    out = layer(tf.constant(["red blue"]))
    ids, vals = out["feature_ids"].numpy()[0], out["feature_values"].numpy()[0]
    weight = dict(zip(ids.tolist(), vals.tolist()))
    assert weight[hash_bucket("blue", 2**16)] > weight[hash_bucket("red", 2**16)]
    idf = lambda d: np.log(5 / (1 + d)) + 1  # noqa: E731
    np.testing.assert_allclose(weight[hash_bucket("blue", 2**16)],
                               idf(1) / np.hypot(idf(1), idf(3)), rtol=1e-6)
    with pytest.raises(ValueError, match="must lie in"):
        layer.set_statistics(df, 2)


def test_keras_round_trip_gives_identical_outputs(tmp_path):
    texts = random_texts(64, seed=5)
    layer = TextFeaturizer(4096, word_ngrams=2, char_ngrams=4, name="featurizer")
    layer.adapt(texts)
    inputs = keras.Input(shape=(), dtype="string")
    model = keras.Model(inputs, layer(inputs))
    path = str(tmp_path / "featurizer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    a, b = model(tf.constant(texts)), loaded(tf.constant(texts))
    for key in ("feature_ids", "feature_values"):
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    copy = loaded.get_layer("featurizer")
    assert copy.get_config() == layer.get_config()
    assert statistics_sha256(copy.statistics()[0]) == statistics_sha256(layer.statistics()[0])
    again = TextFeaturizer.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()


def test_bad_and_empty_input():
    layer = TextFeaturizer(256)
    with pytest.raises(tf.errors.InvalidArgumentError, match="valid UTF-8"):
        layer(tf.constant([b"fine", b"caf\xe9"]))
    empty = layer(tf.constant([], tf.string))
    assert empty["feature_ids"].shape == (0, 0)
    with pytest.raises(UnicodeDecodeError):
        featurize([b"caf\xe9"], 256)


def test_runs_inside_tf_data_like_eagerly():
    texts = random_texts(40, seed=6)
    layer = TextFeaturizer(512, char_ngrams=3)
    eager = layer(tf.constant(texts[:20]))
    batch = next(iter(tf.data.Dataset.from_tensor_slices(texts).batch(20).map(
        layer, num_parallel_calls=2)))
    for key in ("feature_ids", "feature_values"):
        np.testing.assert_array_equal(batch[key].numpy(), eager[key].numpy())


# -- settings in the config ----------------------------------------------------------------
def test_settings_round_trip_through_the_config():
    text = TextSettings(char_ngrams=3).to_dict()
    config = MachConfig.from_data(100, 4096, text=text)
    again = MachConfig.from_json(config.to_json())
    assert again == config and again.text["char_ngrams"] == 3
    assert json.loads(config.to_json())["text"]["statistics"] == "text_statistics.npy"
    assert MachConfig.from_data(100, 50).text is None


@pytest.mark.parametrize("change,message", [
    ({"char_ngrams": 1}, "char_ngrams: 1 would only count letters"),
    ({"word_ngrams": 0}, "word_ngrams: must be an integer in"),
    ({"weighting": "bm25"}, "weighting: must be one of"),
    ({"statistics": "../x.npy"}, "statistics: must be a file name"),
    ({"num_documents": 3}, "set together"),
    ({"colour": 1}, "unknown field"),
])
def test_bad_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        MachConfig.from_data(100, 4096, text={**TextSettings().to_dict(), **change})


# -- synthetic queries ---------------------------------------------------------------------
def test_synthetic_queries_are_deterministic_and_roughened(tmp_path):
    from mach_tf.datasets.synthetic_text import (NOISE_WORDS, TextNoise, generate_text, text_spec,
                                                 word)
    from tfrecords_tools.text_format import QueryReader

    spec = text_spec(50, seed=7)
    first = list(generate_text(spec, 300, seed=1))
    assert first == list(generate_text(spec, 300, seed=1))
    assert first != list(generate_text(spec, 300, seed=2))
    vocabulary = {word(spec, f) for f in range(spec.num_features)} | set(NOISE_WORDS)
    assert len(vocabulary) == spec.num_features + len(NOISE_WORDS)  # words are distinct
    clean = list(generate_text(spec, 300, seed=1, noise=TextNoise(1.0, 0, 0, 0, 0)))
    assert all(w in vocabulary for _, text in clean for w in text.split())
    assert [labels for labels, _ in clean] == [labels for labels, _ in first]
    rough = [w for _, text in first for w in text.split()]
    assert sum(w not in vocabulary for w in rough) > 0.15 * len(rough)  # typos, case, ...
    assert {fold_text(w).strip() for w in rough} - vocabulary  # misspellings survive folding
    from mach_tf.datasets.synthetic_text import write_text

    path = write_text(tmp_path / "q.tsv", spec, 100, seed=3)
    points = list(QueryReader(path, num_labels=50))
    assert len(points) == 100 and all(p.labels and p.text for p in points)
