"""Latency of one signature of two exports, side by side in one process.

    python -m benchmarks.signature_latency --json EXPORT_A EXPORT_B \\
        [--signature serving_default_filtered] [--queries 100] [--passes 2]

Both SavedModels are loaded with ``tf.saved_model.load`` and called alternately, query by
query, so machine noise hits both alike: the way to compare two versions of the serving
graph (export each from its own tree, then run this once). Queries are random sparse rows
of ``--nonzeros`` distinct features below the exports' ``num_features``; a filtered
signature gets ``--exclude`` ids in every row, no restriction and the export's own k. For
each batch size and pass: the median milliseconds of a call of each export.

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorflow as tf

from benchmarks import common
from benchmarks.forward_latency import queries
from mach_tf import rundir
from mach_tf.inference.evaluation import export_info_path, no_filters, resolve_export


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.signature_latency",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs=2,
                   help="two exports (a version folder, or BASE/NAME for its latest)")
    p.add_argument("--signature", default="serving_default_filtered")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    p.add_argument("--queries", type=int, default=100, help="timed calls per batch and pass")
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--nonzeros", type=int, default=19, help="distinct features per query")
    p.add_argument("--exclude", type=int, nargs="+", default=[7],
                   help="class ids every row of a filtered signature excludes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    exports = [resolve_export(e) for e in args.exports]
    dims = {int(rundir.read_json(export_info_path(e))["config"]["num_features"])
            for e in exports}
    if len(dims) != 1:
        raise SystemExit(f"the two exports read different inputs: num_features {sorted(dims)}")
    dim = dims.pop()
    fns = [tf.saved_model.load(e).signatures[args.signature] for e in exports]
    filtered = args.signature.endswith("_filtered")
    rng = np.random.default_rng(args.seed)
    out = {"benchmark": "signature_latency", "exports": exports,
           "signature": args.signature, "nonzeros": args.nonzeros, "queries": args.queries}
    for batch in args.batch:
        for p in range(args.passes):
            feeds = []
            for _ in range(args.queries):
                x = queries(rng, dim, args.nonzeros, batch)
                if filtered:
                    x.update(no_filters(batch, args.exclude))
                feeds.append(x)
            for fn in fns:
                for x in feeds[:5]:
                    fn(**x)
            seconds = [[], []]
            for x in feeds:
                for i, fn in enumerate(fns):
                    start = time.perf_counter()
                    fn(**x)["label_ids"].numpy()
                    seconds[i].append(time.perf_counter() - start)
            medians = [round(1e3 * float(np.median(s)), 3) for s in seconds]
            out.setdefault(f"batch{batch}_p50_ms", []).append(medians)
            common.say("signature_latency", args, f"batch {batch}, pass {p + 1}: "
                                                  f"{medians[0]} ms against {medians[1]} ms")
    return common.emit(out, t0)


if __name__ == "__main__":
    main()
