"""``mach-tf demo``: the whole pipeline end to end on built-in synthetic data.

generate -> convert -> train R repetitions with 2 local workers -> export one SavedModel ->
load it back and check it against the in-Python merged scoring -> evaluate. With
``text=True`` the data are labelled queries (:mod:`mach_tf.datasets.synthetic_text`),
featurised in the training pipeline and by the export's ``predict_text``.

The command line imports this module only when the demo runs, so it imports what it uses
at module level (export included: the demo runs the whole pipeline).
"""

from __future__ import annotations

import os
import shutil
import time

import tensorflow as tf

from export.stitch import export_model
from mach_tf import rundir
from mach_tf.config import MachConfig, TextSettings
from mach_tf.data import to_model_inputs
from mach_tf.datasets.synthetic import SyntheticSpec, write_split
from mach_tf.datasets.synthetic_text import text_spec, write_text_split
from mach_tf.inference.evaluation import evaluate, export_info_path, popularity_baseline
from mach_tf.inference.predict import pad_batch
from mach_tf.inference.reference import topk_agree
from mach_tf.inference.scorer import MergedScorer
from mach_tf.launch.local import train
from mach_tf.text.reference import featurize_like
from mach_tf.text.statistics import load_featurizer
from tfrecords_tools.convert import convert
from tfrecords_tools.dataset import make_dataset
from tfrecords_tools.paths import expand_path

DEMO = dict(num_labels=2000, num_features=10000, num_train=30000, num_test=3000,
            buckets=128, repetitions=8, hidden=[128], epochs=4, workers=2)
SMALL = dict(num_labels=300, num_features=2000, num_train=4000, num_test=500,
             buckets=32, repetitions=4, hidden=[64], epochs=3, workers=2)


def _run_scorer(export_dir: str, run_dir: str) -> MergedScorer:
    """The in-Python merged scoring of the run, with the export's decoder settings."""
    config, model = rundir.load_all(run_dir)
    info = rundir.read_json(export_info_path(export_dir))
    return MergedScorer(config, model, info["decoder"], info["candidate_buckets"])


def serving_check(export_dir: str, run_dir: str, test: str, top_k: int, n: int = 256) -> dict:
    """Queries the export, loaded back by TensorFlow's loader, on ``n`` test examples and
    compares with the in-Python merged top-k of the run."""
    scorer = _run_scorer(export_dir, run_dir)
    fn = tf.saved_model.load(export_dir).signatures["serving_default"]
    batch = to_model_inputs(next(iter(make_dataset(test, n, shuffle=False))))
    out = fn(**batch)
    ref_s, ref_i = scorer.topk(batch, top_k)
    ok = topk_agree(out["label_ids"].numpy(), out["scores"].numpy(), ref_i.numpy(),
                    ref_s.numpy())
    return {"serving_check": bool(ok), "serving_queries": int(batch["feature_ids"].shape[0])}


def text_serving_check(export_dir: str, run_dir: str, test: str, top_k: int,
                       n: int = 256) -> dict:
    """Queries the export's ``predict_text`` with ``n`` raw test queries and compares with
    featurising them in Python (:mod:`mach_tf.text.reference`) and the in-Python merged
    top-k of the run."""
    scorer = _run_scorer(export_dir, run_dir)
    texts = next(iter(make_dataset(test, n, shuffle=False, with_text=True)))["text"]
    out = tf.saved_model.load(export_dir).signatures["predict_text"](text=texts)
    features = pad_batch(featurize_like(load_featurizer(run_dir, scorer.config),
                                        texts.numpy().tolist()))
    ref_s, ref_i = scorer.topk({k: tf.constant(v) for k, v in features.items()}, top_k)
    ok = topk_agree(out["label_ids"].numpy(), out["scores"].numpy(), ref_i.numpy(),
                    ref_s.numpy())
    return {"serving_check": bool(ok), "serving_queries": int(texts.shape[0])}


