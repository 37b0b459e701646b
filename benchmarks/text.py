"""Text benchmark: accuracy of the featuriser's settings on queries with typos, and the cost
of featurising in the graph, side by side.

    python -m benchmarks.text --json

In one run: generates synthetic labelled queries (``mach_tf.datasets.synthetic_text``: per-label
words, shared noise words, misspellings, casing, accents) for K classes, converts them with
``--format text``, and

* trains one run per ``--char-ngrams`` value (word unigrams + bigrams, plus character
  n-grams of that width; 0 = none) and reports P@1 / P@5 on the held-out queries as
  generated and on a second held-out set whose words are misspelt with probability
  ``--heavy-typo``;
* exports the last run and measures, alternating query by query so machine noise hits
  both alike: batch-1 latency p50 / p99 of ``predict_text`` on raw strings against
  ``serving_default`` on the same queries featurised beforehand (ratio = the cost of
  featurising inside the serving graph), and batch-64 throughput of both;
* measures the training input pipeline: examples per second of the text pipeline
  (TFRecords with text -> featuriser in ``tf.data``) against the sparse pipeline on the
  same examples featurised once and stored as sparse TFRecords, passes alternating.

The last stdout line is one JSON object with the figures and every setting used.
"""

from __future__ import annotations

import argparse
import functools
import dataclasses
import json
import os
import sys
import time

import numpy as np

from benchmarks import common

BATCH = 64


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.text", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=2000, help="K")
    p.add_argument("--train-points", type=int, default=20000)
    p.add_argument("--test-points", type=int, default=2000)
    p.add_argument("--avg-labels", type=float, default=1.5)
    p.add_argument("--heavy-typo", type=float, default=0.3,
                   help="misspelling probability per word of the second test set")
    p.add_argument("--text-features", type=int, default=1 << 15, help="D")
    p.add_argument("--char-ngrams", type=int, nargs="+", default=[0, 3])
    p.add_argument("--buckets", type=int, default=128, help="B")
    p.add_argument("--repetitions", type=int, default=4, help="R")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--latency-queries", type=int, default=300)
    p.add_argument("--pipeline-passes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep data, runs and exports here (default: a temp "
                                     "dir, removed at the end)")
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    return p.parse_args(argv)


_say = functools.partial(common.say, "text")


def make_data(args, workdir) -> dict:
    from mach_tf.datasets.synthetic_text import TextNoise, text_spec, write_text
    from tfrecords_tools.convert import convert

    spec = text_spec(args.classes, avg_labels=args.avg_labels, seed=args.seed)
    out = {"spec": dataclasses.asdict(spec)}
    for name, n, seed, noise in (("train", args.train_points, 1, TextNoise()),
                                 ("test", args.test_points, 2, TextNoise()),
                                 ("test_typos", args.test_points, 3,
                                  TextNoise(typo=args.heavy_typo))):
        txt = write_text(os.path.join(workdir, f"{name}.txt"), spec, n, seed, noise)
        out[name] = os.path.join(workdir, "tfr", name)
        convert(txt, out[name], "text", num_shards=2 if name == "train" else 1)
    return out


def train_and_evaluate(args, data, workdir, char_ngrams: int) -> dict:
    from mach_tf.inference.evaluation import evaluate
    from mach_tf.data import config_for_data
    from mach_tf.launch.local import train

    config = config_for_data(
        data["train"], num_buckets=args.buckets, num_repetitions=args.repetitions,
        hidden_units=[args.hidden], epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, group_size=args.repetitions,
        text_features=args.text_features, char_ngrams=char_ngrams)
    run = os.path.join(workdir, f"run-c{char_ngrams}")
    t0 = time.time()
    summary = train(run, data["train"], None, config, workers=1, verbose=0,
                    log=lambda m: None)
    if summary["failed"]:
        raise RuntimeError(f"training failed: {summary['failed']}")
    seconds = time.time() - t0
    out = {"char_ngrams": char_ngrams, "train_s": round(seconds, 1), "run": run}
    for name in ("test", "test_typos"):
        m = evaluate(run, data[name], ks=(1, 5))
        out[f"{name}_p@1"] = round(m["p@1"], 4)
        out[f"{name}_p@5"] = round(m["p@5"], 4)
    _say(args, f"char_ngrams={char_ngrams}: {out}")
    return out


