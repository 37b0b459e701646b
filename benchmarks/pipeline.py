"""Input pipeline against training: is the TFRecord reader ever the bottleneck?

    python -m benchmarks.pipeline --json

In one run, on the same synthetic data written twice (plain and GZIP shards), measures
examples per second of:

* the reader alone (``tfrecords_tools.make_dataset``: list shards, interleave, shuffle,
  batch, parse after batching, prefetch), consumed as fast as possible;
* the reader plus mach-tf's training transform (padding, bucket targets of a group), i.e.
  the full ``mach_tf.data.training_dataset`` a worker feeds to ``model.fit``;
* a training step of one default group (``MachConfig.from_data`` for the data's K and D),
  fed from memory (a cached batch repeated), which is what the reader must outpace.

Reports ``reader_eps`` / ``reader_gzip_eps`` / ``pipeline_eps`` / ``pipeline_gzip_eps``,
``train_eps`` and the ratios ``reader_over_train`` etc. Goal: the pipeline is at least 3x
faster than training, so training never waits for data. The last stdout line is one JSON
object with the figures and every setting used.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

from benchmarks import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=100_000)
    p.add_argument("--features", type=int, default=20_000)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--points", type=int, default=60_000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--train-steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


_say = functools.partial(common.say, "pipeline")


def examples_per_second(ds, batch_size: int, max_batches: int | None = None) -> float:
    """Drains ``ds`` (batches) once after a short warm-up; examples per second."""
    it = iter(ds)
    for _ in range(3):
        next(it)
    n = 0
    t = time.perf_counter()
    for i, batch in enumerate(it):
        first = batch[0] if isinstance(batch, tuple) else batch
        n += int(next(iter(first.values())).shape[0])
        if max_batches and i + 1 >= max_batches:
            break
    return n / (time.perf_counter() - t)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import tensorflow as tf

    from mach_tf.config import MachConfig
    from mach_tf.data import training_dataset
    from mach_tf.model.network import build_model, compile_model
    from mach_tf.datasets.synthetic import SyntheticSpec, generate
    from tfrecords_tools.convert import write_examples
    from tfrecords_tools.dataset import make_dataset

    with common.workdir(args.workdir, "mach-pipeline-") as workdir:
        t0 = time.time()
        spec = SyntheticSpec(num_labels=args.classes, num_features=args.features,
                             seed=args.seed)
        _say(args, f"writing {args.points} points twice (plain, GZIP)")
        points = list(generate(spec, args.points, seed=1))
        prefixes = {}
        for comp in ("NONE", "GZIP"):
            prefixes[comp] = os.path.join(workdir, f"data-{comp.lower()}")
            write_examples(prefixes[comp], points, args.features, args.classes,
                           num_shards=args.shards, compression=comp)
        config = MachConfig.from_data(args.classes, args.features,
                                      hidden_units=[args.hidden], batch_size=args.batch_size,
                                      seed=args.seed)
        group = list(range(min(config.group_size, config.num_repetitions)))
        out = {"benchmark": "pipeline", "points": args.points, "shards": args.shards,
               "classes": args.classes, "features": args.features,
               "batch_size": args.batch_size, "group": group,
               "buckets": config.num_buckets, "hidden": args.hidden}
        for comp, key in (("NONE", ""), ("GZIP", "_gzip")):
            reader = make_dataset(prefixes[comp], args.batch_size, shuffle=True,
                                  seed=args.seed)
            out[f"reader{key}_eps"] = round(examples_per_second(reader, args.batch_size))
            pipe = training_dataset(prefixes[comp], config, group, shuffle=True)
            out[f"pipeline{key}_eps"] = round(examples_per_second(pipe, args.batch_size))
            _say(args, f"{comp}: reader {out[f'reader{key}_eps']:,} ex/s, pipeline "
                       f"{out[f'pipeline{key}_eps']:,} ex/s")
        # Training consumption: one default group fed from memory.
        model = compile_model(build_model(config, group), config)
        batch = next(iter(training_dataset(prefixes["NONE"], config, group, shuffle=True)))
        mem = tf.data.Dataset.from_tensors(batch).repeat()
        model.fit(mem, steps_per_epoch=5, epochs=1, verbose=0)  # trace
        t = time.perf_counter()
        model.fit(mem, steps_per_epoch=args.train_steps, epochs=1, verbose=0)
        train_eps = args.train_steps * args.batch_size / (time.perf_counter() - t)
        out["train_eps"] = round(train_eps)
        out["train_eps_all_repetitions"] = round(train_eps * len(group)
                                                 / config.num_repetitions)
        for key in ("reader", "reader_gzip", "pipeline", "pipeline_gzip"):
            out[f"{key}_over_train"] = round(out[f"{key}_eps"] / train_eps, 2)
        return common.emit(out, t0)


if __name__ == "__main__":
    main()
