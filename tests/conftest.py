"""Shared fixtures: tiny synthetic datasets and a tiny trained run, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


@pytest.fixture(scope="session")
def tiny_spec():
    from mach_tf.synthetic import SyntheticSpec

    return SyntheticSpec(num_labels=60, num_features=300, avg_labels=1.8, seed=3)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_spec):
    """``{"dir", "train_txt", "test_txt", "train", "test"}``: text files and TFRecord
    prefixes of a tiny synthetic dataset."""
    from mach_tf.synthetic import write_split
    from tfrecords_tools.convert import convert

    d = tmp_path_factory.mktemp("tiny_data")
    train_txt, test_txt = write_split(d, tiny_spec, 800, 160)
    convert(train_txt, str(d / "tfr" / "train"), num_shards=2)
    convert(test_txt, str(d / "tfr" / "test"), num_shards=1)
    return {"dir": str(d), "train_txt": train_txt, "test_txt": test_txt,
            "train": str(d / "tfr" / "train"), "test": str(d / "tfr" / "test")}


@pytest.fixture(scope="session")
def tiny_config(tiny_spec):
    from mach_tf.config import MachConfig

    return MachConfig.from_data(tiny_spec.num_labels, tiny_spec.num_features, num_buckets=16,
                                num_repetitions=4, hidden_units=[32], epochs=3,
                                batch_size=64, group_size=2, learning_rate=3e-3, seed=1)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data, tiny_config):
    """A trained run directory (all repetitions complete). Do not modify it."""
    from mach_tf.train import train

    run = str(tmp_path_factory.mktemp("tiny_run") / "run")
    summary = train(run, tiny_data["train"], None, tiny_config, workers=1, verbose=0,
                    log=lambda m: None)
    assert summary["complete"] == tiny_config.num_repetitions
    return run


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_run):
    """``(path, result)`` of an exact-decoder export of ``tiny_run``."""
    from export.stitch import export_model

    base = tmp_path_factory.mktemp("tiny_export") / "mach"
    res = export_model(tiny_run, str(base), top_k=5, decoder="exact")
    return res.path, res


def run_cli(*args, input_text=None, timeout=600, env=None):
    """Runs ``python -m mach_tf ARGS`` in a subprocess; returns the CompletedProcess."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "mach_tf", *map(str, args)],
                          input=input_text, capture_output=True, text=True, timeout=timeout,
                          env=e, cwd=ROOT)


def serve_both_ways(path, signatures):
    """Yields ``run(loader, signature, feeds)`` over the export at ``path`` loaded once by
    ``tf.saved_model.load`` and once by the v1 session loader TF Serving uses (feeding the
    signatures' tensor names); ``run.input_dtypes`` maps each of ``signatures`` to its
    inputs' dtypes. For module-scoped fixtures: ``yield from serve_both_ways(...)``."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    sess = tf.compat.v1.Session(graph=tf.Graph())
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)

    def run(loader, signature, feeds):
        if loader == "saved_model.load":
            fn = loaded.signatures[signature]
            specs = fn.structured_input_signature[1]
            out = fn(**{k: tf.constant(v, specs[k].dtype) for k, v in feeds.items()})
            return {k: v.numpy() for k, v in out.items()}
        sig = meta.signature_def[signature]
        return sess.run({k: v.name for k, v in sig.outputs.items()},
                        {sig.inputs[k].name: v for k, v in feeds.items()})

    run.input_dtypes = {name: {k: v.dtype for k, v in
                               loaded.signatures[name].structured_input_signature[1].items()}
                        for name in signatures}
    yield run
    sess.close()


def replay_warmup(path, top_k: int = 5) -> dict:
    """Replays an export's warmup PredictionLogs through ``tf.saved_model.load``, checking
    each answer's shape; returns ``{signature: [batch sizes in file order]}``."""
    import tensorflow as tf

    from export import warmup as warmup_lib

    loaded = tf.saved_model.load(path)
    seen = {}
    for log in warmup_lib.read_warmup(os.path.join(path, "assets.extra",
                                                   warmup_lib.WARMUP_FILE)):
        req = log.predict_log.request
        feeds = {k: tf.make_ndarray(v) for k, v in req.inputs.items()}
        out = loaded.signatures[req.model_spec.signature_name](
            **{k: tf.constant(v) for k, v in feeds.items()})
        batch = len(next(iter(feeds.values())))
        assert out["label_ids"].shape == (batch, top_k)
        seen.setdefault(req.model_spec.signature_name, []).append(batch)
    return seen
