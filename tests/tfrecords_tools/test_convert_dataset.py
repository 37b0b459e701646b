"""Conversion to sharded TFRecords and the tf.data reader: a lossless round trip."""

import json

import numpy as np
import pytest

from tests.helpers import run_cli
from tfrecords_tools.convert import convert
from tfrecords_tools.dataset import make_dataset
from tfrecords_tools.manifest import Manifest
from tfrecords_tools.parse import read_points


def _read_all(prefix, **kw):
    rows = []
    for batch in make_dataset(prefix, 7, **kw):
        for ids, vals, labels in zip(batch["feature_ids"].to_list(),
                                     batch["feature_values"].to_list(),
                                     batch["labels"].to_list()):
            rows.append((tuple(labels), tuple(ids), tuple(np.float32(vals).tolist())))
    return rows


@pytest.mark.parametrize("compression", ["NONE", "GZIP"])
def test_round_trip(tmp_path, tiny_data, compression):
    prefix = str(tmp_path / "rt")
    m = convert(tiny_data["train_txt"], prefix, num_shards=3, compression=compression)
    assert m.num_examples == 800 and len(m.shards) == 3 and sum(m.shard_counts) == 800
    assert all(s.endswith(".tfrecord.gz" if compression == "GZIP" else ".tfrecord")
               for s in m.shards)
    expected = sorted((tuple(p.labels), tuple(p.feature_ids),
                       tuple(np.float32(p.feature_values).tolist()))
                      for p in read_points(tiny_data["train_txt"]))
    assert sorted(_read_all(prefix)) == expected


def test_manifest_contents(tmp_path, tiny_data, tiny_spec):
    prefix = str(tmp_path / "m")
    convert(tiny_data["train_txt"], prefix, num_shards=2)
    d = json.loads((tmp_path / "m.manifest.json").read_text())
    for key in ("num_examples", "num_features", "num_labels", "shards", "compression",
                "format_version"):
        assert key in d
    assert d["num_features"] == tiny_spec.num_features
    assert d["num_labels"] == tiny_spec.num_labels
    assert d["shards"] == ["m-00000-of-00002.tfrecord", "m-00001-of-00002.tfrecord"]
    assert d["lines_read"] == 800 and d["skipped"] == []


def test_shuffle_is_seeded_and_complete(tiny_data):
    a = _read_all(tiny_data["train"], shuffle=True, seed=5)
    b = _read_all(tiny_data["train"], shuffle=True, seed=5)
    assert a == b
    assert sorted(a) == sorted(_read_all(tiny_data["train"]))
    assert a != _read_all(tiny_data["train"])


def test_missing_shard_is_named(tmp_path, tiny_data):
    prefix = str(tmp_path / "x")
    m = convert(tiny_data["test_txt"], prefix, num_shards=2)
    (tmp_path / m.shards[1]).unlink()
    with pytest.raises(FileNotFoundError, match=m.shards[1]):
        Manifest.load(prefix)


def test_skipped_lines_are_listed_in_manifest(tmp_path):
    src = tmp_path / "dirty.txt"
    src.write_text("3 10 4\n1 2:1\n1 2:oops\n2 3:1\n")
    m = convert(str(src), str(tmp_path / "d"), on_error="skip")
    assert m.num_examples == 2 and m.lines_read == 3
    assert m.skipped == [{"line": 3, "reason": "malformed value 'oops' of feature 2: "
                                               "expected a decimal number"}]


def test_the_same_file_converts_to_the_same_bytes_in_every_process(tmp_path):
    """Protobuf orders a map's entries per process unless asked not to; the records'
    bytes must not move with it, since the validation split is a keyed hash of them."""
    rng = np.random.default_rng(3)
    lines = ["40 30 12"]
    for _ in range(40):
        labels = sorted(rng.choice(12, 2, replace=False))
        feats = sorted(rng.choice(30, 4, replace=False))
        lines.append(",".join(map(str, labels)) + " " +
                     " ".join(f"{f}:{rng.random():.3f}" for f in feats))
    source = tmp_path / "points.txt"
    source.write_text("\n".join(lines) + "\n")
    shards = []
    for i, seed in enumerate(["1", "2", "3"]):
        proc = run_cli("convert", source, tmp_path / f"out{i}" / "train",
                       env={"PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        shards.append((tmp_path / f"out{i}" / "train-00000-of-00001.tfrecord").read_bytes())
    assert shards[0] == shards[1] == shards[2]
