"""Scale: ten million classes on one machine, end to end, within 16 GiB.

    python -m benchmarks.scale --json --classes 10000000

Runs the whole pipeline the way a user does, each stage its own process which reports its
own peak RSS (``getrusage``'s ``ru_maxrss``):

1. ``generate``: a synthetic catalogue of K classes (``mach_tf.datasets.synthetic``, nothing of
   size K held per point) written straight to TFRecords (train and test);
2. ``train``: ``mach-tf train`` with the defaults for K (B, R from ``MachConfig.from_data``;
   ``--repetitions`` to train fewer), one worker;
3. ``export``: ``mach-tf export --decoder candidates`` (CSR inverted index in the model);
4. ``serve``: the export loaded back by ``tf.saved_model.load``, queried at batch 1 and
   batch 64 on held-out points, with P@1 / P@5 (``mach-tf evaluate`` on the export).

Reports seconds and peak RSS per stage and ``peak_rss_mb`` (the largest). Goal: every
stage under 16 GiB. No stage materialises a ``[batch, K]`` or ``[R, K]`` float tensor:
training sees only ``[batch, R, B]``, the candidate decoder scores ``O(R * m * K / B)``
classes per query, and evaluation uses the candidate decoder above 100,000 classes.
The last stdout line is one JSON object with the figures and every setting used.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=10_000_000)
    p.add_argument("--features", type=int, default=100_000)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--train-points", type=int, default=200_000)
    p.add_argument("--test-points", type=int, default=2_000)
    p.add_argument("--repetitions", type=int, default=4, help="R (default config's B)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--candidate-buckets", type=int, default=10)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir")
    p.add_argument("--stage", choices=("generate", "serve"), help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


_say = functools.partial(common.say, "scale")


def _run(cmd, env=None) -> tuple[float, float, str]:
    """Runs ``cmd``; returns (seconds, its peak RSS in MB as it reports it on its last
    line, stdout). Raises on failure."""
    t = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})))
    out, err = proc.communicate()
    seconds = time.time() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} failed ({proc.returncode}):\n"
                           f"{err[-3000:]}")
    rss = json.loads(out.strip().splitlines()[-1]).get("_peak_rss_mb", 0.0)
    return seconds, rss, out


def _child(args, stage, workdir) -> list[str]:
    return [sys.executable, "-m", "benchmarks.scale", "--stage", stage, "--workdir", workdir,
            "--classes", str(args.classes), "--features", str(args.features),
            "--train-points", str(args.train_points), "--test-points", str(args.test_points),
            "--queries", str(args.queries), "--seed", str(args.seed)]


def _mach(*args) -> list[str]:
    # A tiny wrapper reporting the CLI's own peak RSS on its last line.
    return [sys.executable, "-c",
            "import json, resource, sys, io, contextlib\n"
            "from mach_tf.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    code = main(sys.argv[1:])\n"
            "out = buf.getvalue().strip().splitlines()\n"
            "res = json.loads(out[-1]) if out and out[-1].startswith('{') else {}\n"
            "res['_peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
            "print(json.dumps(res)); sys.exit(code)\n", *map(str, args)]


def stage_generate(args, workdir) -> dict:
    import dataclasses

    from mach_tf.datasets.synthetic import SyntheticSpec, generate
    from tfrecords_tools.convert import write_examples

    spec = SyntheticSpec(num_labels=args.classes, num_features=args.features, seed=args.seed)
    for name, n, seed, shards in (("train", args.train_points, 1, 4),
                                  ("test", args.test_points, 2, 1)):
        write_examples(os.path.join(workdir, "data", name), generate(spec, n, seed=seed),
                       args.features, args.classes, num_shards=shards,
                       source={"format": "synthetic", "spec": dataclasses.asdict(spec)})
    return {}


def stage_serve(args, workdir) -> dict:
    import numpy as np
    import tensorflow as tf

    from mach_tf.data import to_model_inputs
    from mach_tf.inference.evaluation import resolve_export
    from tfrecords_tools.dataset import make_dataset

    path = resolve_export(os.path.join(workdir, "serving", "mach"))
    t = time.time()
    fn = tf.saved_model.load(path).signatures["serving_default"]
    load_s = time.time() - t
    batch = to_model_inputs(next(iter(make_dataset(os.path.join(workdir, "data", "test"),
                                                   args.queries, shuffle=False))))
    ids, vals = batch["feature_ids"], batch["feature_values"]
    fn(feature_ids=ids[:1], feature_values=vals[:1])
    lat = []
    for i in range(min(args.queries, int(ids.shape[0]))):
        t = time.perf_counter()
        fn(feature_ids=ids[i:i + 1], feature_values=vals[i:i + 1])["label_ids"].numpy()
        lat.append(1000 * (time.perf_counter() - t))
    t = time.perf_counter()
    n = 0
    for s in range(0, int(ids.shape[0]), 64):
        n += int(fn(feature_ids=ids[s:s + 64], feature_values=vals[s:s + 64])
                 ["label_ids"].shape[0])
    qps = n / (time.perf_counter() - t)
    return {"load_s": round(load_s, 2), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "batch64_qps": round(qps, 1)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    import resource

    if args.stage:
        res = stage_generate(args, args.workdir) if args.stage == "generate" else \
            stage_serve(args, args.workdir)
        res["_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return res
    with common.workdir(args.workdir, "mach-scale-") as workdir:
        t0 = time.time()
        stages = {}
        run = os.path.join(workdir, "run")
        serving = os.path.join(workdir, "serving", "mach")
        for d in (run, serving):
            shutil.rmtree(d, ignore_errors=True)

        def record(name, cmd):
            _say(args, f"{name} ...")
            s, rss, out = _run(cmd)
            res = json.loads(out.strip().splitlines()[-1])
            stages[name] = {"seconds": round(s, 1), "peak_rss_mb": round(rss, 1)}
            _say(args, f"{name}: {stages[name]}")
            return res

        record("generate", _child(args, "generate", workdir))
        train = record("train", _mach(
            "train", "--train", os.path.join(workdir, "data", "train"), "--model-dir", run,
            "--repetitions", args.repetitions, "--hidden", args.hidden, "--epochs",
            args.epochs, "--batch-size", args.batch_size, "--seed", args.seed, "--json"))
        export = record("export", _mach(
            "export", "--model-dir", run, "--output", serving, "--decoder", "candidates",
            "--candidate-buckets", args.candidate_buckets, "--top-k", 5, "--json"))
        serve = record("serve", _child(args, "serve", workdir))
        evaluation = record("evaluate", _mach(
            "evaluate", "--model", serving, "--test", os.path.join(workdir, "data", "test"),
            "--json"))
        config = json.load(open(os.path.join(run, "config.json")))
        out = {"benchmark": "scale", "classes": args.classes, "features": args.features,
               "hidden": args.hidden, "buckets": config["num_buckets"],
               "repetitions": config["num_repetitions"], "train_points": args.train_points,
               "epochs": args.epochs, "batch_size": args.batch_size,
               "candidate_buckets": args.candidate_buckets,
               "stages": stages, "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
               "serve": {k: v for k, v in serve.items() if not k.startswith("_")},
               "p@1": round(evaluation.get("p@1", float("nan")), 4),
               "p@5": round(evaluation.get("p@5", float("nan")), 4),
               "train_complete": train.get("complete"), "export_path": export.get("path")}
        return common.emit(out, t0)


if __name__ == "__main__":
    main()
