"""SignatureArchive: each signature traced once, saved with the variables and tables it
reads, and served the same by both loaders."""

import numpy as np
import pytest
import tensorflow as tf

from export.archive import SignatureArchive
from tests.helpers import serve_both_ways


def names_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("zero\none\ntwo\n")
    return str(path)


def test_each_signature_is_traced_once_and_served_by_both_loaders(tmp_path):
    traces = []
    weights = tf.Variable([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]], name="weights")
    unused = tf.Variable(7.0, name="unused")
    table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        names_file(tmp_path), tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
        tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), default_value="?")

    def best(x):
        traces.append(x.shape)
        ids = tf.argmax(tf.matmul(x, weights), axis=1)
        return {"label_ids": ids, "labels": table.lookup(ids)}

    archive = SignatureArchive()
    archive.track(table)
    archive.add_signature("serving_default", best,
                          [tf.TensorSpec([None, 2], tf.float32, name="x")])
    with pytest.raises(ValueError, match="'serving_default' is already in the archive"):
        archive.add_signature("serving_default", best, [tf.TensorSpec([None, 2])])
    path = str(tmp_path / "model")
    archive.write_out(path)
    assert len(traces) == 1  # not traced again by tf.saved_model.save
    assert archive.signature_names == ["serving_default"]

    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    for run in serve_both_ways(path, ["serving_default"]):
        for loader in ("saved_model.load", "session"):
            out = run(loader, "serving_default", {"x": x})
            np.testing.assert_array_equal(out["label_ids"], [2, 1, 1])
            assert [s.decode() for s in out["labels"]] == ["two", "one", "one"]
    loaded = tf.saved_model.load(path)
    saved = {v.name for v in loaded.served_variables}
    assert saved == {weights.name} and unused.name not in saved


def test_an_untracked_table_or_no_signature_is_refused(tmp_path):
    table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        names_file(tmp_path), tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
        tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), default_value="?")
    archive = SignatureArchive()
    with pytest.raises(ValueError, match="without signatures"):
        archive.write_out(str(tmp_path / "empty"))
    archive.add_signature("serving_default", lambda ids: {"labels": table.lookup(ids)},
                          [tf.TensorSpec([None], tf.int64, name="ids")])
    with pytest.raises(Exception, match="untracked"):
        archive.write_out(str(tmp_path / "model"))
