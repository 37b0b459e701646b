"""The TFDS builder for XMC-format files: offline preparation from a manual_dir, and
training mach-tf on its output."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from mach_tf.datasets import tfds_xmc  # noqa: E402  (registers "xmc")
from mach_tf.datasets.synthetic import SyntheticSpec, write_split  # noqa: E402
from tfrecords_tools.parse import read_points  # noqa: E402


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("manual")
    spec = SyntheticSpec(num_labels=40, num_features=150, seed=11)
    write_split(d / "generic", spec, 500, 80)
    return d


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, manual_dir):
    tfds.disable_progress_bar()
    data_dir = tmp_path_factory.mktemp("tfds")
    return str(data_dir), tfds_xmc.prepare("xmc/generic", str(data_dir), str(manual_dir))


def test_tfds_load_offline_matches_the_text(manual_dir, prepared):
    data_dir, _ = prepared
    ds, info = tfds.load("xmc/generic", split="test", data_dir=data_dir, with_info=True,
                         download_and_prepare_kwargs={"download_config":
                                                      tfds.download.DownloadConfig(
                                                          manual_dir=str(manual_dir))})
    assert info.splits["train"].num_examples == 500
    assert info.metadata["num_features"] == 150 and info.metadata["num_labels"] == 40
    got = sorted((tuple(ex["labels"]), tuple(ex["feature_ids"]))
                 for ex in tfds.as_numpy(ds))
    want = sorted((tuple(p.labels), tuple(p.feature_ids))
                  for p in read_points(manual_dir / "generic" / "test.txt"))
    assert got == want


def test_prepared_splits_train_with_mach_tf(tmp_path, prepared):
    from mach_tf.config import MachConfig
    from mach_tf.inference.evaluation import evaluate
    from mach_tf.launch.local import train

    _, prefixes = prepared
    config = MachConfig.from_data(40, 150, num_buckets=16, num_repetitions=4,
                                  hidden_units=[32], epochs=5, batch_size=32,
                                  learning_rate=5e-3, seed=0)
    run = str(tmp_path / "run")
    summary = train(run, prefixes["train"], None, config, verbose=0, log=lambda m: None)
    assert summary["complete"] == 4
    metrics = evaluate(run, prefixes["test"])
    assert metrics["num_examples"] == 80 and metrics["p@1"] > 0.3


def test_missing_manual_files_are_named(tmp_path):
    (tmp_path / "manual" / "generic").mkdir(parents=True)
    (tmp_path / "manual" / "generic" / "test.txt").write_text("1 5 2\n0 1:1\n")
    with pytest.raises(FileNotFoundError, match="generic/train.txt: missing"):
        tfds_xmc.prepare("xmc/generic", str(tmp_path / "d"), str(tmp_path / "manual"))


def test_home_in_data_dir_is_expanded(tmp_path, manual_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    prefixes = tfds_xmc.prepare("xmc/generic", data_dir="~/tfds", manual_dir=str(manual_dir))
    assert prefixes["train"].startswith(str(tmp_path / "home" / "tfds"))
    assert not (tmp_path / "~").exists()


def test_known_configs():
    names = {c.name for c in tfds_xmc.Xmc.BUILDER_CONFIGS}
    assert {"bibtex", "delicious", "corel5k", "generic"} <= names
    assert np.all([c.description for c in tfds_xmc.Xmc.BUILDER_CONFIGS])
