"""Forward latency of a trained run's served network: every repetition stacked into one
model (as evaluation and export stack them), called on random sparse queries shaped like
the run's data, before any decoding.

    python -m benchmarks.forward_latency --json RUN [--nonzeros 19] [--batch 1 64]

It isolates the network's part of serving latency (the input layer, the dense layers and
the bucket logits), so two versions of the layers can be compared on the same trained
weights without exporting: run it from each version's tree, alternating. For each batch
size: the median and 99th percentile of the seconds of a call, over ``--calls`` calls
after five warm-up calls. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorflow as tf

from benchmarks import common
from mach_tf import rundir


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.forward_latency",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory with complete repetitions")
    p.add_argument("--nonzeros", type=int, default=19, help="distinct features per query")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    p.add_argument("--calls", type=int, default=300, help="timed calls per batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    return p.parse_args(argv)


def queries(rng, num_features: int, nonzeros: int, batch: int) -> dict:
    """One batch of ``nonzeros`` distinct random features per query, values in [0.5, 2)."""
    ids = np.stack([rng.choice(num_features, nonzeros, replace=False) for _ in range(batch)])
    return {"feature_ids": tf.constant(ids, tf.int64),
            "feature_values": tf.constant(rng.uniform(0.5, 2.0, (batch, nonzeros)),
                                          tf.float32)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    config, model = rundir.load_all(args.run)
    rng = np.random.default_rng(args.seed)
    forward = tf.function(lambda x: model(x), reduce_retracing=True)
    out = {"benchmark": "forward_latency", "run": args.run,
           "repetitions": config.num_repetitions, "num_features": config.num_features,
           "hidden_units": config.hidden_units, "buckets": config.num_buckets,
           "nonzeros": args.nonzeros}
    for batch in args.batch:
        calls = [queries(rng, config.num_features, args.nonzeros, batch)
                 for _ in range(args.calls)]
        for x in calls[:5]:
            forward(x)
        seconds = []
        for x in calls:
            start = time.perf_counter()
            forward(x).numpy()
            seconds.append(time.perf_counter() - start)
        out[f"batch{batch}_p50_ms"] = round(1e3 * float(np.median(seconds)), 3)
        out[f"batch{batch}_p99_ms"] = round(1e3 * float(np.percentile(seconds, 99)), 3)
        common.say("forward_latency", args, f"batch {batch}: p50 {out[f'batch{batch}_p50_ms']} "
                                            f"ms, p99 {out[f'batch{batch}_p99_ms']} ms")
    return common.emit(out, t0)


if __name__ == "__main__":
    main()
