"""Run preparation: the config written or checked, the training data counted once.

Every worker and launcher calls :func:`prepare_run` before training: the first writes the
run's config (a text run's featuriser adapted first) and the facts of its training data;
later ones check that their config is the run's and that the data fits it.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.data import check_data
from mach_tf.model.encoders import install_encoder_file
from mach_tf.text.statistics import adapt_run
from tfrecords_tools import atomic
from tfrecords_tools.dataset import make_dataset
from tfrecords_tools.manifest import Manifest
from tfrecords_tools.verification import locate, located_read_errors


def count_labels(data, num_classes: int, num_features: int | None = None
                 ) -> tuple[np.ndarray, int]:
    """``(counts [K], num_examples)``: training frequency of every label.

    This is the one full pass over the training data before training, so it also checks
    what the manifest cannot promise: every label below ``num_classes`` and every feature
    id below ``num_features`` (nothing is clipped), and as many records as the manifest
    says. A corrupt shard is named
    (:func:`tfrecords_tools.verification.located_read_errors`).

    Raises:
        tfrecords_tools.ShardError: naming the shard at fault.
    """
    m = Manifest.load(data)
    counts = np.zeros(num_classes, dtype=np.int64)
    n = 0
    with located_read_errors(m):
        for batch in make_dataset(m, 8192, shuffle=False):
            labels = batch["labels"].flat_values.numpy()
            ids = batch["feature_ids"].flat_values.numpy() if "feature_ids" in batch \
                else np.zeros(0, np.int64)  # dense data: its width is the manifest's
            if (labels.size and (labels.min() < 0 or labels.max() >= num_classes)) or (
                    num_features is not None and ids.size
                    and (ids.min() < 0 or ids.max() >= num_features)):
                raise locate(m)
            counts += np.bincount(labels, minlength=num_classes)
            n += int(batch["labels"].nrows())
    if n != m.num_examples:
        raise locate(m)
    return counts, n


def prepare_run(run: str, config: MachConfig, train: str, valid: str | None = None) -> MachConfig:
    """Writes (or checks) the run's config and training-data facts (``train_data.json``,
    ``label_counts.npy``), the first thing every worker and launcher does."""
    if config.text is not None:  # count the text's document frequencies, once
        check_data(config, train, "training")
        config = adapt_run(run, config, train)
    config = rundir.ensure_config(run, config)
    check_data(config, train, "training")
    if config.encoder is not None and config.encoder["source"] == "file":
        install_encoder_file(run, config.encoder)  # every worker builds from the run's copy
    if valid:
        check_data(config, valid, "validation")
    path = rundir.train_data_path(run)
    if not tf.io.gfile.exists(path):
        m = Manifest.load(train)
        counts, _ = count_labels(train, config.num_classes, config.num_features)
        rundir.save_label_counts(run, counts)
        atomic.write_json(path, {
            "train": os.path.abspath(train) if "://" not in train else train,
            "valid": (os.path.abspath(valid) if valid and "://" not in valid else valid),
            "num_examples": m.num_examples, "num_features": m.num_features,
            "num_labels": m.num_labels})
    return config
