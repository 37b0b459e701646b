"""Helpers the tests share: the CLI (in this process or a subprocess), an export served
both ways (as ``tf.saved_model.load`` and as TensorFlow Serving's v1 session loader), its
warmup records replayed, and the in-Python reference top-k of a run."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import subprocess
import sys
import traceback

import numpy as np
import tensorflow as tf

from export import warmup as warmup_lib
from mach_tf.cli.main import main as cli_main
from mach_tf.inference.scorer import MergedScorer
from mach_tf.training import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def run_cli(*args, input_text=None, timeout=600, env=None, process=False):
    """Runs the ``mach-tf`` command with ARGS in the project root; returns a
    ``subprocess.CompletedProcess`` (exit code, stdout, stderr).

    By default the command runs in this process: :func:`mach_tf.cli.main.main` with
    stdin, stdout, stderr and the environment swapped for the call, so TensorFlow is
    imported once per test session rather than once per command (about 10 s each on a slow
    CPU). A worker process the command starts is a real process either way. With
    ``process=True`` it runs as ``python -m mach_tf`` in a subprocess (``timeout``
    seconds at most), for what only a process shows: TensorFlow's native and logging output
    on stderr, and the module entry point.
    """
    if process:
        e = dict(os.environ)
        e.update(env or {})
        return subprocess.run([sys.executable, "-m", "mach_tf", *map(str, args)],
                              input=input_text, capture_output=True, text=True,
                              timeout=timeout, env=e, cwd=ROOT)
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_stdin = dict(os.environ), os.getcwd(), sys.stdin
    saved_threads = pipeline._THREADS
    os.environ.update(env or {})
    os.chdir(ROOT)
    sys.stdin = io.StringIO(input_text or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli_main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except Exception:  # noqa: BLE001 - a process would exit 1 with the traceback
                traceback.print_exc(file=sys.stderr)
                code = 1
    finally:
        sys.stdin = saved_stdin
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        pipeline._THREADS = saved_threads  # --threads sizes this process's input pipelines
    return subprocess.CompletedProcess(["mach-tf", *argv], code, out.getvalue(),
                                       err.getvalue())


#: Prepended to a ``python -c`` program: ``tensorflow_serving`` cannot be imported, as on an
#: install of ``mach-tf[cpu]`` alone (tensorflow-serving-api is not one of its dependencies).
BLOCK_SERVING_API = """
import sys
class _NoServingApi:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow_serving":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoServingApi())
"""


def run_without_serving_api(code: str, *args, timeout=600):
    """Runs ``python -c CODE ARGS`` (in the project root) where ``tensorflow_serving``
    cannot be imported; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-c", BLOCK_SERVING_API + code, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def serve_both_ways(path, signatures):
    """Yields ``run(loader, signature, feeds)`` over the export at ``path`` loaded once by
    ``tf.saved_model.load`` and once by the v1 session loader TF Serving uses (feeding the
    signatures' tensor names); ``run.input_dtypes`` maps each of ``signatures`` to its
    inputs' dtypes. For module-scoped fixtures: ``yield from serve_both_ways(...)``."""
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
    loaded = tf.saved_model.load(path)
    seen = {}
    for req in warmup_lib.read_warmup(os.path.join(path, "assets.extra",
                                                   warmup_lib.WARMUP_FILE)):
        feeds = {k: tf.make_ndarray(v) for k, v in req.inputs.items()}
        out = loaded.signatures[req.signature_name](
            **{k: tf.constant(v) for k, v in feeds.items()})
        batch = len(next(iter(feeds.values())))
        assert out["label_ids"].shape == (batch, top_k)
        seen.setdefault(req.signature_name, []).append(batch)
    return seen


def session_run(path, signature, feeds):
    """Runs a signature the way TensorFlow Serving does: the v1 loader in a Session, fed
    and fetched by the signature's tensor names; checks the predict method name."""
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        sig = meta.signature_def[signature]
        assert sig.method_name == "tensorflow/serving/predict"
        fetch = {k: v.name for k, v in sig.outputs.items()}
        return sess.run(fetch, {sig.inputs[k].name: v for k, v in feeds.items()})


def python_topk(config, model, inputs: dict, k: int, decoder: str = "exact",
                candidate_buckets: int = 10):
    """The in-Python merged top-k (``(scores, ids)`` as numpy) of padded sparse ``inputs``
    by ``model``, a run's stacked repetitions (``rundir.load_all``)."""
    scores, ids = MergedScorer(config, model, decoder, candidate_buckets).topk(
        {key: tf.constant(np.asarray(v)) for key, v in inputs.items()}, k)
    return scores.numpy(), ids.numpy()


def _json_value(value, dtype):
    """A JSON value as TensorFlow Serving reads it: {"b64": ...} is bytes, numbers take the
    signature's dtype, and nested lists must be rectangular."""
    def unwrap(v):
        if isinstance(v, dict):
            assert set(v) == {"b64"}, v
            return base64.b64decode(v["b64"])
        if isinstance(v, list):
            return [unwrap(x) for x in v]
        return v

    value = unwrap(value)
    if dtype == tf.string:
        out = np.empty(len(value), dtype=object)
        out[:] = value
        return out
    out = np.array(value, dtype=dtype.as_numpy_dtype)
    assert out.dtype != object, "ragged JSON list: TensorFlow Serving refuses it"
    return out


def decode_rest(body, input_dtypes):
    """Named input tensors of a REST predict body (row or columnar layout), following
    TensorFlow Serving's REST API: with "instances" each item is an object of named values
    (or, for a single input, the value itself) and items are stacked along the batch; with
    "inputs" each name maps to its whole batch."""
    names = sorted(input_dtypes)
    assert set(body) - {"signature_name"} in ({"instances"}, {"inputs"})
    if "instances" in body:
        items = body["instances"]
        if all(isinstance(x, dict) and set(x) == set(names) for x in items):
            cols = {n: [x[n] for x in items] for n in names}
        else:
            assert len(names) == 1
            cols = {names[0]: items}
    else:
        inputs = body["inputs"]
        cols = inputs if isinstance(inputs, dict) and set(inputs) == set(names) else \
            {names[0]: inputs}
    return {n: _json_value(v, input_dtypes[n]) for n, v in cols.items()}
