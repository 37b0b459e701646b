"""Export a fitted :class:`~mach_tf.MachClassifier` (any Keras encoder with a MACH head) as
``BASE/NAME/VERSION`` for TensorFlow Serving.

The SavedModel answers like a run's export (:mod:`export.signatures`): ``label_ids``,
``scores`` and ``labels`` of the merged top k, from ``serving_default`` and its filtered
twin. Its inputs are the encoder's own: one per Keras ``Input`` of the encoder, named as
the ``Input`` (or as the key of a dict of inputs), with the ``Input``'s dtype and shape.

The bucket scores are the softmax of the head's logits over each repetition's B buckets,
decoded by :class:`~mach_tf.inference.decoder.MergedTopK` over the hash family the
classifier trained with (``HashFamily.from_seed(R, B, seed)``: the table of
:func:`mach_tf.layers.bucket_table`). As for a run, the version is written beside the
others under a hidden name, loaded back through both of TensorFlow's loaders and checked
against the in-Python :meth:`~mach_tf.MachClassifier.predict_topk` on sample inputs, given
its warmup records, and only then renamed to its integer version.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
import warnings
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from export import warmup as warmup_lib
from export.client import input_tensors
from export.serving_protos import encode_prediction_log
from export.signatures import FILTER_SPECS, FILTERED, SERVING_DEFAULT, decoded_answer, label_table
from export.stitch import ExportResult, read_label_names, version_path
from export.verification import ExportError, check_answers, sample_filters, session_outputs
from mach_tf.classifier import MachClassifier
from mach_tf.hashing import HashFamily
from mach_tf.inference.decoder import (DECODERS, DEFAULT_CANDIDATE_BUCKETS, MergedTopK,
                                       resolve_decoder)
from mach_tf.inference.evaluation import export_info_path
from mach_tf.inference.reference import filtered_topk_numpy
from mach_tf.model.network import bucket_scores
from mach_tf.version import __version__
from tfrecords_tools import atomic
from tfrecords_tools.paths import expand_path

#: Rows of the random sample when no ``sample`` is given (warmup uses batches 1, 2, 4).
SAMPLE_ROWS = 16
#: Warmup request batch sizes, for each signature.
WARMUP_BATCHES = (1, 2, 4)
SIGNATURES = (SERVING_DEFAULT, SERVING_DEFAULT + FILTERED)


def encoder_inputs(encoder) -> tuple[object, dict]:
    """``(structure, specs)``: the encoder's inputs as it is called (one tensor, a list or
    a dict of them) and a ``tf.TensorSpec`` per serving input, named as the ``Input``
    layer (as its key for a dict), batch dimension ``None``, in the structure's order.

    Raises:
        ExportError: for an encoder without Keras ``Input`` layers (a subclassed model
            never built on ``keras.Input``), or with input names that collide.
    """
    try:
        structure = encoder.input
    except (AttributeError, ValueError):  # a Sequential is never "called" on its Input
        structure = None
    if structure is None:
        try:
            inputs = list(encoder.inputs or [])
        except (AttributeError, ValueError):
            inputs = []
        if not inputs:
            raise ExportError(
                "export_classifier needs an encoder built on keras.Input layers (a "
                "Functional or Sequential model), whose inputs name the signature's; "
                f"{type(encoder).__name__} has none")
        structure = inputs[0] if len(inputs) == 1 else inputs
    if isinstance(structure, dict):
        named = list(structure.items())
    else:
        named = [(t.name, t) for t in keras.tree.flatten(structure)]
    specs = {}
    for name, tensor in named:
        if name in specs or name in {s.name for s in FILTER_SPECS}:
            raise ExportError(f"the encoder's input name {name!r} is repeated or taken by "
                              f"the filtered signature; name its keras.Input layers apart")
        specs[name] = tf.TensorSpec([None, *tensor.shape[1:]], tf.as_dtype(tensor.dtype),
                                    name=name)
    return structure, specs


def _pack(structure, specs: dict, feeds: dict):
    """The encoder's input structure from the signature's named inputs."""
    if isinstance(structure, dict):
        return {name: feeds[name] for name in structure}
    values = [feeds[name] for name in specs]
    return values[0] if len(values) == 1 else values


def random_sample(specs: dict, n: int = SAMPLE_ROWS, seed: int = 0) -> dict:
    """Random inputs of the signature's specs: normal floats, 0/1 integers and booleans,
    empty strings; unknown inner dimensions are 4."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in specs.items():
        shape = [n] + [4 if d is None else d for d in spec.shape.as_list()[1:]]
        dtype = spec.dtype
        if dtype.is_floating:
            out[name] = rng.normal(size=shape).astype(dtype.as_numpy_dtype)
        elif dtype.is_integer:
            out[name] = rng.integers(0, 2, size=shape).astype(dtype.as_numpy_dtype)
        elif dtype == tf.bool:
            out[name] = rng.random(shape) < 0.5
        elif dtype == tf.string:
            out[name] = np.full(shape, b"", dtype=object)
        else:
            raise ExportError(f"no random sample for input {name!r} of dtype {dtype.name}: "
                              f"pass sample=")
    return out


