"""Nothing the package reads can run code: Keras models load in safe mode, configs and
manifests are JSON only, arrays are never unpickled."""

import os
import pathlib
import pickle
import re

import keras
import numpy as np
import pytest

from mach_tf import rundir
from mach_tf.config import MachConfig
from tfrecords_tools import atomic
from tfrecords_tools.manifest import Manifest, ManifestError

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("mach_tf", "tfrecords_tools", "export")


class _Payload:
    """Unpickling this creates ``path``: proof that a file was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_lambda_layer_model_is_refused(tmp_path, tiny_config):
    run = str(tmp_path / "run")
    rundir.ensure_config(run, tiny_config)
    touched = tmp_path / "code-ran"
    marker = str(touched)
    inputs = keras.Input((3,))
    outputs = keras.layers.Lambda(lambda x: x + len(open(marker, "w").name))(inputs)
    path = os.path.join(rundir.rep_dir(run, 0), rundir.MODEL)
    os.makedirs(os.path.dirname(path))
    keras.Model(inputs, outputs).save(path)
    touched.unlink()  # the lambda ran once while Keras traced it for saving
    atomic.write_json(rundir.marker_path(run, 0), {})
    with pytest.raises(rundir.RunDirError, match=re.escape(path) + ": cannot load repetition 0"
                       ) as info:
        rundir.load_repetition(run, 0)
    assert "safe_mode" in str(info.value.__cause__) or "Lambda" in str(info.value.__cause__)
    assert not touched.exists()


def test_pickled_label_counts_are_refused(tmp_path, tiny_config):
    run = str(tmp_path / "run")
    rundir.ensure_config(run, tiny_config)
    touched = tmp_path / "unpickled"
    np.save(os.path.join(run, rundir.LABEL_COUNTS),
            np.array([_Payload(touched)], dtype=object), allow_pickle=True)
    with pytest.raises(rundir.RunDirError, match="label_counts.npy: unreadable label counts"):
        rundir.load_label_counts(run)
    assert not touched.exists()
    np.save(os.path.join(run, rundir.LABEL_COUNTS), np.ones((2, 2), np.float32))
    with pytest.raises(rundir.RunDirError, match="expected a 1-D integer array"):
        rundir.load_label_counts(run)


def test_configs_and_manifests_are_json_only(tmp_path, tiny_config):
    touched = tmp_path / "unpickled"
    blob = pickle.dumps(_Payload(touched))
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_bytes(blob)
    with pytest.raises(rundir.RunDirError, match=re.escape(str(run / rundir.CONFIG))):
        rundir.load_config(str(run))
    (tmp_path / "d.manifest.json").write_bytes(blob)
    with pytest.raises(ManifestError, match="d.manifest.json: malformed manifest"):
        Manifest.load(str(tmp_path / "d"))
    with pytest.raises(ValueError):
        MachConfig.from_json(blob.decode("latin-1"))
    assert not touched.exists()
    assert MachConfig.from_json(tiny_config.to_json()) == tiny_config


def test_no_loader_can_run_code():
    """Every loader in the package: safe mode for Keras, no pickle for numpy, no pickle,
    marshal, shelve, YAML or eval anywhere."""
    forbidden = re.compile(r"\bimport (c?pickle|dill|cloudpickle|marshal|shelve|joblib|yaml)\b"
                           r"|\bfrom (c?pickle|dill|cloudpickle|marshal|shelve|joblib|yaml) "
                           r"import|allow_pickle=True|safe_mode=False|\beval\(|\bexec\(")
    sources = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    assert len(sources) > 10
    for path in sources:
        text = path.read_text()
        assert not forbidden.search(text), f"{path}: {forbidden.search(text).group()}"
        for name, required in (("load_model(", "safe_mode=True"),
                               ("np.load(", "allow_pickle=False")):
            for call in _calls(text, name):
                assert required in call, f"{path}: {call}"


def _calls(text, name):
    """The full text of every call ``name...)`` in ``text`` (parentheses balanced)."""
    for m in re.finditer(re.escape(name), text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        yield text[m.start():i]
