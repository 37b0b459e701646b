"""Synthetic extreme-classification data with learnable structure.

The generative story, chosen to look like real catalogue data:

* **Labels** follow a power law: the label of popularity rank i is drawn with probability
  proportional to ``(i + 1) ** -zipf``; ranks map to label ids through a seeded affine
  bijection so popular labels are spread over the id range. A point carries
  ``1 + Poisson(avg_labels - 1)`` distinct labels.
* **Features** are a noisy mix of per-label sparse prototypes. Labels come in clusters of
  ``cluster_size``; a label's prototype is ``shared`` features of its cluster plus
  ``own`` features of its own, all derived from an integer hash of the ids (so nothing of
  size K is stored and K = 10**7 costs no memory). A point keeps each prototype feature of
  each of its labels with probability ``keep`` and adds ``noise`` uniformly random
  features. Values are uniform in ``[0.5, 1.5]``.

A classifier must learn which feature combinations identify a label inside its cluster, so
the task is learnable but not trivial, and always predicting the most popular labels scores
far lower (the ``floor``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator

import numpy as np

from tfrecords_tools import atomic
from tfrecords_tools.paths import expand_path

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-mixed integer hash (uint64 -> uint64)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


@dataclasses.dataclass
class SyntheticSpec:
    """Parameters of the generator (see module docstring).

    Attributes:
        num_labels: K.
        num_features: D.
        avg_labels: Mean labels per point (>= 1).
        zipf: Power-law exponent of label popularity.
        cluster_size: Labels per cluster.
        shared: Prototype features shared by a cluster.
        own: Prototype features of each label alone.
        keep: Probability that a point keeps each prototype feature.
        noise: Random features per point.
        seed: Seed of the label bijection and prototypes (the dataset's identity).
    """

    num_labels: int = 1000
    num_features: int = 5000
    avg_labels: float = 2.0
    zipf: float = 1.0
    cluster_size: int = 8
    shared: int = 6
    own: int = 8
    keep: float = 0.6
    noise: int = 6
    seed: int = 0

    def __post_init__(self):
        if self.num_labels < 1 or self.num_features < 2:
            raise ValueError("need num_labels >= 1 and num_features >= 2")
        if self.avg_labels < 1:
            raise ValueError(f"avg_labels must be >= 1, got {self.avg_labels}")
        # An odd multiplier coprime with K makes rank -> id a bijection.
        k = self.num_labels
        mult = int(_mix(np.array([self.seed * 2 + 1], np.uint64))[0] % np.uint64(max(k, 1)))
        mult = max(mult, 1)
        while math.gcd(mult, k) != 1:
            mult += 1
        self._mult = mult
        self._off = int(_mix(np.array([self.seed * 2 + 2], np.uint64))[0] % np.uint64(k))

    def label_of_rank(self, ranks: np.ndarray) -> np.ndarray:
        return (np.asarray(ranks, np.int64) * self._mult + self._off) % self.num_labels

    def prototype(self, labels: np.ndarray) -> np.ndarray:
        """Feature ids of each label's prototype: ``[n, shared + own]``."""
        labels = np.asarray(labels, np.int64)
        cluster = labels // self.cluster_size
        salt = np.uint64((self.seed + 1) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF)
        j_sh = np.arange(self.shared, dtype=np.uint64)
        j_own = np.arange(self.own, dtype=np.uint64) + np.uint64(1 << 20)
        with np.errstate(over="ignore"):
            sh = _mix((cluster.astype(np.uint64)[:, None] << np.uint64(24)) ^ j_sh ^ salt)
            ow = _mix(((labels.astype(np.uint64)[:, None] + np.uint64(1 << 40))
                       << np.uint64(22)) ^ j_own ^ salt)
        d = np.uint64(self.num_features)
        return np.concatenate([sh % d, ow % d], axis=1).astype(np.int64)


def _popularity_cdf(spec: SyntheticSpec) -> np.ndarray:
    w = np.arange(1, spec.num_labels + 1, dtype=np.float64) ** -spec.zipf
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def generate(spec: SyntheticSpec, num_points: int, seed: int = 0,
             chunk: int = 8192) -> Iterator[tuple[list[int], list[int], list[float]]]:
    """Yields ``num_points`` points ``(labels, feature_ids, feature_values)``.

    ``seed`` selects the sample (use different seeds for train and test) while
    ``spec.seed`` fixes the dataset's structure.
    """
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, seed, 0x5E7]))
    cdf = _popularity_cdf(spec)
    k = spec.num_labels
    done = 0
    while done < num_points:
        n = min(chunk, num_points - done)
        counts = np.minimum(1 + rng.poisson(spec.avg_labels - 1.0, size=n), k)
        draws = np.searchsorted(cdf, rng.random(int(counts.sum()) * 2), side="right")
        draws = spec.label_of_rank(np.minimum(draws, k - 1))
        pos = 0
        for i in range(n):
            labels: list[int] = []
            while len(labels) < counts[i]:
                if pos >= draws.size:
                    extra = np.searchsorted(cdf, rng.random(64), side="right")
                    draws = np.concatenate([draws, spec.label_of_rank(np.minimum(extra, k - 1))])
                lab = int(draws[pos])
                pos += 1
                if lab not in labels:
                    labels.append(lab)
            protos = spec.prototype(np.array(labels)).reshape(-1)
            kept = protos[rng.random(protos.size) < spec.keep]
            noise = rng.integers(0, spec.num_features, size=spec.noise)
            ids = np.unique(np.concatenate([kept, noise]))
            vals = np.round(rng.uniform(0.5, 1.5, size=ids.size), 3)
            yield sorted(labels), ids.tolist(), vals.tolist()
        done += n


def format_line(labels, ids, values) -> str:
    feats = " ".join(f"{i}:{v:g}" for i, v in zip(ids, values))
    return f"{','.join(map(str, labels))} {feats}"


def write_xmc(path, spec: SyntheticSpec, num_points: int, seed: int = 0) -> str:
    """Writes ``num_points`` points in the XMC repository text format."""
    path = os.fspath(path)
    lines = (format_line(*point) for point in generate(spec, num_points, seed))
    write_lines(path, lines, header=f"{num_points} {spec.num_features} {spec.num_labels}")
    return path


def write_lines(path: str, lines: Iterator[str], header: str | None = None,
                chunk: int = 4096) -> None:
    """Writes text lines (UTF-8) to ``path`` atomically, ``chunk`` lines per write."""
    path = expand_path(path)
    with atomic.writing(path, "w") as f:
        if header is not None:
            f.write(header + "\n")
        block: list[str] = []
        for line in lines:
            block.append(line)
            if len(block) >= chunk:
                f.write("\n".join(block) + "\n")
                block.clear()
        if block:
            f.write("\n".join(block) + "\n")


def write_split(directory, spec: SyntheticSpec, num_train: int,
                num_test: int) -> tuple[str, str]:
    """Writes ``train.txt`` and ``test.txt`` (disjoint samples of the same structure)."""
    directory = expand_path(directory)
    directory = os.fspath(directory)
    train = write_xmc(os.path.join(directory, "train.txt"), spec, num_train, seed=1)
    test = write_xmc(os.path.join(directory, "test.txt"), spec, num_test, seed=2)
    return train, test