def build_classifier_archive(model: MachClassifier, structure, specs: dict, top_k: int,
                             decoder: str, candidate_buckets: int,
                             label_names_path: str | None = None):
    """A ``keras.export.ExportArchive`` with ``serving_default`` (the encoder's inputs,
    :data:`~export.signatures.OUTPUT_KEYS` out) and ``serving_default_filtered`` (the same
    and :data:`~export.signatures.FILTER_SPECS`)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    hashing = HashFamily.from_seed(model.num_repetitions, model.num_buckets,
                                   model.seed).to_dict()
    topk = MergedTopK(model.num_classes, hashing, k=top_k, decoder=decoder,
                      candidate_buckets=candidate_buckets, name="mach_decoder")
    archive.track(topk)
    table = None
    if label_names_path is not None:
        table = label_table(label_names_path)
        archive.track(table)

    def answer(inputs, filters=None):
        logits = model(_pack(structure, specs, inputs), training=False)
        scores = tf.debugging.assert_all_finite(
            bucket_scores(logits, "softmax", "prob"),
            message="the model's scores are not finite for this request")
        return decoded_answer(topk, scores, table, filters)

    def serving_default(inputs):
        return answer(inputs)

    def serving_default_filtered(inputs, exclude_ids, restrict_ids, top_k):
        return answer(inputs, (exclude_ids, restrict_ids, top_k))

    archive.add_endpoint(SERVING_DEFAULT, serving_default, input_signature=[specs])
    archive.add_endpoint(SERVING_DEFAULT + FILTERED, serving_default_filtered,
                         input_signature=[specs, *FILTER_SPECS])
    return archive


def _stage_names(label_names, num_classes: int, staging: str) -> str:
    """A label-names file (checked, :func:`~export.stitch.read_label_names`) or a sequence
    of K names, staged as one name per line."""
    if isinstance(label_names, (str, os.PathLike)):
        return read_label_names(expand_path(os.fspath(label_names)), num_classes, staging)
    names = [str(n) for n in label_names]
    if len(names) != num_classes or any("\n" in n or "\r" in n for n in names):
        raise ExportError(f"label_names: need {num_classes} names without line breaks, got "
                          f"{len(names)}")
    out = os.path.join(staging, "labels.txt")
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(n + "\n" for n in names)
    return out


def _expected(model: MachClassifier, packed, decoder: str, candidate_buckets: int,
              top_k: int):
    """The in-Python answers ``(unfiltered, filters, filtered)`` on the sample, as
    ``(scores, ids)``: :meth:`MachClassifier.predict_topk` for exact decoding, the numpy
    candidate reference otherwise, and the numpy filtered reference for the twin."""
    logits = np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(packed)), np.float64)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = (probs / probs.sum(axis=-1, keepdims=True)).astype(np.float32)
    family = HashFamily.from_seed(model.num_repetitions, model.num_buckets, model.seed)
    k = model.num_classes
    if decoder == "exact":
        ids, scores = model.predict_topk(packed, top_k)
    else:
        scores, ids = filtered_topk_numpy(probs, family, k, decoder, candidate_buckets, top_k)
    filters = sample_filters(ids, k, top_k)
    f_scores, f_ids = filtered_topk_numpy(probs, family, k, decoder, candidate_buckets, top_k,
                                          (), filters["exclude_ids"], filters["restrict_ids"])
    cut = int(filters["top_k"])
    return (scores, ids), filters, (f_scores[:, :cut], f_ids[:, :cut])


def verify_classifier_export(path: str, final: str, model: MachClassifier, structure,
                             sample: dict, decoder: str, candidate_buckets: int, top_k: int,
                             names: str | None) -> int:
    """Both signatures through ``tf.saved_model.load`` and the v1 session loader against
    the in-Python answers (:func:`~mach_tf.inference.reference.disagreeing_rows`).

    Returns:
        The number of sample inputs checked.

    Raises:
        ExportError: naming the signature and loader that disagree.
    """
    feeds = {k: np.asarray(v) for k, v in sample.items()}
    expected, filters, expected_filtered = _expected(
        model, _pack(structure, feeds, feeds), decoder, candidate_buckets, top_k)
    loaded = tf.saved_model.load(path)
    plain = {k: tf.constant(v) for k, v in feeds.items()}
    extra = {k: tf.constant(v) for k, v in filters.items()}
    outputs = {
        f"{SERVING_DEFAULT} (tf.saved_model.load)": loaded.signatures[SERVING_DEFAULT](**plain),
        f"{SERVING_DEFAULT}{FILTERED} (tf.saved_model.load)":
            loaded.signatures[SERVING_DEFAULT + FILTERED](**plain, **extra)}
    outputs = {k: {o: np.asarray(t) for o, t in v.items()} for k, v in outputs.items()}
    del loaded
    gc.collect()
    session = session_outputs(path, {SERVING_DEFAULT: feeds,
                                     SERVING_DEFAULT + FILTERED: {**feeds, **filters}})
    for name, out in session.items():
        outputs[f"{name} (v1 session loader)"] = out
    n = len(next(iter(feeds.values())))
    check_answers(final, outputs, {where: expected_filtered if FILTERED in where else expected
                                   for where in outputs}, names, ("inputs", "input"))
    return n


def write_classifier_warmup(path: str, specs: dict, sample: dict,
                            model_name: str = "mach") -> int:
    """Warmup records: each signature at batch 1, 2, 4 of ``sample`` (the filtered twin
    with :func:`~export.warmup.warmup_filters`). Returns the number written."""
    n = len(next(iter(sample.values())))
    records = []
    for signature in SIGNATURES:
        for size in sorted({min(b, n) for b in WARMUP_BATCHES}):
            tensors = {k: tf.make_tensor_proto(np.asarray(v[:size], specs[k].dtype.as_numpy_dtype))
                       for k, v in sample.items()}
            if signature != SERVING_DEFAULT:
                tensors.update(input_tensors(warmup_lib.warmup_filters(size)))
            records.append(encode_prediction_log(tensors, signature, model_name))
    with tf.io.TFRecordWriter(path) as w:
        for raw in records:
            w.write(raw)
    return len(records)


def export_classifier(model: MachClassifier, output: str, top_k: int = 10,
                      label_names: str | Sequence[str] | None = None,
                      version: int | None = None, decoder: str = "auto",
                      candidate_buckets: int = DEFAULT_CANDIDATE_BUCKETS, verify: bool = True,
                      warmup: bool = True, log=None, sample: dict | None = None) -> ExportResult:
    """Exports a fitted :class:`~mach_tf.MachClassifier` as ``output/VERSION``.

    Args:
        model: The classifier; its encoder must be built on ``keras.Input`` layers, whose
            names (or keys, for a dict of inputs) name the signature's inputs.
        output: ``BASE/NAME``; the version directory is created inside it.
        top_k: Classes returned per query.
        label_names: A file of K label names (one per line, class i on line i+1) or the K
            names; by default the ids as strings.
        version: Integer version; default the next one after those present.
        decoder: ``exact``, ``candidates`` or ``auto`` (by K).
        candidate_buckets: m, top buckets per repetition for candidate decoding.
        verify: Load the SavedModel back through both loaders and check both signatures
            against the in-Python top k on the sample; a mismatch fails the export.
        warmup: Write ``assets.extra/tf_serving_warmup_requests``.
        log: Optional callable for progress lines.
        sample: Inputs to verify and warm up with, a dict of arrays keyed by the
            signature's input names (at least 4 rows for the warmup's batches); by default
            :data:`SAMPLE_ROWS` random rows of the inputs' specs.

    Returns:
        An :class:`~export.stitch.ExportResult`.

    Raises:
        ExportError: for a refused or failed export; no version directory is left behind.
    """
    output = expand_path(output)
    t0 = time.time()
    say = log or (lambda msg: None)
    if not isinstance(model, MachClassifier) or not model.built:
        raise ExportError("export_classifier needs a built (fitted) MachClassifier")
    if top_k < 1 or candidate_buckets < 1:
        raise ExportError(f"top_k and candidate_buckets must be >= 1, got {top_k} and "
                          f"{candidate_buckets}")
    if version is not None and version < 0:
        raise ExportError(f"version must be a non-negative integer, got {version}")
    if decoder not in DECODERS:
        raise ExportError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    decoder = resolve_decoder(decoder, model.num_classes)
    structure, specs = encoder_inputs(model.encoder)
    if sample is None:
        sample = random_sample(specs)
    elif set(sample) != set(specs):
        raise ExportError(f"sample needs exactly the inputs {sorted(specs)}, got "
                          f"{sorted(sample)}")
    sample = {k: np.asarray(sample[k], specs[k].dtype.as_numpy_dtype) for k in specs}
    version, final = version_path(output, version)
    staging = tempfile.mkdtemp(prefix="mach-export-")
    checked = 0
    try:
        with atomic.replacing(final, overwrite=False) as tmp:
            names = _stage_names(label_names, model.num_classes, staging) \
                if label_names is not None else None
            archive = build_classifier_archive(model, structure, specs, top_k, decoder,
                                               candidate_buckets, names)
            with warnings.catch_warnings():
                # Keras' walk for resources traces a dict-input encoder's own call with
                # its inputs sorted by key and warns of the order; the endpoints pass the
                # encoder's order, and the check below compares their answers.
                warnings.filterwarnings("ignore", message="The structure of `inputs`")
                archive.write_out(tmp, verbose=False)
            del archive
            gc.collect()
            say(f"export: SavedModel written, inputs {list(specs)}, K={model.num_classes}, "
                f"decoder={decoder}, top_k={top_k} ({time.time() - t0:.1f} s)")
            if verify:
                checked = verify_classifier_export(tmp, final, model, structure, sample,
                                                   decoder, candidate_buckets, top_k, names)
                say(f"export: both signatures reproduced predict_topk on {checked} inputs "
                    f"(tf.saved_model.load and the v1 session loader)")
            info = export_info_path(tmp)
            tf.io.gfile.makedirs(os.path.dirname(info))
            if warmup:
                write_classifier_warmup(os.path.join(os.path.dirname(info),
                                                     warmup_lib.WARMUP_FILE), specs, sample)
            with tf.io.gfile.GFile(info, "w") as f:
                json.dump({"model": "MachClassifier", "num_classes": model.num_classes,
                           "num_buckets": model.num_buckets,
                           "num_repetitions": model.num_repetitions, "seed": model.seed,
                           "top_k": top_k, "decoder": decoder,
                           "candidate_buckets": candidate_buckets,
                           "scores": "mean over repetitions of the bucket probability",
                           "inputs": {k: {"dtype": s.dtype.name, "shape": s.shape.as_list()}
                                      for k, s in specs.items()},
                           "signatures": list(SIGNATURES),
                           "mach_tf_version": __version__}, f, indent=2)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"export: wrote {final} ({time.time() - t0:.1f} s)")
    return ExportResult(final, version, decoder, top_k, candidate_buckets, checked,
                        round(time.time() - t0, 3))
