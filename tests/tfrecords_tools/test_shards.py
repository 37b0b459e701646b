"""Damaged TFRecord shards and manifests are named: eagerly when cheap (existence, sizes,
the manifest itself), by full verification, and when a read fails in the reader, at
training start, during model.fit and in evaluation. An interrupted conversion leaves no
manifest that looks complete."""

import importlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mach_tf import rundir
from mach_tf.inference.evaluation import evaluate
from mach_tf.launch.worker import train_worker
from mach_tf.training.prepare import count_labels, prepare_run
from tests.helpers import run_cli
from tfrecords_tools import atomic
from tfrecords_tools.convert import ShardedWriter, convert, serialize_example, write_examples
from tfrecords_tools.dataset import make_dataset
from tfrecords_tools.manifest import Manifest, ManifestError, ShardError, manifest_path
from tfrecords_tools.verification import located_read_errors, verify

# the module, not the package's convert() function of the same name
convert_lib = importlib.import_module("tfrecords_tools.convert")


def points(n=400, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = sorted(rng.choice(50, 4, replace=False).tolist())
        out.append(([int(rng.integers(8))], ids, rng.uniform(0.1, 2, 4).tolist()))
    return out


def dataset(tmp_path, name="d", compression="NONE", shards=2, n=400):
    prefix = str(tmp_path / name)
    m = write_examples(prefix, points(n), 50, 8, num_shards=shards, compression=compression)
    return prefix, Manifest.load(prefix) if m else None


def damage(path, how):
    b = bytearray(open(path, "rb").read())
    if how == "flip":
        b[len(b) // 2] ^= 0xFF
    elif how == "truncate":
        b = b[: len(b) - 17]
    open(path, "wb").write(bytes(b))


def forget_sizes(prefix):
    """A manifest without shard sizes (as written before they were recorded): the damage is
    then found only by reading."""
    path = manifest_path(prefix)
    d = json.load(open(path))
    d.pop("shard_bytes")
    json.dump(d, open(path, "w"))


def edit_manifest(prefix, **changes):
    path = manifest_path(prefix)
    d = json.load(open(path))
    d.update(changes)
    json.dump(d, open(path, "w"))


def rewrite_shard(prefix, records):
    """Replaces a one-shard dataset's records behind the checks of write_examples (as a
    hand-made or foreign shard would be), keeping its manifest (with the new size)."""
    d = json.load(open(manifest_path(prefix)))
    with ShardedWriter(prefix, 1) as w:
        for r in records:
            w.write(r)
    d["shard_bytes"] = w.sizes
    json.dump(d, open(manifest_path(prefix), "w"))


def read_all(prefix):
    n = 0
    with located_read_errors(prefix):
        for batch in make_dataset(prefix, 64, shuffle=True, seed=1):
            n += int(batch["labels"].nrows())
    return n


# -- corrupt and truncated shards --------------------------------------------------------
@pytest.mark.parametrize("compression", ["NONE", "GZIP"])
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_shard_is_named(tmp_path, compression, how):
    prefix, m = dataset(tmp_path, compression=compression)
    bad = m.shard_paths[1]
    damage(bad, how)
    if how == "truncate":  # caught eagerly by its size, before any record is read
        with pytest.raises(ShardError, match="truncated or changed after conversion") as info:
            Manifest.load(prefix)
        assert info.value.shard == bad and str(info.value).startswith(bad)
        forget_sizes(prefix)
    # full verification and every read name the shard and the record
    with pytest.raises(ShardError, match="corrupt or truncated shard") as info:
        verify(prefix)
    assert info.value.shard == bad and info.value.record is not None
    assert str(info.value).startswith(f"{bad}: record {info.value.record}: ")
    with pytest.raises(ShardError, match="corrupt or truncated shard") as info:
        read_all(prefix)
    assert info.value.shard == bad
    report = verify(prefix, raise_on_fault=False)
    assert not report.ok and len(report.faults) == 1 and bad in report.faults[0]
    assert report.shards[0]["records"] == 200


def test_unrelated_errors_pass_through(tmp_path):
    prefix, _ = dataset(tmp_path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="unrelated"):
        with located_read_errors(prefix):
            tf.debugging.assert_equal(1, 2, message="unrelated")


def test_records_of_another_schema_are_named(tmp_path):
    from tensorflow.core.example import example_pb2, feature_pb2

    prefix = str(tmp_path / "s")
    ok = write_examples(prefix, points(10), 50, 8)
    wrong = example_pb2.Example(features=feature_pb2.Features(feature={
        "feature_ids": feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[1.0]))}))
    rewrite_shard(prefix, [wrong.SerializeToString() if i == 7 else serialize_example(*p)
                           for i, p in enumerate(points(10))])
    with pytest.raises(ShardError, match="not a tf.train.Example of the mach-tf schema") as info:
        verify(prefix)
    assert info.value.shard == ok.shard_paths[0] and info.value.record == 7
    with pytest.raises(ShardError, match="record 7: not a tf.train.Example"):
        read_all(prefix)


