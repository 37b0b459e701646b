"""Checking an export before it is published: sample queries, answered by the written
SavedModel through both of TensorFlow's loaders, against the in-Python reference.

The check is independent of the code that built the serving graph: the reference bucket
scores come from the R repetition models as saved by training, each run on its own (not
the stacked model that was exported), merged and decoded by the numpy references of
:mod:`mach_tf.inference.reference`. Every signature, plain and filtered, is checked through
``tf.saved_model.load`` and through the v1 session loader that TensorFlow Serving's C++
loader mirrors, feeding the signatures' tensor names. A dense model's sample is vectors
(``embedding``), which ``predict_examples`` gets as dense tf.Examples.
"""

from __future__ import annotations

import gc

import numpy as np
import tensorflow as tf
from tensorflow.python.util import deprecation

from export.client import sample_examples
from export.signatures import FILTERED, METHOD_NAME, PREDICT_EXAMPLES, PREDICT_TEXT, SERVING_DEFAULT
from mach_tf import rundir
from mach_tf.data import DENSE_KEY, to_model_inputs
from mach_tf.inference.reference import disagreeing_rows
from tfrecords_tools.dataset import make_dataset


class ExportError(RuntimeError):
    """An export that was refused or failed its check (no version was written)."""


def sample_inputs(run: str, config, n: int = 64, seed: int = 0) -> dict:
    """Representative model inputs: the first ``n`` training examples when known, else
    random sparse rows (padded), or for a dense model random unit vectors of width d."""
    dense = config.input_format == "dense"
    info = rundir.train_data_path(run)
    if tf.io.gfile.exists(info):
        train = rundir.read_json(info).get("train")
        try:
            batch = next(iter(make_dataset(train, n, shuffle=False)))
            sample = {k: v.numpy() for k, v in to_model_inputs(batch).items()}
            # Data of another kind or width (replaced since training) is no sample.
            if (DENSE_KEY in sample) == dense and (
                    not dense or sample[DENSE_KEY].shape[1] == config.num_features):
                return sample
        except (FileNotFoundError, ValueError, StopIteration, tf.errors.OpError):
            pass
    rng = np.random.default_rng(seed)
    if dense:
        x = rng.standard_normal((n, config.num_features))
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return {DENSE_KEY: x.astype(np.float32)}
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
    info = rundir.train_data_path(run)
    if tf.io.gfile.exists(info):
        train = rundir.read_json(info).get("train")
        try:
            batch = next(iter(make_dataset(train, n, shuffle=False, with_text=True)))
            texts = [t.decode("utf-8") for t in batch["text"].numpy()]
        except (FileNotFoundError, ValueError, StopIteration, tf.errors.OpError):
            texts = []
    return texts + list(TEXT_PROBES)


def sample_filters(ids: np.ndarray, num_classes: int, top_k: int, seed: int = 0) -> dict:
    """A filtered signature's extra inputs for the verification sample, covering each
    path: rows excluding their two best unfiltered classes (``ids``, the reference top-k),
    rows restricted to a few classes (their best one among them, repeated, and padding),
    rows with both, rows with neither; and a ``top_k`` below the export's when it can be.
    """
    rng = np.random.default_rng(seed)
    n = len(ids)
    exclude = np.full((n, 3), -1, np.int64)
    restrict = np.full((n, 6), -1, np.int64)
    for i, row in enumerate(np.asarray(ids)):
        best = [int(c) for c in row if c >= 0]
        if i % 4 in (0, 2):
            exclude[i, :2] = (best + [0, 0])[:2]
        if i % 4 in (1, 2):
            picks = rng.choice(num_classes, min(3, num_classes), replace=False)
            chosen = ([best[0]] if best else []) + [int(c) for c in picks]
            restrict[i, :len(chosen) + 1] = chosen + [chosen[0]]
    return {"exclude_ids": exclude, "restrict_ids": restrict,
            "top_k": np.int32(max(1, top_k - 1))}


def session_outputs(path: str, feeds_by_signature: dict) -> dict:
    """Signatures run the way TensorFlow Serving runs them: v1 loader, tensor names."""
    out = {}
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        # The v1 loader is deprecated for Python users, but it is the C++ path TF Serving
        # takes, which is what this check is for: its warning would only confuse.
        with deprecation.silence():
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        for name, feeds in feeds_by_signature.items():
            sig = meta.signature_def[name]
            if sig.method_name != METHOD_NAME:
                raise ExportError(f"{path}: {name} has method {sig.method_name!r}, "
                                  f"TensorFlow Serving's predict API needs {METHOD_NAME!r}")
            fetch = {k: v.name for k, v in sig.outputs.items()}
            out[name] = sess.run(fetch, {sig.inputs[k].name: v for k, v in feeds.items()})
    return out


