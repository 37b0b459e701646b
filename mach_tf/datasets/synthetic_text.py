"""Synthetic labelled queries in the text format (``labels<TAB>text``).

The same generative story as :mod:`mach_tf.datasets.synthetic` (power-law label popularity,
clusters of labels), told in words, to look like a product-search query log:

* every feature id of the sparse generator is a **word** (three syllables, e.g.
  ``kovasi``; an id's word is fixed by the dataset's seed), so a label's prototype is a
  short "title": ``shared`` words of its cluster (a brand, say) then ``own`` words of its
  own, in that order;
* a query keeps each prototype word of each of its labels with probability ``keep`` (in
  order, so word bigrams carry signal), and mixes in **shared noise words** (``cheap``,
  ``for``, ``new``, ... drawn from a small common vocabulary with a power law, the same
  for every label);
* words are **misspelt** with probability ``typo`` (one deleted, swapped, replaced or
  doubled letter), **capitalised** or upper-cased now and then, given an **accent**
  (``kovási``) or trailing **punctuation**: what the featuriser's normalisation and its
  character n-grams are there to absorb.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator

import numpy as np

from mach_tf.datasets.synthetic import SyntheticSpec, _mix, generate, write_lines
from tfrecords_tools.paths import expand_path

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]  # 70
_ACCENTED = {"a": "á", "e": "é", "i": "í", "o": "ó", "u": "ü"}
#: Words shared by every label, drawn with a power law (the most common first).
NOISE_WORDS = ("for", "new", "best", "cheap", "with", "sale", "buy", "online", "men",
               "women", "kids", "set", "pack", "large", "small", "black", "white", "red",
               "original", "free", "shipping", "and", "the", "2024", "pro", "mini", "max",
               "lite", "plus", "gift")


@dataclasses.dataclass
class TextNoise:
    """How queries are roughened (see module docstring).

    Attributes:
        noise_words: Mean number of shared noise words per query (Poisson).
        typo: Probability that a word is misspelt.
        capitalize: Probability that a word is capitalised (and a tenth of that, upper-cased).
        accent: Probability that a word gets an accent on one vowel.
        punctuation: Probability that a word is followed by ``,``, ``!`` or ``.``.
    """

    noise_words: float = 1.0
    typo: float = 0.08
    capitalize: float = 0.2
    accent: float = 0.05
    punctuation: float = 0.05


def text_spec(num_labels: int, avg_labels: float = 1.5, seed: int = 0,
              vocabulary: int | None = None) -> SyntheticSpec:
    """A generator spec shaped like queries: 2 cluster words and 4 own words per label,
    each kept with probability 0.75, over a vocabulary of ``16 K`` words (at least 2,000)
    so that few labels share their own words by chance."""
    vocabulary = vocabulary or max(2000, 16 * num_labels)
    return SyntheticSpec(num_labels=num_labels, num_features=vocabulary,
                         avg_labels=avg_labels, cluster_size=8, shared=2, own=4, keep=0.75,
                         noise=0, seed=seed)


def word(spec: SyntheticSpec, feature_id: int) -> str:
    """The word standing for a feature id: the syllables of a seeded bijection of the id
    (so words are distinct), padded to three syllables with ones drawn from its hash."""
    v, base = spec.num_features, len(_SYLLABLES)
    digits = max(1, math.ceil(math.log(max(v, 2)) / math.log(base)))
    # A multiplier coprime with V: a bijection of [0, V).
    mult = int(_mix(np.array([spec.seed * 2 + 7], np.uint64))[0] % np.uint64(v)) | 1
    while math.gcd(mult, v) != 1:
        mult += 1
    x = (feature_id * mult + 12345) % v
    out = []
    for _ in range(digits):
        x, d = divmod(x, base)
        out.append(_SYLLABLES[d])
    h = int(_mix(np.array([feature_id * 2 + 1 + (spec.seed << 40)], np.uint64))[0])
    while len(out) < 3:
        h, d = divmod(h, base)
        out.append(_SYLLABLES[d])
    return "".join(out)


def _misspell(w: str, rng: np.random.Generator) -> str:
    if len(w) < 3:
        return w
    i = int(rng.integers(0, len(w) - 1))
    kind = int(rng.integers(0, 4))
    if kind == 0:  # deleted letter
        return w[:i] + w[i + 1:]
    if kind == 1:  # swapped neighbours
        return w[:i] + w[i + 1] + w[i] + w[i + 2:]
    if kind == 2:  # replaced letter
        return w[:i] + "abcdefghijklmnopqrstuvwxyz"[int(rng.integers(0, 26))] + w[i + 1:]
    return w[:i] + w[i] + w[i:]  # doubled letter


def _roughen(w: str, rng: np.random.Generator, noise: TextNoise) -> str:
    if rng.random() < noise.typo:
        w = _misspell(w, rng)
    if rng.random() < noise.accent:
        vowels = [i for i, c in enumerate(w) if c in _ACCENTED]
        if vowels:
            i = vowels[int(rng.integers(0, len(vowels)))]
            w = w[:i] + _ACCENTED[w[i]] + w[i + 1:]
    r = rng.random()
    if r < noise.capitalize / 10:
        w = w.upper()
    elif r < noise.capitalize:
        w = w[:1].upper() + w[1:]
    if rng.random() < noise.punctuation:
        w += ",!."[int(rng.integers(0, 3))]
    return w


def generate_text(spec: SyntheticSpec, num_points: int, seed: int = 0,
                  noise: TextNoise | None = None) -> Iterator[tuple[list[int], str]]:
    """Yields ``num_points`` labelled queries ``(labels, text)``.

    ``seed`` selects the sample (different seeds for train and test); ``spec.seed`` fixes
    the dataset (label popularity, prototypes, words).
    """
    noise = noise or TextNoise()
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, seed, 0x7E47]))
    weights = 1.0 / np.arange(1, len(NOISE_WORDS) + 1)
    weights /= weights.sum()
    words: dict[int, str] = {}
    for labels, _ids, _values in generate(spec, num_points, seed):
        out: list[str] = []
        for proto in spec.prototype(np.asarray(labels)):
            kept = [int(f) for f in proto if rng.random() < spec.keep]
            if not kept:  # every query names something of each of its labels
                kept = [int(proto[spec.shared + int(rng.integers(0, spec.own))])] \
                    if spec.own else [int(proto[0])]
            for f in kept:
                if f not in words:
                    words[f] = word(spec, f)
                out.append(words[f])
        for _ in range(int(rng.poisson(noise.noise_words))):
            pos = int(rng.integers(0, len(out) + 1))
            out.insert(pos, NOISE_WORDS[int(rng.choice(len(NOISE_WORDS), p=weights))])
        yield labels, " ".join(_roughen(w, rng, noise) for w in out)


def format_text_line(labels, text: str) -> str:
    return f"{','.join(map(str, labels))}\t{text}"


def write_text(path, spec: SyntheticSpec, num_points: int, seed: int = 0,
               noise: TextNoise | None = None) -> str:
    """Writes ``num_points`` labelled queries in the text format (UTF-8)."""
    path = os.fspath(path)
    write_lines(path, (format_text_line(labels, text)
                       for labels, text in generate_text(spec, num_points, seed, noise)))
    return path


def write_text_split(directory, spec: SyntheticSpec, num_train: int, num_test: int,
                     noise: TextNoise | None = None) -> tuple[str, str]:
    """Writes ``train.txt`` and ``test.txt`` (disjoint samples of the same dataset)."""
    directory = expand_path(directory)
    directory = os.fspath(directory)
    train = write_text(os.path.join(directory, "train.txt"), spec, num_train, 1, noise)
    test = write_text(os.path.join(directory, "test.txt"), spec, num_test, 2, noise)
    return train, test
