"""The gathered input kernels' optimizer update: lazy Adam against a fused sparse kernel.

    python -m benchmarks.sparse_update --json [--features 20000 --hidden 512 --kernels 4]

One step's update of a group's input kernels (``--kernels`` variables of ``[D, H]``) from
``tf.IndexedSlices`` gradients of ``--ids`` row ids, ``--distinct`` of them distinct (the
tagging shape by default: 5,120 non-zeros in a batch of 256, 3,094 distinct), timed three
ways in one process, alternating rounds:

* ``lazy_adam_ms``: :class:`mach_tf.model.optimizers.SparseAdam`'s update as training runs
  it (duplicate rows summed, rows gathered, the fused Adam kernel, rows scattered back);
* ``sparse_rmsprop_ms``: the same row sum, then TensorFlow's fused
  ``ResourceSparseApplyRMSProp`` with momentum, which updates each row's weights and both
  slots in place in one op (the nearest fused sparse kernel to Adam TensorFlow has);
* ``row_sum_ms``: the row sum alone, which both include.

The last stdout line is one JSON object with each way's median per round.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorflow as tf

from benchmarks import common
from mach_tf.model.optimizers import SparseAdam, _sum_rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.sparse_update", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=int, default=20_000, help="D")
    p.add_argument("--hidden", type=int, default=512, help="H")
    p.add_argument("--kernels", type=int, default=4, help="kernels updated per step (G)")
    p.add_argument("--ids", type=int, default=5120, help="row ids per gradient")
    p.add_argument("--distinct", type=int, default=3094, help="distinct rows among them")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    rows = rng.choice(args.features, args.distinct, replace=False)
    ids = tf.constant(np.concatenate([rows, rng.choice(rows, args.ids - args.distinct)]),
                      tf.int64)
    grads = [tf.IndexedSlices(tf.constant(rng.normal(0, 1e-3, (args.ids, args.hidden)),
                                          tf.float32), ids)
             for _ in range(args.kernels)]

    def kernels(name):
        return [tf.Variable(tf.random.normal([args.features, args.hidden], 0, 0.01,
                                             seed=args.seed), name=f"{name}_{i}")
                for i in range(args.kernels)]

    adam_vars, rms_vars = kernels("adam"), kernels("rmsprop")
    slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in rms_vars]
    adam = SparseAdam(learning_rate=1e-3)
    adam.build(adam_vars)

    @tf.function
    def lazy_adam():
        adam.apply(grads, adam_vars)

    @tf.function
    def sparse_rmsprop():
        for g, v, (ms, mom) in zip(grads, rms_vars, slots):
            rows, summed = _sum_rows(g, tf.float32)
            tf.raw_ops.ResourceSparseApplyRMSProp(
                var=v.handle, ms=ms.handle, mom=mom.handle, lr=1e-4, rho=0.999,
                momentum=0.9, epsilon=1e-14, grad=summed, indices=rows)

    @tf.function
    def row_sum():
        return [tf.reduce_sum(_sum_rows(g, tf.float32)[1][:1]) for g in grads]

    ways = {"lazy_adam_ms": lazy_adam, "sparse_rmsprop_ms": sparse_rmsprop,
            "row_sum_ms": row_sum}
    for fn in ways.values():
        fn()
    out = {"benchmark": "sparse_update", "features": args.features, "hidden": args.hidden,
           "kernels": args.kernels, "ids": args.ids, "distinct": args.distinct,
           "steps": args.steps, **{name: [] for name in ways}}
    for r in range(args.rounds):
        for name, fn in ways.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            # every update has run once a variable it wrote is read back
            (adam_vars[0][0, 0] + rms_vars[0][0, 0]).numpy()
            out[name].append(round(1e3 * (time.perf_counter() - start) / args.steps, 2))
        common.say("sparse_update", args, f"round {r + 1}: " + ", ".join(
            f"{name} {out[name][-1]}" for name in ways))
    return common.emit(out, t0)


if __name__ == "__main__":
    main()
