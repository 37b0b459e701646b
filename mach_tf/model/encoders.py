"""The user's own Keras encoder under a dense run's repetitions.

A dense run may start every repetition's network from an encoder the user brings: a saved
``.keras`` model (``mach-tf train --encoder-file``; copied into the run directory, so every
worker and every rerun loads the same file) or ``module:function`` returning a fresh Keras
model per repetition (``--encoder``). Either way the run's config records where it comes
from and a fingerprint of its network (:class:`mach_tf.inputs.EncoderSettings`), and a
worker whose encoder differs is refused before it trains.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from mach_tf.errors import EncoderError, RunDirError
from mach_tf.inputs import ENCODER_FILE, EncoderSettings


def load_encoder_file(path: str) -> keras.Model:
    """A saved ``.keras`` encoder (Keras safe mode: no arbitrary code).

    Raises:
        EncoderError: naming the file.
    """
    if not tf.io.gfile.exists(path):
        raise EncoderError(f"{path}: no such encoder file")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad archive
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise EncoderError(f"{path}: cannot load the encoder ({type(e).__name__}: {first}); "
                           f"save it with model.save('encoder.keras'), with custom layers "
                           f"registered by keras.saving.register_keras_serializable") from e
    if not isinstance(model, keras.Model):
        raise EncoderError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return model


def resolve_function(spec: str):
    """The callable named by ``module:function`` (its module imported).

    Raises:
        EncoderError: for a malformed spec, a module that does not import, or a missing
            or non-callable attribute.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise EncoderError(f"--encoder {spec!r}: expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises on import
        raise EncoderError(f"--encoder {spec!r}: cannot import {module_name!r} "
                           f"({type(e).__name__}: {e}); is it on PYTHONPATH?") from e
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise EncoderError(f"--encoder {spec!r}: {module_name} has no callable {attr!r}")
    return fn


def call_encoder_function(spec: str, input_dim: int, seed: int) -> keras.Model:
    """``function(input_dim=d, seed=s)`` of ``module:function`` (each keyword passed only
    where the function's signature takes it).

    Raises:
        EncoderError: when the function fails or returns something other than a Keras
            model.
    """
    fn = resolve_function(spec)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in (("input_dim", int(input_dim)), ("seed", int(seed)))
              if takes_any or k in params}
    try:
        model = fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's function
        raise EncoderError(f"--encoder {spec!r}: the function failed "
                           f"({type(e).__name__}: {e})") from e
    if not isinstance(model, keras.Model):
        raise EncoderError(f"--encoder {spec!r}: returned a {type(model).__name__}, not a "
                           f"keras.Model")
    return model


def _layer_kinds(model) -> list[str]:
    out = []
    for layer in getattr(model, "layers", []):
        out.append(type(layer).__name__)
        if isinstance(layer, keras.Model):
            out.extend(_layer_kinds(layer))
    return out


def output_dim(model: keras.Model, input_dim: int, where: str) -> int:
    """The width of ``model``'s output for ``[batch, input_dim]`` float32 vectors.

    Raises:
        EncoderError: naming ``where`` when the model does not take such vectors or does
            not return one float vector per example.
    """
    try:
        out = model(np.zeros((2, input_dim), np.float32), training=False)
    except Exception as e:  # noqa: BLE001 - whatever the user's network raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise EncoderError(f"{where}: the encoder does not take the data's vectors "
                           f"(float32 [batch, {input_dim}]): {type(e).__name__}: {first}") \
            from e
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) != 2 or shape[0] != 2 or not shape[1]:
        raise EncoderError(f"{where}: the encoder must return one vector per example "
                           f"([batch, width]); it returned shape {shape}")
    return int(shape[1])


