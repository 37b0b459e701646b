"""Several repetitions in one Keras model against one model per repetition.

    python -m benchmarks.grouping --json [--classes 100000 --features 20000]

A worker trains its repetitions in groups of G (``MachConfig.group_size``): one model whose
layers hold G separate weight blocks, one input pipeline, one batched matmul per layer. In
one run, on the same synthetic TFRecords read by the same ``mach_tf.data.training_dataset``
a worker feeds to ``model.fit`` (reading included: a model per repetition reads the data
once per repetition), this measures ``model.fit``'s median step for G = 1, 2, 4, 8 (G = 1 is one
model per repetition, the paper's layout), in ``--rounds`` rounds with the order of G
reversed every other round (the machine is shared: noise falls on every G alike), and
reports per G:

* ``step_ms``: the median over rounds of each round's median step (one batch through the
  G repetitions; ``rounds_ms`` lists the rounds);
* ``rep_eps``: examples per second per repetition, ``batch * G / step``;
* ``speedup``: ``rep_eps`` over G = 1's, i.e. how much faster R repetitions train grouped
  by G than one model at a time.

Equivalence (a grouped repetition gets exactly the updates it would get alone) is a test:
``tests/test_model.py::test_grouped_training_equals_separate_training``.
The last stdout line is one JSON object with the figures and every setting used.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import numpy as np

from benchmarks.step_timing import StepTimer, steady_seconds
from benchmarks import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.grouping", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=100_000, help="K")
    p.add_argument("--features", type=int, default=20_000, help="D")
    p.add_argument("--hidden", type=int, default=128, help="H")
    p.add_argument("--groups", default="1,2,4,8", help="the G to compare")
    p.add_argument("--points", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30, help="fit steps per round and G")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir")
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    return p.parse_args(argv)


_say = functools.partial(common.say, "grouping")


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from mach_tf.config import MachConfig
    from mach_tf.data import training_dataset
    from mach_tf.model.network import build_model, compile_model
    from mach_tf.datasets.synthetic import SyntheticSpec, generate
    from tfrecords_tools.convert import write_examples

    groups = [int(g) for g in args.groups.split(",")]
    with common.workdir(args.workdir, "mach-grouping-") as workdir:
        t0 = time.time()
        spec = SyntheticSpec(num_labels=args.classes, num_features=args.features,
                             seed=args.seed)
        prefix = os.path.join(workdir, "train")
        write_examples(prefix, generate(spec, args.points, seed=1), args.features,
                       args.classes, num_shards=2)
        config = MachConfig.from_data(args.classes, args.features, args.points,
                                      hidden_units=[args.hidden], batch_size=args.batch_size,
                                      num_repetitions=max(groups), seed=args.seed)
        models, data = {}, {}
        for g in groups:
            keras.utils.set_random_seed(args.seed)
            models[g] = compile_model(build_model(config, list(range(g))), config)
            data[g] = training_dataset(prefix, config, list(range(g)), shuffle=True,
                                       repeat=True)
        times = {g: [] for g in groups}
        for r in range(args.rounds):
            for g in groups if r % 2 == 0 else groups[::-1]:
                timer = StepTimer()
                models[g].fit(data[g], steps_per_epoch=args.steps, epochs=1, verbose=0,
                              callbacks=[timer])
                times[g].append(steady_seconds(timer.segments[-1]))
                _say(args, f"round {r + 1}, G={g}: {1000 * times[g][-1]:.1f} ms/step")
        # median of rounds: a lucky (or unlucky) round on the shared cores moves it least
        best = {g: float(np.median(v)) for g, v in times.items()}
        per = {}
        base = args.batch_size / best[groups[0]] if groups[0] == 1 else None
        for g in groups:
            eps = args.batch_size * g / best[g]
            per[str(g)] = {"step_ms": round(1000 * best[g], 2), "rep_eps": round(eps),
                           "rounds_ms": [round(1000 * t, 2) for t in times[g]]}
            if base:
                per[str(g)]["speedup"] = round(eps / base, 2)
        fastest = max(groups, key=lambda g: args.batch_size * g / best[g])
        out = {"benchmark": "grouping", "classes": args.classes, "features": args.features,
               "hidden_units": config.hidden_units, "buckets": config.num_buckets,
               "batch_size": args.batch_size, "dropout": config.dropout,
               "optimizer": config.optimizer, "points": args.points, "steps": args.steps,
               "rounds": args.rounds, "groups": per, "best_group_size": fastest}
        return common.emit(out, t0)


if __name__ == "__main__":
    main()
