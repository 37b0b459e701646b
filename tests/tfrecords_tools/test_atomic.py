"""The one write-then-rename helper: a file or folder appears whole or not at all, on a
local disk and through tf.io.gfile's ram:// filesystem."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import tensorflow as tf

from tfrecords_tools import atomic


@pytest.fixture(params=["local", "ram"])
def folder(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    return f"ram://atomic-{uuid.uuid4().hex[:8]}"


def _names(folder):
    return sorted(tf.io.gfile.listdir(folder)) if tf.io.gfile.isdir(folder) else []


def test_write_json_replaces_whole_and_leaves_no_temporary(folder):
    path = os.path.join(folder, "sub", "config.json")
    atomic.write_json(path, {"b": 1, "a": [1, 2]})
    atomic.write_json(path, {"c": 3})
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    assert json.loads(text) == {"c": 3} and text == atomic.dumps({"c": 3})
    assert _names(os.path.join(folder, "sub")) == ["config.json"]


def test_failed_write_keeps_the_previous_version(folder):
    path = os.path.join(folder, "COMPLETE.json")
    atomic.write_json(path, {"version": 1})
    with pytest.raises(RuntimeError, match="killed"):
        with atomic.writing(path) as f:
            f.write('{"version": 2, "half')
            # the half-written content is not visible under the final name, not even to
            # a filesystem that answers exists() by prefix (ram://)
            assert json.loads(tf.io.gfile.GFile(path).read()) == {"version": 1}
            raise RuntimeError("killed (injected)")
    assert json.loads(tf.io.gfile.GFile(path).read()) == {"version": 1}
    assert _names(folder) == ["COMPLETE.json"]


def test_a_first_write_that_fails_leaves_nothing(folder):
    path = os.path.join(folder, "label_counts.npy")
    with pytest.raises(KeyboardInterrupt):
        with atomic.writing(path, "wb") as f:
            f.write(b"\x93NUMPY")
            assert not tf.io.gfile.exists(path)
            raise KeyboardInterrupt
    assert not tf.io.gfile.exists(path) and _names(folder) == []


def test_temporary_names_are_unique_hidden_and_keep_the_extension(tmp_path):
    path = str(tmp_path / "rep-003" / "model.keras")
    names = {atomic.temp_path(path) for _ in range(100)}
    assert len(names) == 100
    for name in names:
        assert os.path.dirname(name) == os.path.dirname(path)
        base = os.path.basename(name)
        assert base.startswith(".tmp-") and base.endswith("-model.keras")
        assert not name.startswith(path) and atomic.is_temporary(name)
    assert not atomic.is_temporary(path)


def test_a_folder_is_published_whole_and_never_merged(tmp_path):
    final = str(tmp_path / "serving" / "mach" / "1")
    with atomic.replacing(final, overwrite=False) as tmp:
        os.makedirs(os.path.join(tmp, "variables"))
        open(os.path.join(tmp, "saved_model.pb"), "wb").write(b"graph")
        assert not os.path.exists(final)
    assert sorted(os.listdir(final)) == ["saved_model.pb", "variables"]
    with pytest.raises(tf.errors.OpError):
        with atomic.replacing(final, overwrite=False) as tmp:
            os.makedirs(tmp)
            open(os.path.join(tmp, "saved_model.pb"), "wb").write(b"other")
    assert open(os.path.join(final, "saved_model.pb"), "rb").read() == b"graph"
    assert os.listdir(os.path.dirname(final)) == ["1"]


def test_create_exclusive_has_one_winner_with_full_content(folder):
    path = os.path.join(folder, "logs", "merged", "summary-writer.json")
    assert atomic.create_exclusive(path, atomic.dumps({"worker": 0}))
    assert not atomic.create_exclusive(path, atomic.dumps({"worker": 1}))
    assert json.loads(tf.io.gfile.GFile(path).read()) == {"worker": 0}
    assert _names(os.path.dirname(path)) == ["summary-writer.json"]