def test_ids_beyond_the_manifest_are_named(tmp_path):
    """Records written around the checks (a hand-made shard) are caught by verification and
    before training starts, never clipped."""
    prefix = str(tmp_path / "ids")
    m = write_examples(prefix, points(20), 50, 8)
    rewrite_shard(prefix, [serialize_example([9] if i == 13 else p[0], p[1], p[2])
                           for i, p in enumerate(points(20))])
    with pytest.raises(ShardError, match=r"record 13: record holds a label id outside \[0, 8\)"):
        verify(prefix)
    with pytest.raises(ShardError, match="record 13") as info:
        count_labels(prefix, 8, 50)  # the check at training start
    assert info.value.shard == m.shard_paths[0]


# -- manifests that disagree with their shards -------------------------------------------
def test_shard_missing_from_disk_or_from_manifest(tmp_path):
    prefix, m = dataset(tmp_path)
    edit_manifest(prefix, shards=m.shards[:1], shard_counts=[200], shard_bytes=m.shard_bytes[:1],
                  num_examples=200, lines_read=200)
    with pytest.raises(ShardError, match=r"is missing from .*d\.manifest\.json, which lists 1 "
                                         r"of the 2 shards") as info:
        Manifest.load(prefix)
    assert info.value.shard == m.shard_paths[1]
    prefix, m = dataset(tmp_path, name="e")
    os.remove(m.shard_paths[0])
    with pytest.raises(FileNotFoundError, match=f"{m.shard_paths[0]}: shard listed in"):
        Manifest.load(prefix)


def test_counts_that_disagree_with_the_shards(tmp_path):
    prefix, m = dataset(tmp_path)
    edit_manifest(prefix, shard_counts=[201, 199])  # same total: only reading can tell
    Manifest.load(prefix)
    with pytest.raises(ShardError, match="holds 200 records, .* says 201") as info:
        verify(prefix)
    assert info.value.shard == m.shard_paths[0]
    # a total that disagrees is found by the one full read at training start
    edit_manifest(prefix, shard_counts=[201, 200], num_examples=401, lines_read=401)
    with pytest.raises(ShardError, match="holds 200 records, .* says 201") as info:
        count_labels(prefix, 8, 50)
    assert info.value.shard == m.shard_paths[0]
    edit_manifest(prefix, shard_counts=[200, 200], num_examples=401, lines_read=401)
    with pytest.raises(ManifestError, match="sum to 400, disagreeing with num_examples=401"):
        Manifest.load(prefix)
    edit_manifest(prefix, shard_counts=[], num_examples=401)
    with pytest.raises(ShardError, match="shards hold 400 records, .* num_examples=401"):
        verify(prefix)


@pytest.mark.parametrize("content, message", [
    ("{not json", "malformed manifest"),
    ("[1, 2]", "expected a JSON object"),
    ('{"num_examples": 1}', "malformed manifest"),
    ('{"num_examples": -1, "num_features": 5, "num_labels": 2, "shards": ["a.tfrecord"]}',
     "num_examples must be a non-negative integer"),
    ('{"num_examples": 1, "num_features": 5, "num_labels": 2, "shards": ["../x.tfrecord"]}',
     "shards must be a non-empty list of file names"),
    ('{"num_examples": 1, "num_features": 5, "num_labels": 2, "shards": []}',
     "shards must be a non-empty list"),
    ('{"num_examples": 1, "num_features": 5, "num_labels": 2, "shards": ["a.tfrecord"], '
     '"format_version": 9}', "format_version 9"),
    ('{"num_examples": 1, "num_features": 5, "num_labels": 2, "shards": ["a.tfrecord"], '
     '"compression": "ZLIB"}', "unknown compression"),
    ('{"num_examples": 1, "num_features": 5, "num_labels": 2, '
     '"shards": ["m-00000-of-00001.tfrecord"], "compression": "GZIP"}',
     "does not match compression GZIP"),
])
def test_malformed_manifest_is_named(tmp_path, content, message):
    path = tmp_path / "m.manifest.json"
    path.write_text(content)
    with pytest.raises(ManifestError, match=message) as info:
        Manifest.load(str(tmp_path / "m"))
    assert str(info.value).startswith(f"{path}: ")


# -- where the pipeline reads ------------------------------------------------------------
def test_training_start_names_a_corrupt_shard(tmp_path, tiny_data, tiny_config):
    prefix = str(tmp_path / "train")
    m = convert(tiny_data["train_txt"], prefix, num_shards=2)
    damage(m.shard_paths[1], "flip")
    run = str(tmp_path / "run")
    with pytest.raises(ShardError, match="corrupt or truncated shard") as info:
        train_worker(run, prefix, None, tiny_config.replace(epochs=1), 0, 1, verbose=0,
                     log=lambda msg: None)
    assert info.value.shard == m.shard_paths[1]
    assert not tf.io.gfile.exists(os.path.join(run, rundir.TRAIN_DATA))


