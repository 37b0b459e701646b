"""Adding classes to a trained run without training it again (``mach-tf extend``).

MACH's networks never see K: each repetition predicts B buckets, and a class is found
through its buckets under the run's hash family. A class added later therefore needs no
new weights, only bucket ids (the same hash family gives classes ``0..K-1`` the buckets
they had) and some training signal. :func:`extend` makes a new run directory with K2 > K
classes whose repetitions start from the source run's weights and are fine-tuned on the new
classes' examples mixed with a replayed sample of the old training data (so the old
classes keep their place), with the same workers, claims, resumption and merged validation
as ``mach-tf train``. The source run is only read.

The new run records where it came from in ``RUN2/extension.json``; every worker of it
reads that record (:func:`mach_tf.rundir.extension_source`), so a rerun, another worker or
a Ray task starts each group from the same weights, and a rerun after a crash resumes.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from mach_tf import rundir
from mach_tf.config import TextSettings
from mach_tf.data import refuse_dense
from mach_tf.errors import RunDirError
from mach_tf.launch.local import train
from tfrecords_tools import atomic
from tfrecords_tools.convert import ShardedWriter, convert
from tfrecords_tools.manifest import FORMAT_VERSION, Manifest, manifest_path
from tfrecords_tools.paths import expand_path

#: Replayed old examples per new example, by default: as many old as new, so that the
#: fine-tuning sees the old classes as often as the new ones.
DEFAULT_REPLAY_RATIO = 1.0
#: The fine-tuning's learning rate, as a multiple of the source run's, by default. Chosen
#: on two synthetic development samples (docs/defaults.md, "Extending the catalogue"): at
#: the source's rate the new classes reached 0.74 and 0.83 of a from-scratch model's P@1;
#: at 3 times it, 0.93 and 0.91; at 4 times, 1.0 and 0.99, with the old classes' P@1 0.016
#: and 0.011 below the source's (3 times: 0.013 and 0.010).
DEFAULT_LEARNING_RATE_FACTOR = 4.0
#: The mixed training data of an extension, inside its run directory.
DATA = os.path.join("extension", "train")
#: The new classes' names as text-format training lines (``class_text``).
CLASS_TEXT = os.path.join("extension", "class_text")
#: The examples held out of the mixed data for the merged validation (no class name).
VALID = os.path.join("extension", "valid")


def _check_source(run: str, num_classes: int):
    config = rundir.load_config(run)
    if config.input_format == "dense":
        raise RunDirError(f"{run}: a run on dense vectors cannot be extended (extend "
                          f"grows runs of sparse features or text); train a new run "
                          f"with all the classes")
    missing = [r for r in range(config.num_repetitions) if not rundir.is_complete(run, r)]
    if missing:
        raise RunDirError(f"{run}: repetitions {missing} are not complete; finish training "
                          f"the run before extending it")
    if num_classes <= config.num_classes:
        raise ValueError(f"--num-classes {num_classes} must be above the run's "
                         f"{config.num_classes} classes (an extension only adds classes)")
    config.hash_family.buckets_np(np.asarray([num_classes - 1]))  # K2 within the family
    return config


def _record(source: str, config, num_classes: int, train_prefix: str, replay: str | None,
            replay_ratio: float, seed: int) -> dict:
    return {"source": os.path.abspath(source) if "://" not in source else source,
            "source_classes": config.num_classes, "num_classes": int(num_classes),
            "train": train_prefix and os.path.abspath(train_prefix),
            "replay": replay and os.path.abspath(replay),
            "replay_ratio": float(replay_ratio), "seed": int(seed)}


def _check_data(prefix: str, what: str, config, num_classes: int) -> Manifest:
    m = Manifest.load(prefix)
    refuse_dense(m, what, "raw text" if config.text is not None else "sparse features")
    if not m.text and m.num_features > config.num_features:
        raise ValueError(f"{prefix} ({what}): {m.num_features} features, the run has "
                         f"{config.num_features}")
    if m.num_labels > num_classes:
        raise ValueError(f"{prefix} ({what}): labels up to {m.num_labels - 1}, above the "
                         f"{num_classes} classes asked for")
    if bool(m.text) != (config.text is not None):
        raise ValueError(f"{prefix} ({what}): {'text' if m.text else 'sparse features'}, "
                         f"the run was trained on "
                         f"{'text' if config.text is not None else 'sparse features'}")
    return m


def _records(m: Manifest):
    compression = "GZIP" if m.compression == "GZIP" else ""
    return tf.data.TFRecordDataset(m.shard_paths, compression_type=compression)


def mix(prefix: str, news: list[Manifest], old: Manifest | None, replay_ratio: float,
        seed: int, num_classes: int, num_shards: int = 1, names: Manifest | None = None,
        holdout: float = 0.0, valid_prefix: str | None = None) -> Manifest:
    """Writes the new examples (of every dataset in ``news``, then the class names of
    ``names``) and a replayed sample of the old ones (``replay_ratio`` old per new, at most
    all of them), in a random interleaving, as a converted dataset of ``num_classes``
    labels. Records are copied as they are.

    With ``holdout > 0``, each example and each replayed one goes to ``valid_prefix``
    instead with that probability (seeded); a class name never does: it may be the only
    line of its class, and held out it would leave the class untrained. The training
    manifest, written last, records how many were held out (``source.held_out``).
    """
    rng = np.random.default_rng(seed)
    sources = news + ([names] if names is not None else [])
    n_new = sum(m.num_examples for m in sources)
    n_old = 0 if old is None else min(old.num_examples, int(round(replay_ratio * n_new)))
    keep = np.zeros(0 if old is None else old.num_examples, bool)
    if n_old:
        keep[rng.choice(old.num_examples, n_old, replace=False)] = True
    olds = ((raw, True) for i, raw in enumerate(_records(old).as_numpy_iterator())
            if keep[i]) if n_old else iter(())
    fresh = ((raw, m is not names) for m in sources
             for raw in _records(m).as_numpy_iterator())
    left = {"new": n_new, "old": n_old}
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(ShardedWriter(prefix, num_shards))
        held = stack.enter_context(ShardedWriter(valid_prefix, 1)) if valid_prefix else None
        while left["new"] or left["old"]:
            pick = "new" if rng.random() * (left["new"] + left["old"]) < left["new"] else "old"
            raw, may_hold_out = next(fresh if pick == "new" else olds)
            if held is not None and may_hold_out and rng.random() < holdout:
                held.write(raw)
            else:
                writer.write(raw)
            left[pick] -= 1
    n_held = 0 if held is None else held.counts[0]
    source = {"format": "extension", "new": [m.prefix for m in news],
              "names": names.prefix if names is not None else None,
              "replay": old.prefix if old is not None else None, "replayed": n_old}

    def manifest(w, n, source):
        return Manifest(num_examples=n, num_features=max(m.num_features for m in sources),
                        num_labels=num_classes, text=sources[0].text, shards=list(w.names),
                        shard_counts=list(w.counts), shard_bytes=list(w.sizes),
                        compression=w.compression, format_version=FORMAT_VERSION,
                        source=source, lines_read=n)

    if held is not None:
        atomic.write_json(manifest_path(valid_prefix),
                          manifest(held, n_held, source | {"held_out_of": prefix}).to_dict())
    m = manifest(writer, n_new + n_old - n_held, source | {"held_out": n_held})
    atomic.write_json(manifest_path(prefix), m.to_dict())
    return m


def _copy_learned_inputs(source: str, output_run: str, config) -> None:
    """The source's feature weights and text statistics: the networks were trained on
    inputs scaled by them, so the extension keeps them instead of learning new ones."""
    pairs = [(rundir.feature_weights_path(source), rundir.feature_weights_path(output_run))]
    if config.text is not None:
        name = TextSettings.from_dict(config.text).statistics
        pairs.append((rundir.text_statistics_path(source, name),
                      rundir.text_statistics_path(output_run, name)))
    for src, dst in pairs:
        if tf.io.gfile.exists(src) and not tf.io.gfile.exists(dst):
            with tf.io.gfile.GFile(src, "rb") as f:
                atomic.write_bytes(dst, f.read())


def extend(model_dir: str, output_run: str, num_classes: int, train_data: str | None,
           replay: str | None = None, replay_ratio: float = DEFAULT_REPLAY_RATIO,
           valid: str | None = None, epochs: int | None = None,
           learning_rate: float | None = None, workers: int = 1, threads: int | None = None,
           verbose: int = 0, log: Callable[[str], None] = print, seed: int = 0,
           checkpoint_every: int = 0, class_text: str | None = None,
           early_stopping_patience: int | None = None) -> dict:
    """A new run with ``num_classes`` classes, its repetitions fine-tuned from
    ``model_dir``'s on ``train_data`` (the new classes' examples) mixed with a replayed
    sample of ``replay`` (the old training data).

    Args:
        model_dir: The source run (complete; never modified).
        output_run: The new run directory (a rerun resumes it).
        num_classes: K2, above the source's K.
        train_data: Prefix of the new examples (labels below K2); may be ``None`` with
            ``class_text``.
        replay: Prefix of old examples to replay (default: the source's training data, when
            it is still where the source recorded it).
        replay_ratio: Replayed old examples per new example.
        valid: Validation data (default: held out from the mixed data, as ``train``).
        epochs, early_stopping_patience: The fine-tuning's (default: the source run's).
        learning_rate: The fine-tuning's (default: :data:`DEFAULT_LEARNING_RATE_FACTOR` times
            the source run's).
        workers, threads, verbose, log, checkpoint_every: As
            :func:`mach_tf.launch.local.train`.
        seed: Seeds the replay sample and the interleaving.
        class_text: For a text run, a file of ``id<TAB>title`` lines (the text format with
            one label): classes with no examples yet, introduced by their names as
            training lines.

    Returns:
        The training report, with ``extension`` (the record) and ``seconds``.

    Raises:
        ValueError: for ``num_classes`` not above K, or data that does not fit the run.
        mach_tf.errors.RunDirError: an incomplete source, or an output run made from other
            settings (naming them).
    """
    model_dir, output_run = expand_path(model_dir), expand_path(output_run)
    train_data, replay, valid = expand_path(train_data), expand_path(replay), expand_path(valid)
    class_text = expand_path(class_text)
    if train_data is None and class_text is None:
        raise ValueError("give the new classes' examples (--train) or their names "
                         "(--class-text)")
    t0 = time.time()
    if os.path.abspath(model_dir) == os.path.abspath(output_run):
        raise ValueError("--output-run must be a new directory: the source run is never "
                         "modified")
    if replay_ratio < 0:
        raise ValueError(f"replay ratio must be >= 0, got {replay_ratio}")
    source = _check_source(model_dir, num_classes)
    if replay is None and replay_ratio > 0:
        info = rundir.train_data_path(model_dir)
        replay = rundir.read_json(info).get("train") if tf.io.gfile.exists(info) else None
        if replay is None or not tf.io.gfile.exists(manifest_path(replay)):
            raise ValueError(f"{model_dir}: its training data is not where it was recorded "
                             f"({replay}); give the old data with --replay, or "
                             f"--replay-ratio 0")
    if class_text is not None and source.text is None:
        raise ValueError(f"--class-text introduces classes by their names, for runs trained "
                         f"on text; {model_dir} reads sparse features")
    news = [] if train_data is None else \
        [_check_data(train_data, "new examples", source, num_classes)]
    old = _check_data(replay, "replay", source, num_classes) if replay_ratio > 0 else None
    record = _record(model_dir, source, num_classes, train_data, replay, replay_ratio, seed)
    if class_text is not None:
        record["class_text"] = os.path.abspath(class_text)
    path = rundir.extension_path(output_run)
    if tf.io.gfile.exists(path):
        there = rundir.read_json(path)
        diff = sorted(k for k in set(there) | set(record) if there.get(k) != record.get(k))
        if diff:
            raise RunDirError(f"{output_run} was extended with other settings ("
                              + ", ".join(f"{k}: {there.get(k)!r} there vs {record.get(k)!r} "
                                          f"now" for k in diff)
                              + "); use a new --output-run, or the same settings to resume")
    elif rundir.is_run_dir(output_run):
        raise RunDirError(f"{output_run} already holds a run that is not an extension of "
                          f"{model_dir}; use a new --output-run")
    else:
        tf.io.gfile.makedirs(output_run)
        atomic.write_json(path, record)
    _copy_learned_inputs(model_dir, output_run, source)
    data = os.path.join(output_run, DATA)
    # Without separate validation data, the merged validation holds out a share of the
    # mixed examples, never a class name (see mix).
    carve = valid is None and source.validation_fraction > 0
    if not tf.io.gfile.exists(manifest_path(data)):
        names = None
        if class_text is not None:  # the names as training lines, checked like any text
            names = convert(class_text, os.path.join(output_run, CLASS_TEXT), "text",
                            num_labels=num_classes)
        m = mix(data, news, old, replay_ratio, seed, num_classes, names=names,
                holdout=source.validation_fraction if carve else 0.0,
                valid_prefix=os.path.join(output_run, VALID) if carve else None)
        n_new = sum(x.num_examples for x in news) + (names.num_examples if names else 0)
        log(f"extend: {n_new} new examples and {m.source['replayed']} replayed from "
            f"{replay}; {m.num_examples} to train on in {data}"
            + (f", {m.source['held_out']} held out for validation" if carve else ""))
    changes = {"num_classes": int(num_classes)}
    if carve:
        if Manifest.load(data).source.get("held_out", 0):
            valid = os.path.join(output_run, VALID)
        else:  # too few examples to hold any out: train the fixed epochs, unvalidated
            changes["validation_fraction"] = 0.0
            log("extend: too few examples to hold any out for validation; training "
                "without merged validation (no early stopping)")
    if epochs is not None:
        changes["epochs"] = int(epochs)
    changes["learning_rate"] = float(learning_rate) if learning_rate is not None else \
        source.learning_rate * DEFAULT_LEARNING_RATE_FACTOR
    if early_stopping_patience is not None:
        changes["early_stopping_patience"] = int(early_stopping_patience)
    config = source.replace(**changes)
    report = train(output_run, data, valid, config, workers=workers, threads=threads,
                   verbose=verbose, log=log, checkpoint_every=checkpoint_every)
    report["extension"] = record
    report["seconds"] = round(time.time() - t0, 3)
    return report
