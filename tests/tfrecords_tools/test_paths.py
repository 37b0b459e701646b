"""Path arguments as users write them: ``~`` and ``$VAR`` expanded by every public entry
point, never taken as folder names."""

import os

import pytest

from mach_tf.datasets.synthetic import SyntheticSpec, write_split
from tfrecords_tools.convert import convert
from tfrecords_tools.paths import expand_path
from tfrecords_tools.verification import verify


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh HOME, and a working directory elsewhere (where a literal '~' would land)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MACH_SCRATCH", str(home / "scratch"))
    monkeypatch.chdir(tmp_path)
    return home


def test_expand_path(home):
    assert expand_path("~/runs/r1") == f"{home}/runs/r1"
    assert expand_path("$MACH_SCRATCH/x") == expand_path("${MACH_SCRATCH}/x") == \
        f"{home}/scratch/x"
    assert expand_path(home / "a") == f"{home}/a"
    assert expand_path(None) is None
    assert expand_path("gs://bucket/~/$HOME") == "gs://bucket/~/$HOME"
    assert expand_path("$MACH_UNSET_VARIABLE/x") == "$MACH_UNSET_VARIABLE/x"


def test_write_convert_and_verify_under_home(home, tmp_path):
    spec = SyntheticSpec(num_labels=10, num_features=30, seed=3)
    train, _ = write_split("~/data", spec, 40, 10)
    assert train == f"{home}/data/train.txt"
    m = convert("~/data/train.txt", "$MACH_SCRATCH/train")
    assert m.num_examples == 40
    assert verify("~/scratch/train").num_examples == 40
    assert os.path.exists(home / "scratch" / "train.manifest.json")
    assert not os.path.exists(tmp_path / "~") and not os.path.exists(tmp_path / "$MACH_SCRATCH")