def test_fit_names_a_shard_damaged_after_the_start(tmp_path, tiny_data, tiny_config):
    """The shard breaks after the run was prepared (its one full read passed): the
    DataLossError deep in model.fit comes out naming the shard."""
    prefix = str(tmp_path / "train")
    m = convert(tiny_data["train_txt"], prefix, num_shards=2)
    run = str(tmp_path / "run")
    config = tiny_config.replace(epochs=1)
    prepare_run(run, config, prefix)
    damage(m.shard_paths[0], "flip")
    with pytest.raises(ShardError, match="corrupt or truncated shard") as info:
        train_worker(run, prefix, None, config, 0, 2, verbose=0, log=lambda msg: None)
    assert info.value.shard == m.shard_paths[0]
    assert not rundir.is_complete(run, 0)


def test_evaluation_names_a_corrupt_test_shard(tmp_path, tiny_data, tiny_run):
    prefix = str(tmp_path / "test")
    m = convert(tiny_data["test_txt"], prefix, num_shards=2, compression="GZIP")
    forget_sizes(prefix)
    damage(m.shard_paths[1], "truncate")
    with pytest.raises(ShardError, match="corrupt or truncated shard") as info:
        evaluate(tiny_run, prefix)
    assert info.value.shard == m.shard_paths[1]


def test_cli_verify_names_the_shard(tmp_path):
    prefix, m = dataset(tmp_path)
    damage(m.shard_paths[0], "flip")
    res = run_cli("verify", prefix, "--json")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mach-tf verify: error: {m.shard_paths[0]}: record ")
    assert "corrupt or truncated shard" in last


# -- interrupted conversions -------------------------------------------------------------
def test_conversion_interrupted_mid_write_leaves_nothing(tmp_path, tiny_data, monkeypatch):
    real = convert_lib.serialize_example
    calls = []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 300:
            raise OSError("disk full (injected)")
        return real(*args, **kw)

    monkeypatch.setattr(convert_lib, "serialize_example", failing)
    with pytest.raises(OSError, match="injected"):
        convert(tiny_data["train_txt"], str(tmp_path / "out"), num_shards=3)
    assert os.listdir(tmp_path) == []  # no manifest, no shard, no temporary file


def test_reconversion_interrupted_while_publishing_leaves_no_manifest(tmp_path, tiny_data,
                                                                      monkeypatch):
    """Converting again over an existing dataset and failing between the shard renames must
    not leave the old manifest beside a mix of old and new shards."""
    prefix = str(tmp_path / "out")
    convert(tiny_data["test_txt"], prefix, num_shards=2)
    real = atomic.publish
    moved = []

    def crash_after_first(src, dst, overwrite=True):
        if moved:
            raise KeyboardInterrupt("killed (injected)")
        moved.append(dst)
        real(src, dst, overwrite)

    monkeypatch.setattr(atomic, "publish", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_data["train_txt"], prefix, num_shards=2)
    assert not os.path.exists(manifest_path(prefix))
    with pytest.raises(FileNotFoundError, match="no manifest"):
        Manifest.load(prefix)
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    # a process killed outright leaves its temporary shards: nothing takes them for data,
    # and the next conversion succeeds
    (tmp_path / "out-00000-of-00002.tfrecord.tmp-999").write_bytes(b"partial")
    monkeypatch.setattr(atomic, "publish", real)
    m = convert(tiny_data["train_txt"], prefix, num_shards=2)
    assert verify(prefix).num_examples == m.num_examples == 800


def test_write_examples_refuses_points_outside_the_schema(tmp_path):
    cases = [(([0], [1, 2], [1.0]), "point 0: 2 feature ids but 1 feature values"),
             (([0], [50], [1.0]), r"feature id 50 outside \[0, 50\)"),
             (([8], [1], [1.0]), r"label id 8 outside \[0, 8\)"),
             (([0], [1, 1], [1.0, 1.0]), "repeated feature ids"),
             (([0], [1], [float("nan")]), "not finite"),
             (([0], [1], [1e39]), "not finite in float32")]
    for point, message in cases:
        with pytest.raises(ValueError, match=message):
            write_examples(str(tmp_path / "w"), [point], 50, 8)
        assert os.listdir(tmp_path) == []


def test_cli_verify_in_process(tmp_path, capsys):
    from mach_tf.cli import main

    prefix, m = dataset(tmp_path)
    assert main(["verify", "--help"]) == 0
    assert "examples:" in capsys.readouterr().out
    assert main(["verify", prefix, "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ok"] is True and out["num_examples"] == 400
    assert [s["records"] for s in out["shards"]] == [200, 200]
    assert [s["bytes"] for s in out["shards"]] == m.shard_bytes
