"""Deterministic 2-universal hashing of classes into buckets.

Repetition ``r`` maps class ``c`` to bucket

    h_r(c) = ((a_r * c + b_r) mod p) mod B

with the Mersenne prime ``p = 2**31 - 1``, ``1 <= a_r < p`` and ``0 <= b_r < p``
(Carter and Wegman's family). Every operand is below ``2**31``, so ``a_r * c + b_r`` is
below ``2**62`` and the arithmetic is exact in signed 64-bit integers, in numpy and in the
TensorFlow graph alike. The coefficients are drawn once from a seeded numpy generator and
persisted in the run's ``config.json``; everything downstream (training targets,
evaluation, the serving graph) reads them back from there and never re-derives them.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

#: The Mersenne prime 2**31 - 1: class ids and coefficients stay below it, so products fit
#: in int64 exactly.
PRIME = 2_147_483_647
#: The largest number of classes the family supports (class ids must be < PRIME).
MAX_CLASSES = PRIME - 1


@dataclasses.dataclass(frozen=True)
class HashFamily:
    """R seeded 2-universal hash functions from classes to ``num_buckets`` buckets.

    Attributes:
        a: Multipliers, one per repetition, each in ``[1, PRIME)``.
        b: Offsets, one per repetition, each in ``[0, PRIME)``.
        num_buckets: B, the number of buckets of every repetition.
        prime: The modulus p (always ``PRIME``; stored so that configs are explicit).
    """

    a: tuple[int, ...]
    b: tuple[int, ...]
    num_buckets: int
    prime: int = PRIME

    def __post_init__(self):
        if len(self.a) != len(self.b):
            raise ValueError(f"HashFamily: {len(self.a)} multipliers but {len(self.b)} offsets")
        if not 1 <= self.num_buckets < self.prime:
            raise ValueError(f"HashFamily: num_buckets must be in [1, {self.prime}), "
                             f"got {self.num_buckets}")
        for i, (a, b) in enumerate(zip(self.a, self.b)):
            if not (1 <= a < self.prime and 0 <= b < self.prime):
                raise ValueError(f"HashFamily: coefficients of repetition {i} out of range: "
                                 f"a={a}, b={b}, p={self.prime}")

    @classmethod
    def from_seed(cls, num_repetitions: int, num_buckets: int, seed: int) -> "HashFamily":
        """Draws ``num_repetitions`` independent functions from a seeded generator."""
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4D414348]))
        a = rng.integers(1, PRIME, size=num_repetitions, dtype=np.int64)
        b = rng.integers(0, PRIME, size=num_repetitions, dtype=np.int64)
        return cls(tuple(int(x) for x in a), tuple(int(x) for x in b), int(num_buckets))

    @property
    def num_repetitions(self) -> int:
        return len(self.a)

    def subset(self, repetitions: Sequence[int]) -> "HashFamily":
        """The functions of the given repetitions, in that order."""
        return HashFamily(tuple(self.a[r] for r in repetitions),
                          tuple(self.b[r] for r in repetitions), self.num_buckets, self.prime)

    # -- numpy ---------------------------------------------------------------------------
    def buckets_np(self, classes, repetitions: Sequence[int] | None = None) -> np.ndarray:
        """Buckets of ``classes`` (any int array) for each repetition.

        Returns:
            int64 array of shape ``[len(repetitions), *classes.shape]``.
        """
        reps = range(self.num_repetitions) if repetitions is None else repetitions
        c = np.asarray(classes, dtype=np.int64)
        a = np.asarray([self.a[r] for r in reps], dtype=np.int64).reshape((-1,) + (1,) * c.ndim)
        b = np.asarray([self.b[r] for r in reps], dtype=np.int64).reshape((-1,) + (1,) * c.ndim)
        return ((a * c + b) % self.prime) % self.num_buckets

    def table(self, num_classes: int, dtype=np.int32) -> np.ndarray:
        """The class -> bucket table, shape ``[R, K]``."""
        _check_num_classes(num_classes)
        out = np.empty((self.num_repetitions, num_classes), dtype=dtype)
        # Chunked so that K = 10**8 never needs an [R, K] int64 temporary.
        step = 1 << 22
        for start in range(0, num_classes, step):
            stop = min(num_classes, start + step)
            out[:, start:stop] = self.buckets_np(np.arange(start, stop, dtype=np.int64))
        return out

    def inverted_index(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """The bucket -> classes index of every repetition, in CSR form.

        Returns:
            ``(offsets, classes)``: ``offsets`` int64 ``[R, B + 1]`` and ``classes`` int32
            ``[R, K]``; the classes of bucket ``j`` of repetition ``r`` are
            ``classes[r, offsets[r, j]:offsets[r, j + 1]]``, in increasing order.
        """
        table = self.table(num_classes)
        num_r = self.num_repetitions
        offsets = np.zeros((num_r, self.num_buckets + 1), dtype=np.int64)
        classes = np.empty((num_r, num_classes), dtype=np.int32)
        for r in range(num_r):
            counts = np.bincount(table[r], minlength=self.num_buckets)
            np.cumsum(counts, out=offsets[r, 1:])
            # A stable sort keeps the classes of each bucket in increasing order.
            classes[r] = np.argsort(table[r], kind="stable").astype(np.int32)
        return offsets, classes

    # -- TensorFlow ----------------------------------------------------------------------
    def buckets_tf(self, classes, repetitions: Sequence[int] | None = None):
        """The same function as :meth:`buckets_np`, as TensorFlow ops (int64)."""
        import tensorflow as tf

        reps = range(self.num_repetitions) if repetitions is None else repetitions
        return buckets_tf(classes,
                          tf.constant([self.a[r] for r in reps], tf.int64),
                          tf.constant([self.b[r] for r in reps], tf.int64),
                          self.num_buckets, self.prime)

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"family": "carter_wegman", "prime": self.prime, "num_buckets": self.num_buckets,
                "a": list(self.a), "b": list(self.b)}

    @classmethod
    def from_dict(cls, d: dict) -> "HashFamily":
        if d.get("family", "carter_wegman") != "carter_wegman":
            raise ValueError(f"unknown hash family {d.get('family')!r}")
        return cls(tuple(int(x) for x in d["a"]), tuple(int(x) for x in d["b"]),
                   int(d["num_buckets"]), int(d.get("prime", PRIME)))


def buckets_tf(classes, a, b, num_buckets: int, prime: int = PRIME):
    """``((a * c + b) mod p) mod B`` in the TensorFlow graph with exact int64 arithmetic.

    Args:
        classes: Integer tensor of any shape ``S`` (class ids in ``[0, p)``).
        a: int64 tensor ``[G]`` of multipliers.
        b: int64 tensor ``[G]`` of offsets.
        num_buckets: B.
        prime: p.

    Returns:
        int64 tensor of shape ``[G, *S]``.
    """
    import tensorflow as tf

    c = tf.cast(classes, tf.int64)
    rank = tf.rank(c)
    shape = tf.concat([[-1], tf.ones([rank], tf.int32)], axis=0)
    a = tf.reshape(tf.cast(a, tf.int64), shape)
    b = tf.reshape(tf.cast(b, tf.int64), shape)
    p = tf.constant(prime, tf.int64)
    return tf.math.floormod(tf.math.floormod(a * c[tf.newaxis] + b, p),
                            tf.constant(num_buckets, tf.int64))


def _check_num_classes(num_classes: int) -> None:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [1, {MAX_CLASSES}], got {num_classes}")