def check_answers(final: str, outputs: dict, references: dict, names: str | None,
                  what: tuple[str, str] = ("queries", "query"), describe=None) -> None:
    """Each signature's answer (``outputs[where]``: ``label_ids``, ``scores``, ``labels``)
    against its reference top-k (``references[where]``: ``(scores, ids)``), and its labels
    against the names file.

    Raises:
        ExportError: naming the signature and loader that disagree, on how many of the
            sample's ``what`` (plural, singular) and the first of them (``describe(i)``
            adds its text).
    """
    label_of = None
    if names is not None:
        with open(names, encoding="utf-8") as f:
            label_of = np.asarray([line.rstrip("\n") for line in f] + [""], dtype=object)
    for where, out in outputs.items():
        ref_s, ref_i = references[where]
        bad = disagreeing_rows(out["label_ids"], out["scores"], ref_i, ref_s)
        if bad:
            query = describe(bad[0]) if describe is not None else ""
            raise ExportError(
                f"{final}: {where} differs from the in-Python merged top-{ref_i.shape[1]} "
                f"on {len(bad)} of {len(ref_i)} sample {what[0]} (first: {what[1]} "
                f"{bad[0]}{query}, {out['label_ids'][bad[0]].tolist()} vs "
                f"{ref_i[bad[0]].tolist()}); the export was discarded")
        ids = out["label_ids"]
        want = label_of[ids] if label_of is not None else ids.astype(str)
        got = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(out["labels"])
        if not np.array_equal(got.astype(str), np.asarray(want).astype(str)):
            raise ExportError(f"{final}: {where} returns labels that do not name its "
                              f"label_ids; the export was discarded")


def verify_export(path: str, final: str, sample: dict, expected, names: str | None,
                  texts: list[str] | None = None, filtered=None) -> int:
    """Checks the SavedModel at ``path`` against the reference top-k ``expected``.

    Args:
        path: The written SavedModel.
        final: Its final path (for messages).
        sample: Padded ``feature_ids`` / ``feature_values`` of the sample queries, or a
            dense model's ``embedding`` ``[n, d]``.
        expected: ``(scores, ids)`` of the reference decoding of ``sample``.
        names: The staged label-names file, or ``None``.
        texts: For a text model, the sample's raw strings (``sample`` is their Python
            reference featurisation): ``predict_text`` gets them as strings and
            ``predict_examples`` as tf.Examples with a ``text`` feature.
        filtered: ``(filters, expected)``: the filtered signatures' extra inputs
            (:func:`sample_filters`) and the reference top-k they must give.

    Returns:
        The number of queries checked.

    Raises:
        ExportError: naming the signature and loader that disagree, and on how many queries.
    """
    feeds = {k: np.asarray(v) for k, v in sample.items()}
    n = int(next(iter(feeds.values())).shape[0])
    examples = sample_examples(feeds, texts)
    loaded = tf.saved_model.load(path)
    outputs = {
        f"{SERVING_DEFAULT} (tf.saved_model.load)":
            loaded.signatures[SERVING_DEFAULT](**{k: tf.constant(v) for k, v in feeds.items()}),
        f"{PREDICT_EXAMPLES} (tf.saved_model.load)":
            loaded.signatures[PREDICT_EXAMPLES](examples=tf.constant(examples)),
    }
    session_feeds = {SERVING_DEFAULT: feeds,
                     PREDICT_EXAMPLES: {"examples": np.asarray(examples, dtype=object)}}
    if texts is not None:
        text_feed = np.asarray([t.encode("utf-8") for t in texts], dtype=object)
        outputs[f"{PREDICT_TEXT} (tf.saved_model.load)"] = \
            loaded.signatures[PREDICT_TEXT](text=tf.constant(text_feed))
        session_feeds[PREDICT_TEXT] = {"text": text_feed}
    references = dict.fromkeys(outputs, expected)
    if filtered is not None:
        filters, expected_filtered = filtered
        extra = {k: tf.constant(v) for k, v in filters.items()}
        inputs = {SERVING_DEFAULT: {k: tf.constant(v) for k, v in feeds.items()},
                  PREDICT_EXAMPLES: {"examples": tf.constant(examples)}}
        if texts is not None:
            inputs[PREDICT_TEXT] = {"text": tf.constant(text_feed)}
        for name, query in inputs.items():
            where = f"{name}{FILTERED} (tf.saved_model.load)"
            outputs[where] = loaded.signatures[name + FILTERED](**query, **extra)
            references[where] = expected_filtered
        for name in list(session_feeds):
            session_feeds[name + FILTERED] = {**session_feeds[name], **filters}
    outputs = {k: {name: np.asarray(t) for name, t in v.items()} for k, v in outputs.items()}
    del loaded
    gc.collect()
    for name, out in session_outputs(path, session_feeds).items():
        outputs[f"{name} (v1 session loader)"] = out
        references[f"{name} (v1 session loader)"] = \
            filtered[1] if name.endswith(FILTERED) else expected
    check_answers(final, outputs, references, names, ("queries", "query"),
                  (lambda i: f" {texts[i]!r}") if texts is not None else None)
    return n