def run_demo(workdir: str = "demo-output", small: bool = False, text: bool = False,
             log=print) -> dict:
    """Runs the demo; returns the JSON of DESIGN.md (p@1, p@5, floor_p@1, export_dir,
    serving_check) plus timings. ``text`` runs the text pipeline (see module docstring)."""
    workdir = expand_path(workdir)
    s = SMALL if small else DEMO
    t0 = time.time()
    times = {}
    data = os.path.join(workdir, "data")
    run = os.path.join(workdir, "run")
    serving = os.path.join(workdir, "serving", "mach")
    for d in (run, serving):
        shutil.rmtree(d, ignore_errors=True)

    if text:
        spec = text_spec(s["num_labels"], seed=0)
        log(f"demo: writing synthetic labelled queries (K={spec.num_labels}, "
            f"{spec.num_features} words, {s['num_train']} train / {s['num_test']} test) to "
            f"{data}")
        train_txt, test_txt = write_text_split(data, spec, s["num_train"], s["num_test"])
        extra = {"text": TextSettings(char_ngrams=3).to_dict()}
        num_features, fmt = 1 << 15, "text"
    else:
        spec = SyntheticSpec(num_labels=s["num_labels"], num_features=s["num_features"],
                             seed=0)
        log(f"demo: writing synthetic data (K={spec.num_labels}, D={spec.num_features}, "
            f"{s['num_train']} train / {s['num_test']} test points) to {data}")
        train_txt, test_txt = write_split(data, spec, s["num_train"], s["num_test"])
        extra, num_features, fmt = {}, spec.num_features, "xmc"
    times["generate_s"] = time.time() - t0

    t = time.time()
    train_prefix, test_prefix = os.path.join(data, "tfr", "train"), \
        os.path.join(data, "tfr", "test")
    convert(train_txt, train_prefix, fmt, num_shards=2)
    convert(test_txt, test_prefix, fmt, num_shards=1)
    times["convert_s"] = time.time() - t

    t = time.time()
    config = MachConfig.from_data(spec.num_labels, num_features,
                                  num_buckets=s["buckets"], num_repetitions=s["repetitions"],
                                  hidden_units=s["hidden"], epochs=s["epochs"], seed=0,
                                  **extra)
    log(f"demo: training R={config.num_repetitions} repetitions of B={config.num_buckets} "
        f"buckets with {s['workers']} worker processes")
    report = train(run, train_prefix, None, config, workers=s["workers"], verbose=0, log=log)
    if report["failed"]:
        raise RuntimeError(f"demo: training failed: {report['failed']}")
    times["train_s"] = time.time() - t

    t = time.time()
    result = export_model(run, serving, top_k=10, log=log)
    times["export_s"] = time.time() - t

    t = time.time()
    check_serving = text_serving_check if text else serving_check
    check = check_serving(result.path, run, test_prefix, top_k=10)
    metrics = evaluate(run, test_prefix, ks=(1, 3, 5))
    floor = popularity_baseline(rundir.load_label_counts(run), test_prefix, ks=(1, 3, 5))
    times["evaluate_s"] = time.time() - t

    out = {
        "p@1": round(metrics["p@1"], 4), "p@3": round(metrics["p@3"], 4),
        "p@5": round(metrics["p@5"], 4), "ndcg@5": round(metrics["ndcg@5"], 4),
        "floor_p@1": round(floor["p@1"], 4), "floor_p@5": round(floor["p@5"], 4),
        "input": "text" if text else "sparse",
        "num_classes": config.num_classes, "buckets": config.num_buckets,
        "repetitions": config.num_repetitions, "workers": s["workers"],
        "num_test": metrics["num_examples"], "model_dir": run, "export_dir": result.path,
        "decoder": result.decoder, **check,
        **{k: round(v, 2) for k, v in times.items()},
        "total_s": round(time.time() - t0, 2),
    }
    log(f"demo: P@1 {out['p@1']:.3f} (floor {out['floor_p@1']:.3f}), P@5 {out['p@5']:.3f}; "
        f"serving check {'passed' if out['serving_check'] else 'FAILED'}; "
        f"export at {out['export_dir']}")
    return out