def serving(args, run, data, workdir) -> dict:
    import tensorflow as tf

    from export.stitch import export_model
    from mach_tf import rundir
    from mach_tf.inference.predict import pad_batch
    from mach_tf.text.statistics import load_featurizer
    from mach_tf.text.reference import featurize_like
    from tfrecords_tools.dataset import make_dataset

    path = export_model(run, os.path.join(workdir, "serving", "mach"), top_k=5).path
    loaded = tf.saved_model.load(path)
    by_text = loaded.signatures["predict_text"]
    by_ids = loaded.signatures["serving_default"]
    n = args.latency_queries
    texts = []
    for batch in make_dataset(data["test"], 512, shuffle=False, with_text=True):
        texts += [t for t in batch["text"].numpy()]
    texts = texts[:max(n, BATCH * 8)]
    features = featurize_like(load_featurizer(run, rundir.load_config(run)), texts)
    ids_rows = [pad_batch([f]) for f in features]
    # Warm both signatures (first calls trace and allocate).
    for i in range(5):
        by_text(text=tf.constant(texts[i:i + 1]))
        by_ids(**{k: tf.constant(v) for k, v in ids_rows[i].items()})
    lat = {"predict_text": [], "serving_default": []}
    for i in range(n):
        order = (("predict_text", "serving_default") if i % 2 == 0
                 else ("serving_default", "predict_text"))
        for name in order:
            t0 = time.perf_counter()
            if name == "predict_text":
                by_text(text=tf.constant(texts[i:i + 1]))
            else:
                by_ids(**{k: tf.constant(v) for k, v in ids_rows[i].items()})
            lat[name].append(time.perf_counter() - t0)
    batches = [(texts[j:j + BATCH], pad_batch(features[j:j + BATCH]))
               for j in range(0, len(texts) - BATCH + 1, BATCH)]
    thr = {"predict_text": 0.0, "serving_default": 0.0}
    for j, (tb, fb) in enumerate(batches * 2):
        for name in (("predict_text", "serving_default") if j % 2 == 0
                     else ("serving_default", "predict_text")):
            t0 = time.perf_counter()
            if name == "predict_text":
                by_text(text=tf.constant(tb))
            else:
                by_ids(**{k: tf.constant(v) for k, v in fb.items()})
            thr[name] += time.perf_counter() - t0
    queries = len(batches) * 2 * BATCH
    out = {}
    for name in lat:
        ms = np.asarray(lat[name]) * 1e3
        out[f"{name}_p50_ms"] = round(float(np.percentile(ms, 50)), 3)
        out[f"{name}_p99_ms"] = round(float(np.percentile(ms, 99)), 3)
        out[f"{name}_qps_batch{BATCH}"] = round(queries / thr[name], 1)
    out["latency_ratio_p50"] = round(out["predict_text_p50_ms"]
                                     / out["serving_default_p50_ms"], 3)
    out["throughput_ratio_batch64"] = round(out["predict_text_qps_batch64"]
                                            / out["serving_default_qps_batch64"], 3)
    out["export"] = path
    _say(args, f"serving: {out}")
    return out


def pipeline(args, run, data, workdir) -> dict:
    """Examples/s of the text pipeline vs the sparse pipeline on the same examples."""
    import tensorflow as tf

    from mach_tf import rundir
    from mach_tf.data import training_dataset
    from mach_tf.text.statistics import load_featurizer
    from tfrecords_tools.convert import write_examples
    from tfrecords_tools.dataset import make_dataset

    config = rundir.load_config(run)
    featurizer = load_featurizer(run, config)

    def sparse_points():
        for b in make_dataset(data["train"], 1024, shuffle=False, with_text=True):
            f = featurizer(b["text"])
            for ids, vals, labels in zip(f["feature_ids"].numpy(), f["feature_values"].numpy(),
                                         b["labels"].to_list()):
                keep = ids >= 0
                yield labels, ids[keep].tolist(), vals[keep].tolist()

    sparse = os.path.join(workdir, "tfr", "train_sparse")
    write_examples(sparse, sparse_points(), config.num_features, config.num_classes,
                   num_shards=2)
    sparse_config = config.replace(text=None)
    reps = list(range(config.num_repetitions))
    seconds = {"text": 0.0, "sparse": 0.0}
    count = {"text": 0, "sparse": 0}
    for p in range(args.pipeline_passes):
        for kind in (("text", "sparse") if p % 2 == 0 else ("sparse", "text")):
            ds = training_dataset(data["train"] if kind == "text" else sparse,
                                  config if kind == "text" else sparse_config, reps,
                                  shuffle=False, batch_size=args.batch_size,
                                  featurizer=featurizer if kind == "text" else None)
            t0 = time.perf_counter()
            for inputs, _targets in ds:
                count[kind] += int(tf.shape(inputs["feature_ids"])[0])
            seconds[kind] += time.perf_counter() - t0
    out = {f"{k}_pipeline_examples_per_s": round(count[k] / seconds[k], 1) for k in seconds}
    out["pipeline_ratio_text_over_sparse"] = round(
        out["text_pipeline_examples_per_s"] / out["sparse_pipeline_examples_per_s"], 3)
    _say(args, f"pipeline: {out}")
    return out


def run(args) -> dict:
    t0 = time.time()
    with common.workdir(args.workdir, "mach-text-bench-") as workdir:
        data = make_data(args, workdir)
        _say(args, f"data in {workdir}")
        runs = [train_and_evaluate(args, data, workdir, c) for c in args.char_ngrams]
        last = runs[-1]["run"]
        result = {"accuracy": [{k: v for k, v in r.items() if k != "run"} for r in runs],
                  "serving": serving(args, last, data, workdir),
                  "pipeline": pipeline(args, last, data, workdir)}
        result["serving"].pop("export")
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("json",)}
    result["seconds"] = round(time.time() - t0, 1)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = run(args)
    if not args.json:
        for key, value in result.items():
            print(f"{key}\t{value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