def fingerprint(model: keras.Model) -> str:
    """SHA-256 of the network's structure: its layers' classes and its weights' shapes and
    dtypes, in order (names left out: Keras numbers them per process)."""
    desc = {"layers": _layer_kinds(model),
            "weights": [[list(map(int, w.shape)), str(w.dtype)] for w in model.weights]}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encoder_settings(input_dim: int, *, file: str | None = None,
                     function: str | None = None, frozen: bool = False) -> dict:
    """The config's ``encoder`` section for an encoder from ``file`` or ``function``
    (exactly one), checked against the data's vector width ``input_dim``.

    Raises:
        EncoderError: for a bad encoder, or both or neither source, or a frozen function.
    """
    if (file is None) == (function is None):
        raise EncoderError("give exactly one of --encoder-file FILE.keras and --encoder "
                           "module:function")
    if function is not None and frozen:
        raise EncoderError("--freeze-encoder applies to --encoder-file: a function's "
                           "encoder is built untrained, so it trains with its repetition")
    if file is not None:
        model, where = load_encoder_file(file), file
    else:
        model, where = call_encoder_function(function, input_dim, seed=0), function
    width = output_dim(model, input_dim, where)
    settings = EncoderSettings(
        source="file" if file is not None else "function",
        file=ENCODER_FILE if file is not None else None,
        origin=(os.path.abspath(file) if "://" not in file else file) if file else None,
        file_sha256=_file_sha256(file) if file is not None else None,
        function=function, trainable=not frozen, input_dim=int(input_dim),
        output_dim=width, architecture_sha256=fingerprint(model),
        num_params=int(sum(int(np.prod(w.shape)) for w in model.weights)) or None)
    return settings.to_dict()


def install_encoder_file(run: str, settings: dict) -> None:
    """Copies the user's encoder file (``settings["origin"]``) into the run directory, once;
    an existing copy must be the same file.

    Raises:
        RunDirError: when the run holds another encoder file, or the copy is missing and
            the original is gone or changed.
    """
    dest = os.path.join(run, settings["file"])
    source = settings.get("origin")
    if tf.io.gfile.exists(dest):
        if _file_sha256(dest) != settings["file_sha256"]:
            raise RunDirError(f"{dest}: the run holds another encoder than {source} "
                              f"(SHA-256 differs); use a new --model-dir")
        return
    if not source or not tf.io.gfile.exists(source):
        raise RunDirError(f"{dest}: the run's encoder file is missing and its original "
                          f"({source}) is gone")
    if _file_sha256(source) != settings["file_sha256"]:
        raise RunDirError(f"{source}: the encoder file changed since the config was made "
                          f"(SHA-256 differs)")
    tf.io.gfile.makedirs(run)
    tmp = dest + ".tmp"
    if "://" in dest:
        tf.io.gfile.copy(source, tmp, overwrite=True)
    else:
        shutil.copyfile(source, tmp)
    tf.io.gfile.rename(tmp, dest, overwrite=True)


def build_encoders(settings: dict, seeds, run: str | None) -> list[keras.Model]:
    """The encoders of a group whose repetitions have ``seeds``: one shared, frozen
    encoder, or one fresh (trainable) encoder per repetition.

    Raises:
        RunDirError: when the run's encoder file is missing or changed, or the encoder
            built now differs from the one the run's config records.
    """
    s = EncoderSettings.from_dict(settings)
    if s.source == "file":
        if run is None:
            raise RunDirError("a run with an encoder file needs its run directory")
        path = os.path.join(run, s.file)
        if not tf.io.gfile.exists(path):
            raise RunDirError(f"{path}: the run's encoder file is missing; copy it back or "
                              f"start a new run")
        if _file_sha256(path) != s.file_sha256:
            raise RunDirError(f"{path}: the encoder file changed since the run started "
                              f"(SHA-256 differs from the config's); restore it or start a "
                              f"new run")

        def make(_seed):
            return load_encoder_file(path)
        where = path
    else:
        def make(seed):
            return call_encoder_function(s.function, s.input_dim, seed)
        where = f"--encoder {s.function!r}"
    count = len(seeds) if s.trainable else 1
    encoders = [make(seed) for seed in list(seeds)[:count]]
    for enc in encoders:
        if fingerprint(enc) != s.architecture_sha256:
            raise RunDirError(f"{where}: builds another network than the run's config "
                              f"records (architecture fingerprint differs); a rerun or "
                              f"another worker must build the same encoder")
        enc.trainable = s.trainable
    return encoders
