"""Shared fixtures: tiny synthetic datasets and a tiny trained run, built once per session.
Helpers that tests import (the CLI in a subprocess, serving an export both ways, the
in-Python reference top-k) are in :mod:`tests.helpers`."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")

from export.stitch import export_model  # noqa: E402  (after the environment is set)
from mach_tf.config import MachConfig  # noqa: E402
from mach_tf.datasets.synthetic import SyntheticSpec, write_split  # noqa: E402
from mach_tf.datasets.synthetic_dense import write_dense_split  # noqa: E402
from mach_tf.launch.local import train  # noqa: E402
from tfrecords_tools.convert import convert  # noqa: E402


@pytest.fixture(scope="session")
def tiny_spec():
    return SyntheticSpec(num_labels=60, num_features=300, avg_labels=1.8, seed=3)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_spec):
    """``{"dir", "train_txt", "test_txt", "train", "test"}``: text files and TFRecord
    prefixes of a tiny synthetic dataset."""
    d = tmp_path_factory.mktemp("tiny_data")
    train_txt, test_txt = write_split(d, tiny_spec, 800, 160)
    convert(train_txt, str(d / "tfr" / "train"), num_shards=2)
    convert(test_txt, str(d / "tfr" / "test"), num_shards=1)
    return {"dir": str(d), "train_txt": train_txt, "test_txt": test_txt,
            "train": str(d / "tfr" / "train"), "test": str(d / "tfr" / "test")}


@pytest.fixture(scope="session")
def tiny_config(tiny_spec):
    return MachConfig.from_data(tiny_spec.num_labels, tiny_spec.num_features, num_buckets=16,
                                num_repetitions=4, hidden_units=[32], epochs=3,
                                batch_size=64, group_size=2, learning_rate=3e-3, seed=1)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data, tiny_config):
    """A trained run directory (all repetitions complete). Do not modify it."""
    run = str(tmp_path_factory.mktemp("tiny_run") / "run")
    summary = train(run, tiny_data["train"], None, tiny_config, workers=1, verbose=0,
                    log=lambda m: None)
    assert summary["complete"] == tiny_config.num_repetitions
    return run


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_run):
    """``(path, result)`` of an exact-decoder export of ``tiny_run``."""
    base = tmp_path_factory.mktemp("tiny_export") / "mach"
    res = export_model(tiny_run, str(base), top_k=5, decoder="exact")
    return res.path, res


@pytest.fixture(scope="session")
def dense_data(tmp_path_factory):
    """``{"dir", "train", "test", "dim", "classes"}``: a small synthetic dense dataset (200
    classes, 32-wide vectors) converted with ``--format dense``."""
    d = tmp_path_factory.mktemp("dense_data")
    paths = write_dense_split(str(d / "raw"), 200, 32, 3000, 500, seed=1, noise=0.8)
    for name in ("train", "test"):
        convert(paths[name][0], str(d / "tfr" / name), fmt="dense",
                labels_path=paths[name][1], num_labels=200)
    return {"dir": str(d), "train": str(d / "tfr" / "train"), "test": str(d / "tfr" / "test"),
            "dim": 32, "classes": 200}
