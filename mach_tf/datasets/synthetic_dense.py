"""Synthetic dense vectors with power-law classes: the built-in data of dense runs.

Each class has a random unit centre in ``R^d``; a point draws its class from a power law
(``p_i`` proportional to ``(i + 1) ** -alpha``, so a few classes are frequent and most are
rare, as in real catalogues) and is its centre plus Gaussian noise, scaled to unit length.
A split is written as ``mach-tf convert --format dense`` reads it: a ``.npy`` float32
matrix and a label file of one line per row.
"""

from __future__ import annotations

import os

import numpy as np


def class_probabilities(num_classes: int, alpha: float) -> np.ndarray:
    """The power law over classes: ``p_i`` proportional to ``(i + 1) ** -alpha``."""
    p = np.arange(1, num_classes + 1, dtype=np.float64) ** -float(alpha)
    return p / p.sum()


def class_centres(num_classes: int, dim: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """A random unit centre per class, float32 ``[K, d]``."""
    rng = np.random.default_rng([seed, 0])
    out = np.empty((num_classes, dim), np.float32)
    for start in range(0, num_classes, chunk):
        c = rng.standard_normal((min(chunk, num_classes - start), dim)).astype(np.float32)
        out[start:start + len(c)] = c / np.linalg.norm(c, axis=1, keepdims=True)
    return out


def sample_points(centres: np.ndarray, n: int, seed: int, alpha: float = 1.0,
                  noise: float = 1.0, chunk: int = 65536):
    """``n`` points ``(x float32 [n, d], y int64 [n])``: labels from the power law, a point
    its class's centre plus Gaussian noise of expected length ``noise``, scaled to unit
    length. Generated ``chunk`` points at a time from ``seed``."""
    num_classes, dim = centres.shape
    rng = np.random.default_rng([seed, 1])
    cdf = np.cumsum(class_probabilities(num_classes, alpha))
    x = np.empty((n, dim), np.float32)
    y = np.empty(n, np.int64)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels = np.minimum(np.searchsorted(cdf, rng.random(m), side="right"),
                            num_classes - 1)
        pts = centres[labels] + rng.standard_normal((m, dim)).astype(np.float32) * (
            noise / np.sqrt(dim))
        x[start:start + m] = pts / np.linalg.norm(pts, axis=1, keepdims=True)
        y[start:start + m] = labels
    return x, y


def write_dense_split(directory: str, num_classes: int, dim: int, num_train: int,
                      num_test: int, seed: int = 0, alpha: float = 1.0,
                      noise: float = 1.0) -> dict:
    """Writes ``train.npy``/``train.labels`` and ``test.npy``/``test.labels`` in
    ``directory`` (one class per point) and returns their paths
    (``{"train": (npy, labels), "test": (npy, labels)}``)."""
    os.makedirs(directory, exist_ok=True)
    centres = class_centres(num_classes, dim, seed)
    out = {}
    for i, (name, n) in enumerate((("train", num_train), ("test", num_test))):
        x, y = sample_points(centres, n, seed * 2 + 1 + i, alpha=alpha, noise=noise)
        npy, labels = (os.path.join(directory, f"{name}.npy"),
                       os.path.join(directory, f"{name}.labels"))
        np.save(npy, x)
        with open(labels, "w", encoding="utf-8") as f:
            f.writelines(f"{int(c)}\n" for c in y)
        out[name] = (npy, labels)
    return out
