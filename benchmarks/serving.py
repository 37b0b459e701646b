"""Serving benchmark: exact vs candidate decoding of a trained MACH export.

    python -m benchmarks.serving --json --classes 1000000

In one run: generates a synthetic catalogue of K classes (``mach_tf.datasets.synthetic``, nothing of
size K stored) straight into TFRecords, trains R repetitions on it for real (so bucket
distributions are peaked the way a trained model's are), exports it twice with
``mach-tf export`` (``--decoder exact`` and ``--decoder candidates``), each in its own
process whose peak RSS is taken from the kernel (``wait4``), loads both SavedModels back
and measures, side by side (the two decoders alternate query by query, so machine noise
hits both alike):

* batch-1 latency p50 / p99 of ``serving_default`` over ``--latency-queries`` queries;
* batch-64 throughput, and the agreement of candidate top-5 with exact top-5, over all
  ``--queries`` held-out queries;
* for context: the network alone (in-Python stacked model + softmax, batch 1), each decoder
  alone on precomputed bucket scores, the agreement that other values of m would give, and
  P@1 / P@5 of both exports on the held-out labels.

The last stdout line is one JSON object with the figures and every setting used.
"""

from __future__ import annotations

import argparse
import functools
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks import common

BATCH = 64


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=100_000, help="K")
    p.add_argument("--features", type=int, default=32_768, help="D")
    p.add_argument("--buckets", type=int, default=4096, help="B")
    p.add_argument("--repetitions", type=int, default=8, help="R")
    p.add_argument("--hidden", type=int, default=64, help="hidden width of each repetition")
    p.add_argument("--train-points", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=512, help="training batch size")
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--candidate-buckets", type=int, default=None,
                   help="m for the candidates export (default: the export's default)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--queries", type=int, default=1024,
                   help="held-out queries for throughput and agreement (>= 1000)")
    p.add_argument("--latency-queries", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep data, run and exports here (default: a temp dir, "
                                     "removed at the end)")
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    return p.parse_args(argv)


_say = functools.partial(common.say, "serving")


def make_data(args, workdir):
    """Writes the training TFRecords; returns (prefix, held-out queries)."""
    from mach_tf.datasets.synthetic import SyntheticSpec, generate
    from tfrecords_tools.convert import write_examples

    spec = SyntheticSpec(num_labels=args.classes, num_features=args.features,
                         seed=args.seed)
    prefix = os.path.join(workdir, "data", "train")
    write_examples(prefix, generate(spec, args.train_points, seed=1), args.features,
                   args.classes, num_shards=4,
                   source={"format": "synthetic", "spec": dataclasses.asdict(spec)})
    queries = list(generate(spec, args.queries, seed=2))
    return prefix, queries


# Runs the real CLI, then reports the process's peak RSS. VmHWM is the high-water mark of
# this process image only: wait4's ru_maxrss would also count the parent's pages that a
# (v)forked child holds before exec, i.e. the benchmark's own memory.
_CHILD = """
import sys
from mach_tf.cli import main
rc = main(sys.argv[1:])
with open("/proc/self/status") as f:
    hwm = [line.split()[1] for line in f if line.startswith("VmHWM:")][0]
print("VmHWM_kB", hwm, file=sys.stderr)
sys.exit(rc)
"""


def export_in_child(run, base, decoder, args):
    """``mach-tf export`` in a child process; returns (its JSON, its peak RSS in MB)."""
    cmd = ["export", "--model-dir", run, "--output", base, "--decoder", decoder,
           "--top-k", str(args.top_k), "--json"]
    if args.candidate_buckets is not None:
        cmd += ["--candidate-buckets", str(args.candidate_buckets)]
    res = subprocess.run([sys.executable, "-c", _CHILD, *cmd], capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise RuntimeError(f"mach-tf {' '.join(cmd)} failed ({res.returncode}): "
                           f"{res.stderr[-2000:]}")
    hwm = [line.split()[1] for line in res.stderr.splitlines()
           if line.startswith("VmHWM_kB")][0]
    return json.loads(res.stdout.strip().splitlines()[-1]), int(hwm) / 1024.0


def _pad(rows):
    from mach_tf.inference.predict import pad_batch

    return pad_batch([(ids, vals) for _, ids, vals in rows])


def _ms(xs):
    return float(np.percentile(xs, 50) * 1e3), float(np.percentile(xs, 99) * 1e3)


def _precision(ids, labels, k):
    return float(np.mean([len(set(row[:k].tolist()) & set(lab)) / k
                          for row, lab in zip(ids, labels)]))


def run(args) -> dict:
    import tensorflow as tf

    from mach_tf import rundir
    from mach_tf.config import MachConfig
    from mach_tf.inference.decoder import (DEFAULT_CANDIDATE_BUCKETS, candidate_index,
                                           candidate_topk, exact_topk)
    from mach_tf.model.network import bucket_scores
    from mach_tf.launch.local import train

    if args.queries < 1000:
        raise SystemExit("--queries must be >= 1000 (the agreement needs that many)")
    m = args.candidate_buckets or DEFAULT_CANDIDATE_BUCKETS
    t_start = time.time()
    result = {"classes": args.classes, "repetitions": args.repetitions,
              "buckets": args.buckets, "hidden": args.hidden, "features": args.features,
              "train_points": args.train_points, "epochs": args.epochs,
              "candidate_buckets": m, "top_k": args.top_k, "queries": args.queries,
              "latency_queries": args.latency_queries, "seed": args.seed,
              "cpu_count": os.cpu_count(), "tensorflow": tf.__version__}
    with common.workdir(args.workdir, "mach-serving-bench-") as workdir:
        t0 = time.time()
        prefix, queries = make_data(args, workdir)
        result["data_seconds"] = round(time.time() - t0, 1)
        _say(args, f"data: {args.train_points} training points, {args.classes} classes "
                   f"({result['data_seconds']} s)")

        t0 = time.time()
        config = MachConfig.from_data(
            args.classes, args.features, num_buckets=args.buckets,
            num_repetitions=args.repetitions, hidden_units=[args.hidden], epochs=args.epochs,
            batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed)
        run_dir = os.path.join(workdir, "run")
        summary = train(run_dir, prefix, config=config, workers=1, verbose=0,
                        log=lambda msg: _say(args, msg))
        if summary["complete"] != args.repetitions:
            raise RuntimeError(f"training failed: {summary}")
        result["train_seconds"] = round(time.time() - t0, 1)
        _say(args, f"trained {args.repetitions} repetitions ({result['train_seconds']} s)")

        exports = {}
        for decoder in ("exact", "candidates"):
            t0 = time.time()
            info, rss = export_in_child(run_dir, os.path.join(workdir, "serving", decoder),
                                        decoder, args)
            exports[decoder] = info["path"]
            result[f"export_peak_rss_mb_{decoder}"] = round(rss, 1)
            result[f"export_seconds_{decoder}"] = round(time.time() - t0, 1)
            _say(args, f"export {decoder}: {info['path']}, peak RSS {rss:.0f} MB")
        result["export_peak_rss_mb"] = max(result["export_peak_rss_mb_exact"],
                                           result["export_peak_rss_mb_candidates"])

        fns = {d: tf.saved_model.load(p).signatures["serving_default"]
               for d, p in exports.items()}

        def ask(decoder, feeds):
            out = fns[decoder](feature_ids=tf.constant(feeds["feature_ids"]),
                               feature_values=tf.constant(feeds["feature_values"]))
            return out["label_ids"].numpy(), out["scores"].numpy()

        # batch 1, alternating decoders query by query
        singles = [_pad([q]) for q in queries[:args.latency_queries]]
        for feeds in singles[:10]:
            ask("exact", feeds), ask("candidates", feeds)
        times = {"exact": [], "candidates": []}
        for i, feeds in enumerate(singles):
            order = ("exact", "candidates") if i % 2 == 0 else ("candidates", "exact")
            for d in order:
                t = time.perf_counter()
                ask(d, feeds)
                times[d].append(time.perf_counter() - t)
        for d in times:
            result[f"{d}_p50_ms"], result[f"{d}_p99_ms"] = (round(x, 3)
                                                            for x in _ms(times[d]))
        result["speedup"] = round(result["exact_p50_ms"] / result["candidates_p50_ms"], 2)
        _say(args, f"batch 1: exact p50 {result['exact_p50_ms']} ms, candidates p50 "
                   f"{result['candidates_p50_ms']} ms, speedup {result['speedup']}")

        # batch 64 over all held-out queries: throughput and agreement
        batches = [queries[i:i + BATCH] for i in range(0, len(queries), BATCH)]
        ask("exact", _pad(batches[0])), ask("candidates", _pad(batches[0]))
        answers = {"exact": [], "candidates": []}
        spent = {"exact": 0.0, "candidates": 0.0}
        for i, rows in enumerate(batches):
            feeds = _pad(rows)
            for d in (("exact", "candidates") if i % 2 == 0 else ("candidates", "exact")):
                t = time.perf_counter()
                answers[d].append(ask(d, feeds))
                spent[d] += time.perf_counter() - t
        n = len(queries)
        for d in spent:
            result[f"{d}_batch64_qps"] = round(n / spent[d], 1)
        result["batch64_speedup"] = round(spent["exact"] / spent["candidates"], 2)
        ids = {d: np.concatenate([a[0] for a in answers[d]]) for d in answers}
        k = min(5, args.top_k)
        overlap = [len(set(e[:k].tolist()) & set(c[:k].tolist())) / k
                   for e, c in zip(ids["exact"], ids["candidates"])]
        result["top5_agreement"] = round(float(np.mean(overlap)), 4)
        result["top5_identical"] = round(float(np.mean(np.equal(overlap, 1.0))), 4)
        result["top1_agreement"] = round(float(np.mean(
            ids["exact"][:, 0] == ids["candidates"][:, 0])), 4)
        labels = [lab for lab, _, _ in queries]
        for d in ids:
            result[f"{d}_p@1"] = round(_precision(ids[d], labels, 1), 4)
            result[f"{d}_p@5"] = round(_precision(ids[d], labels, k), 4)
        _say(args, f"batch 64: exact {result['exact_batch64_qps']} q/s, candidates "
                   f"{result['candidates_batch64_qps']} q/s; top-5 agreement "
                   f"{result['top5_agreement']}")
        fns.clear()  # free the loaded SavedModels
        del answers

        # context: where the time goes, and what other m would give. All parts are timed in
        # one interleaved loop (in-Python tf.functions, batch 1), so they share the noise.
        config, model = rundir.load_all(run_dir)
        net = tf.function(lambda x: bucket_scores(model(x, training=False), config.loss,
                                                  config.merge), reduce_retracing=True)
        family = config.hash_family
        table = tf.constant(family.table(config.num_classes))
        index = {key: tf.constant(v) for key, v in
                 candidate_index(family, config.num_classes).items()}
        scores = np.concatenate([net({key: tf.constant(v) for key, v in _pad(rows).items()})
                                 .numpy() for rows in batches])
        result["bucket_top1_probability"] = round(float(scores.max(-1).mean()), 4) \
            if config.merge == "prob" else None
        ms = sorted({1, 2, 3, 5, 10, 20, m})
        parts = {"network": lambda i: net({key: tf.constant(v)
                                           for key, v in singles[i].items()}),
                 "exact_decoder": tf.function(lambda s: exact_topk(s, table, args.top_k))}
        for mm in ms:
            parts[f"candidates_decoder_m{mm}"] = tf.function(
                lambda s, mm=mm: candidate_topk(s, index["offsets"], index["classes"],
                                                index["class_slots"], mm, args.top_k))
        spent_parts = {name: [] for name in parts}
        count = min(100, len(singles))
        for i in range(-1, count):  # i = -1 traces every function once
            s = tf.constant(scores[max(i, 0):max(i, 0) + 1])
            for name, fn in parts.items():
                t = time.perf_counter()
                out = fn(max(i, 0)) if name == "network" else fn(s)
                tf.nest.map_structure(lambda x: x.numpy(), out)
                if i >= 0:
                    spent_parts[name].append(time.perf_counter() - t)
        result["network_p50_ms"] = round(_ms(spent_parts["network"])[0], 3)
        result["exact_decoder_p50_ms"] = round(_ms(spent_parts["exact_decoder"])[0], 3)
        result["candidates_decoder_p50_ms"] = round(
            _ms(spent_parts[f"candidates_decoder_m{m}"])[0], 3)
        result["candidates_decoder_p50_ms_by_m"] = {
            str(mm): round(_ms(spent_parts[f"candidates_decoder_m{mm}"])[0], 3) for mm in ms}
        by_m = {}
        exact_ids = ids["exact"][:, :k]
        for mm in ms:
            fn = parts[f"candidates_decoder_m{mm}"]
            got = np.concatenate([fn(tf.constant(scores[i:i + BATCH]))[1].numpy()[:, :k]
                                  for i in range(0, n, BATCH)])
            by_m[str(mm)] = round(float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k
                                                 for a, b in zip(exact_ids, got)])), 4)
        result["top5_agreement_by_m"] = by_m
    result["bench_peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    result["total_seconds"] = round(time.time() - t_start, 1)
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
