"""The validation split and the merged validation sample.

Early stopping and tuning score what users care about: the *merged* P@k of the
repetitions on held-out points. Without separate validation data, the held-out points are
carved from the training data by a keyed hash of each serialized record: every worker,
on any machine, holds out exactly the same points without coordination (and duplicate
records fall on the same side, so none leaks from training into validation). The test
split is never touched.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.data import evaluation_dataset
from tfrecords_tools import atomic
from tfrecords_tools.dataset import graph_only
from tfrecords_tools.manifest import Manifest

#: Resolution of the split: a record is held out when its hash in [0, 2^30) falls below
#: ``fraction * 2^30``.
_HASH_BUCKETS = 1 << 30
#: Second half of the SipHash key (the first is the config's seed): keeps the split
#: independent of any other hash of the same records.
_SPLIT_KEY = 0x56414C49  # "VALI"


def _holdout_mask(serialized, fraction: float, seed: int):
    bucket = tf.strings.to_hash_bucket_strong(serialized, _HASH_BUCKETS,
                                              key=[int(seed), _SPLIT_KEY])
    return bucket < int(round(fraction * _HASH_BUCKETS))


@dataclasses.dataclass(frozen=True)
class DataSplit:
    """Where training and validation points come from.

    Attributes:
        train: Training data prefix.
        valid: Validation data prefix: separate data, or ``train`` itself when carved.
        fraction: Share of ``train`` held out (0 when ``valid`` is separate data or no
            validation is wanted).
        seed: Key of the split's hash.
    """

    train: str
    valid: str | None
    fraction: float
    seed: int

    @property
    def carved(self) -> bool:
        return self.fraction > 0 and self.valid == self.train

    def train_filter(self):
        """The ``record_filter`` of the training side (``None``: every record)."""
        if not self.carved:
            return None
        fraction, seed = self.fraction, self.seed
        return graph_only(lambda s: tf.logical_not(_holdout_mask(s, fraction, seed)))

    def valid_filter(self):
        """The ``record_filter`` of the validation side (``None``: every record)."""
        if not self.carved:
            return None
        fraction, seed = self.fraction, self.seed
        return graph_only(lambda s: _holdout_mask(s, fraction, seed))

    def num_train_examples(self) -> int:
        """Expected training points (exact for separate validation data)."""
        n = Manifest.load(self.train).num_examples
        return max(1, int(round(n * (1.0 - self.fraction)))) if self.carved else n

    def to_dict(self) -> dict:
        return {"train": self.train, "valid": self.valid, "fraction": self.fraction,
                "seed": self.seed, "carved": self.carved}

    @classmethod
    def from_dict(cls, d: dict) -> "DataSplit":
        """The split :meth:`to_dict` (and so ``RUN/validation.json``) recorded."""
        return cls(d["train"], d["valid"], float(d["fraction"]), int(d["seed"]))


def data_split(config: MachConfig, train: str, valid: str | None = None) -> DataSplit:
    """The split of a run: separate ``valid`` data if given, else ``config.validation_fraction``
    of ``train`` carved out (none when that is 0)."""
    if valid:
        return DataSplit(train, valid, 0.0, config.seed)
    if config.validation_fraction > 0:
        return DataSplit(train, train, float(config.validation_fraction), config.seed)
    return DataSplit(train, None, 0.0, config.seed)


def record_split(run: str, split: DataSplit, sample: "ValidationSample | None") -> None:
    """Writes ``RUN/validation.json`` (what was held out) once."""
    path = rundir.validation_path(run)
    if tf.io.gfile.exists(path):
        return
    info = split.to_dict()
    info["num_scored"] = 0 if sample is None else sample.num_examples
    atomic.write_json(path, info)


@dataclasses.dataclass
class ValidationSample:
    """Validation points held in memory, as padded model inputs and true labels.

    Attributes:
        batches: ``(inputs, labels)`` pairs: inputs a dict of numpy ``feature_ids`` and
            ``feature_values`` ``[batch, n]``, labels a list of label-id lists.
    """

    batches: list

    @property
    def num_examples(self) -> int:
        return sum(len(labels) for _, labels in self.batches)

    @property
    def labels(self) -> list:
        return [y for _, labels in self.batches for y in labels]


def load_sample(split: DataSplit, max_examples: int, batch_size: int = 256,
                featurizer=None) -> ValidationSample | None:
    """The first ``max_examples`` validation points of ``split`` (``None`` without any),
    text data featurised by ``featurizer``.

    Raises:
        ValueError: when the split holds out no point at all (too small a fraction for
            the data), naming the data.
    """
    if split.valid is None:
        return None
    batches, n = [], 0
    for inputs, labels in evaluation_dataset(split.valid, batch_size, featurizer,
                                             record_filter=split.valid_filter()):
        take = min(len(labels.row_lengths()), max_examples - n)
        batches.append(({k: v.numpy()[:take] for k, v in inputs.items()},
                        labels.to_list()[:take]))
        n += take
        if n >= max_examples:
            break
    if n == 0:
        where = f"{split.fraction:.3g} of {split.train}" if split.carved else split.valid
        raise ValueError(f"{where}: the validation split holds no example; give --valid "
                         f"data or a larger validation_fraction")
    return ValidationSample(batches)


def sample_budget(config: MachConfig, bytes_budget: int = 256 << 20) -> int:
    """How many validation points the merged metric scores: at most
    ``config.validation_max_examples``, and few enough that the cached bucket scores of
    all R repetitions (``n * R * B`` floats) stay within ``bytes_budget``."""
    per_point = 4 * config.num_repetitions * config.num_buckets
    return int(max(1, min(config.validation_max_examples,
                          max(256, bytes_budget // per_point))))


def eval_batch_size(num_classes: int, default: int = 256) -> int:
    """A scoring batch whose ``[batch, K]`` merged scores stay near 64 MB."""
    return int(max(1, min(default, (16 << 20) // max(num_classes, 1))))


def steps_per_epoch(split: DataSplit, batch_size: int) -> int:
    return max(1, math.ceil(split.num_train_examples() / batch_size))
