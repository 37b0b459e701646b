"""Stitch a run's R repetitions into one SavedModel at ``BASE/NAME/VERSION/``.

The export is written to a hidden temporary directory beside the versions
(``BASE/NAME/.tmp-...``; TensorFlow Serving only loads integer-named directories), loaded
back and checked, given its warmup requests, and only then renamed to its integer version:
a server watching ``BASE/NAME`` never sees a half-written version, and a failed export
leaves no version behind.

The check is independent of the code that built the serving graph: the reference bucket
scores come from the R repetition models as saved by training, each run on its own (not
the stacked model that was exported), merged and decoded by the numpy references of
:mod:`mach_tf.inference`. Both signatures are checked through ``tf.saved_model.load``, and
``serving_default`` also through the v1 session loader that TensorFlow Serving's C++
loader mirrors.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import shutil
import tempfile
import time
import uuid

import numpy as np
import tensorflow as tf

from mach_tf import rundir
from mach_tf.inference import (DECODERS, DEFAULT_CANDIDATE_BUCKETS, candidate_index,
                               candidate_topk_numpy, exact_topk_numpy, resolve_decoder)
from mach_tf.model import bucket_scores, stack
from mach_tf.version import __version__

from export import warmup as warmup_lib
from export.client import rows_from_padded, serialized_examples, text_examples
from export.signatures import (METHOD_NAME, PREDICT_EXAMPLES, PREDICT_TEXT, SERVING_DEFAULT,
                               build_archive)

EXPORT_INFO = "mach_tf.json"


class ExportError(RuntimeError):
    """An export that was refused or failed its check (no version was written)."""


@dataclasses.dataclass
class ExportResult:
    path: str
    version: int
    decoder: str
    top_k: int
    candidate_buckets: int
    verified_queries: int
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def existing_versions(base: str) -> list[int]:
    """The integer version directories under ``base``, ascending."""
    if not tf.io.gfile.isdir(base):
        return []
    return sorted(int(v.rstrip("/")) for v in tf.io.gfile.listdir(base)
                  if re.fullmatch(r"\d+/?", v))


def _read_label_names(path: str, num_classes: int, staging: str) -> str:
    """Checks a label-names file (one per line, K lines) and stages a clean copy."""
    if not tf.io.gfile.exists(path):
        raise ExportError(f"{path}: label names file not found")
    out = os.path.join(staging, "labels.txt")
    n = 0
    with tf.io.gfile.GFile(path, "rb") as src, open(out, "w", encoding="utf-8") as dst:
        for n, raw in enumerate(src, start=1):
            try:
                name = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise ExportError(f"{path}:{n}: label name is not valid UTF-8") from None
            if n == 1:
                name = name.lstrip("\ufeff")
            dst.write(name + "\n")
    if n != num_classes:
        raise ExportError(f"{path}: has {n} label names, the model has {num_classes} classes "
                          f"(one name per line, line i+1 naming class i)")
    return out


def sample_inputs(run: str, config, n: int = 64, seed: int = 0) -> dict:
    """Representative padded inputs: the first ``n`` training examples when known, else
    random sparse rows."""
    info = os.path.join(run, rundir.TRAIN_DATA)
    if tf.io.gfile.exists(info):
        train = rundir.read_json(info).get("train")
        try:
            from mach_tf.data import to_model_inputs
            from tfrecords_tools.dataset import make_dataset

            batch = next(iter(make_dataset(train, n, shuffle=False)))
            return {k: v.numpy() for k, v in to_model_inputs(batch).items()}
        except (FileNotFoundError, ValueError, StopIteration, tf.errors.OpError):
            pass
    rng = np.random.default_rng(seed)
    width = min(16, config.num_features)
    ids = np.stack([rng.choice(config.num_features, width, replace=False) for _ in range(n)])
    ids[:, width // 2:][rng.random((n, width - width // 2)) < 0.5] = -1
    vals = np.where(ids >= 0, rng.uniform(0.5, 1.5, ids.shape), 0.0)
    return {"feature_ids": ids.astype(np.int64), "feature_values": vals.astype(np.float32)}


#: Queries added to a text model's verification sample: the normalisation's corner cases
#: (empty and punctuation-only queries, compatibility forms, case folding, accents composed
#: and decomposed, other scripts, characters newer than the fold table, long and repetitive
#: text), so the graph's fold, grams and weights are checked against the Python reference
#: where they are most likely to differ.
TEXT_PROBES = (
    "", "   ", "!!! ??? ...", "Crème BRÛLÉE", "cre\u0300me bru\u0302le\u0301e",
    "ＦＵＬＬＷＩＤＴＨ ﬁne ① ½", "Straße STRASSE", "ΣΊΣΥΦΟΣ σίσυφος", "İstanbul ıi",
    "नमस्ते दुनिया", "中文 查询", "emoji 😀 query", "tab\there\x00nul",
    "red " * 40, "a-b_c/d.e,f", "x" * 300,
)


def sample_texts(run: str, n: int = 64) -> list[str]:
    """Texts of a text model's verification sample: the first ``n`` training texts when
    the training data is still there, then :data:`TEXT_PROBES`."""
    texts: list[str] = []
    info = os.path.join(run, rundir.TRAIN_DATA)
    if tf.io.gfile.exists(info):
        train = rundir.read_json(info).get("train")
        try:
            from tfrecords_tools.dataset import make_dataset

            batch = next(iter(make_dataset(train, n, shuffle=False, with_text=True)))
            texts = [t.decode("utf-8") for t in batch["text"].numpy()]
        except (FileNotFoundError, ValueError, StopIteration, tf.errors.OpError):
            texts = []
    return texts + list(TEXT_PROBES)


def _row_agrees(ia, sa, ib, sb, atol: float) -> bool:
    # Classes scored clearly above the k-th must be the same; the order among tied scores,
    # and which of several classes tied at the k-th place is kept, may differ.
    strict_a = set(ia[sa > sa[-1] + atol].tolist())
    strict_b = set(ib[sb > sb[-1] + atol].tolist())
    return strict_a == strict_b


def disagreeing_rows(ids_a, scores_a, ids_b, scores_b, atol: float = 1e-5) -> list[int]:
    """Rows whose top-k lists differ beyond the order of scores tied within ``atol``."""
    ids_a, ids_b = np.asarray(ids_a), np.asarray(ids_b)
    scores_a, scores_b = np.asarray(scores_a), np.asarray(scores_b)
    if ids_a.shape != ids_b.shape or scores_a.shape != scores_b.shape:
        return list(range(max(len(ids_a), len(ids_b))))
    bad = []
    for i, (ra, rb, sa, sb) in enumerate(zip(ids_a, ids_b, scores_a, scores_b)):
        finite = np.isfinite(sa) & np.isfinite(sb)
        if not (np.array_equal(np.isfinite(sa), np.isfinite(sb))
                and np.allclose(sa[finite], sb[finite], atol=atol, rtol=1e-4)
                and _row_agrees(ra, sa, rb, sb, atol)):
            bad.append(i)
    return bad


def topk_agree(ids_a, scores_a, ids_b, scores_b, atol: float = 1e-5) -> bool:
    """Equal top-k lists up to the order of scores tied within ``atol``."""
    return not disagreeing_rows(ids_a, scores_a, ids_b, scores_b, atol)


def reference_bucket_scores(config, models, sample: dict) -> np.ndarray:
    """``[n, R, B]`` bucket scores of ``sample`` from the R single-repetition models, each
    run on its own (independent of the stacked model that is exported)."""
    inputs = {k: tf.constant(v) for k, v in sample.items()}
    parts = [bucket_scores(m(inputs, training=False), config.loss, config.merge).numpy()
             for m in models]
    return np.concatenate(parts, axis=1)


def reference_topk(config, scores: np.ndarray, decoder: str, candidate_buckets: int,
                   top_k: int):
    """The numpy reference decoding of ``scores`` (see :mod:`mach_tf.inference`)."""
    family = config.hash_family
    if decoder == "exact":
        return exact_topk_numpy(scores, family.table(config.num_classes), top_k)
    return candidate_topk_numpy(scores, candidate_index(family, config.num_classes),
                                candidate_buckets, top_k)


def export_model(model_dir: str, output: str, version: int | None = None, top_k: int = 10,
                 label_names: str | None = None, decoder: str = "auto",
                 candidate_buckets: int = DEFAULT_CANDIDATE_BUCKETS, verify: bool = True,
                 warmup: bool = True, log=None) -> ExportResult:
    """Exports a trained run as ``output/VERSION`` for TensorFlow Serving.

    Args:
        model_dir: The run directory.
        output: ``BASE/NAME``; the version directory is created inside it.
        version: Integer version; default the next one after those present.
        top_k: Classes returned per query.
        label_names: File of K label names, one per line (class i on line i+1).
        decoder: ``exact``, ``candidates`` or ``auto`` (exact up to
            :data:`mach_tf.inference.AUTO_EXACT_MAX_CLASSES` classes, candidates above).
        candidate_buckets: m, top buckets per repetition for candidate decoding.
        verify: Load the SavedModel back and check its top-k against the in-Python merged
            scoring on sample queries; a mismatch fails the export.
        warmup: Write ``assets.extra/tf_serving_warmup_requests``.
        log: Optional callable for progress lines.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: for a refused or failed export; no version directory is left behind.
        mach_tf.rundir.RunDirError: for missing, unfinished or foreign repetitions, naming
            them (nothing is written).
    """
    t0 = time.time()
    say = log or (lambda msg: None)
    if top_k < 1:
        raise ExportError(f"top_k must be >= 1, got {top_k}")
    if candidate_buckets < 1:
        raise ExportError(f"candidate_buckets must be >= 1, got {candidate_buckets}")
    if version is not None and version < 0:
        raise ExportError(f"version must be a non-negative integer, got {version}")
    if decoder not in DECODERS:
        raise ExportError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    config, singles = rundir.load_repetitions(model_dir)
    decoder = resolve_decoder(decoder, config.num_classes)
    versions = existing_versions(output)
    if version is None:
        version = (versions[-1] + 1) if versions else 1
    final = os.path.join(output, str(version))
    if tf.io.gfile.exists(final):
        raise ExportError(f"{final} already exists; pick another --version or leave it out "
                          f"to take the next one ({(versions[-1] + 1) if versions else 1})")
    featurizer = texts = None
    if config.text is not None:
        # Text models: the sample's features come from the Python reference featuriser, so
        # predict_text on the raw strings is checked against featurising outside the graph.
        from mach_tf.predict import pad_batch
        from mach_tf.text import load_featurizer
        from mach_tf.text_reference import featurize_like

        featurizer = load_featurizer(model_dir, config)
        texts = sample_texts(model_dir)
        sample = pad_batch(featurize_like(featurizer, texts))
    else:
        sample = sample_inputs(model_dir, config)
    reference = reference_bucket_scores(config, singles, sample) if verify else None
    model = stack(singles)
    del singles
    tf.io.gfile.makedirs(output)
    tmp = os.path.join(output, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    staging = tempfile.mkdtemp(prefix="mach-export-")
    try:
        names = _read_label_names(label_names, config.num_classes, staging) \
            if label_names else None
        say(f"export: {config.num_repetitions} repetitions, K={config.num_classes}, "
            f"decoder={decoder}, top_k={top_k}")
        archive = build_archive(config, model, top_k, decoder, candidate_buckets, names,
                                featurizer=featurizer)
        archive.write_out(tmp, verbose=False)
        del archive, model
        gc.collect()
        checked = 0
        if verify:
            expected = reference_topk(config, reference, decoder, candidate_buckets, top_k)
            checked = verify_export(tmp, final, sample, expected, names, texts)
            say(f"export: {'all three' if texts is not None else 'both'} signatures "
                f"reproduced the in-Python top-{top_k} on {checked} queries "
                f"(tf.saved_model.load and the v1 session loader)")
        extra = os.path.join(tmp, "assets.extra")
        tf.io.gfile.makedirs(extra)
        if warmup:
            warmup_lib.write_warmup(os.path.join(extra, warmup_lib.WARMUP_FILE), sample,
                                    num_requests=8, texts=texts)
        with tf.io.gfile.GFile(os.path.join(extra, EXPORT_INFO), "w") as f:
            json.dump({"config": config.to_dict(), "decoder": decoder, "top_k": top_k,
                       "candidate_buckets": candidate_buckets,
                       "scores": "mean over repetitions of the bucket "
                                 + ("probability" if config.merge == "prob"
                                    else "log-probability"),
                       "signatures": [SERVING_DEFAULT, PREDICT_EXAMPLES]
                       + ([PREDICT_TEXT] if featurizer is not None else []),
                       "mach_tf_version": __version__, "model_dir": model_dir}, f, indent=2)
        tf.io.gfile.rename(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"export: wrote {final}")
    return ExportResult(final, version, decoder, top_k, candidate_buckets, checked,
                        round(time.time() - t0, 3))


def _session_outputs(path: str, feeds_by_signature: dict) -> dict:
    """Signatures run the way TensorFlow Serving runs them: v1 loader, tensor names."""
    out = {}
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        for name, feeds in feeds_by_signature.items():
            sig = meta.signature_def[name]
            if sig.method_name != METHOD_NAME:
                raise ExportError(f"{path}: {name} has method {sig.method_name!r}, "
                                  f"TensorFlow Serving's predict API needs {METHOD_NAME!r}")
            fetch = {k: v.name for k, v in sig.outputs.items()}
            out[name] = sess.run(fetch, {sig.inputs[k].name: v for k, v in feeds.items()})
    return out


def verify_export(path: str, final: str, sample: dict, expected, names: str | None,
                  texts: list[str] | None = None) -> int:
    """Checks the SavedModel at ``path`` against the reference top-k ``expected``.

    Args:
        path: The written SavedModel.
        final: Its final path (for messages).
        sample: Padded ``feature_ids`` / ``feature_values`` of the sample queries.
        expected: ``(scores, ids)`` of the reference decoding of ``sample``.
        names: The staged label-names file, or ``None``.
        texts: For a text model, the sample's raw strings (``sample`` is their Python
            reference featurisation): ``predict_text`` gets them as strings and
            ``predict_examples`` as tf.Examples with a ``text`` feature.

    Returns:
        The number of queries checked.

    Raises:
        ExportError: naming the signature and loader that disagree, and on how many queries.
    """
    ref_s, ref_i = expected
    n = int(sample["feature_ids"].shape[0])
    feeds = {k: np.asarray(v) for k, v in sample.items()}
    if texts is None:
        examples = serialized_examples(rows_from_padded(feeds["feature_ids"],
                                                        feeds["feature_values"]))
    else:
        examples = text_examples(texts)
    loaded = tf.saved_model.load(path)
    outputs = {
        f"{SERVING_DEFAULT} (tf.saved_model.load)":
            loaded.signatures[SERVING_DEFAULT](**{k: tf.constant(v) for k, v in feeds.items()}),
        f"{PREDICT_EXAMPLES} (tf.saved_model.load)":
            loaded.signatures[PREDICT_EXAMPLES](examples=tf.constant(examples)),
    }
    session_feeds = {SERVING_DEFAULT: feeds}
    if texts is not None:
        text_feed = np.asarray([t.encode("utf-8") for t in texts], dtype=object)
        outputs[f"{PREDICT_TEXT} (tf.saved_model.load)"] = \
            loaded.signatures[PREDICT_TEXT](text=tf.constant(text_feed))
        session_feeds[PREDICT_TEXT] = {"text": text_feed}
    outputs = {k: {name: np.asarray(t) for name, t in v.items()} for k, v in outputs.items()}
    del loaded
    gc.collect()
    for name, out in _session_outputs(path, session_feeds).items():
        outputs[f"{name} (v1 session loader)"] = out
    label_of = None
    if names is not None:
        with open(names, encoding="utf-8") as f:
            label_of = np.asarray([line.rstrip("\n") for line in f] + [""], dtype=object)
    for where, out in outputs.items():
        bad = disagreeing_rows(out["label_ids"], out["scores"], ref_i, ref_s)
        if bad:
            query = f" {texts[bad[0]]!r}" if texts is not None else ""
            raise ExportError(
                f"{final}: {where} differs from the in-Python merged top-{ref_i.shape[1]} "
                f"on {len(bad)} of {n} sample queries (first: query {bad[0]}{query}, "
                f"{out['label_ids'][bad[0]].tolist()} vs {ref_i[bad[0]].tolist()}); the "
                f"export was discarded")
        ids = out["label_ids"]
        want = label_of[ids] if label_of is not None else ids.astype(str)
        got = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(out["labels"])
        if not np.array_equal(got.astype(str), np.asarray(want).astype(str)):
            raise ExportError(f"{final}: {where} returns labels that do not name its "
                              f"label_ids; the export was discarded")
    return n
