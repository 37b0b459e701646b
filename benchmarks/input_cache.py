"""The training input kept in memory against read from its files every epoch.

``python -m benchmarks.input_cache --json --dataset bibtex --dataset delicious`` trains the
default run on each dataset's development split (as :mod:`benchmarks.levers` carves it)
twice, side by side in one run, each in its own child process: once as ``mach-tf train``
does (training data up to ``mach_tf.training.pipeline.CACHE_MAX_BYTES`` read and split
once per group, then shuffled in full from memory every epoch) and once streamed from the
files every epoch (``CACHE_MAX_BYTES = 0``), in alternating order over ``--repeats``
rounds. Reports each one's training seconds (best of the rounds), dev P@k and the ratio.
On single-shard data both see the same batches, so their P@k agree.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import time

from benchmarks.accuracy import resolve_dataset
from benchmarks.common import emit, say
from benchmarks.levers import dev_split, variant_config


def run_once(prefixes: dict, run: str, in_memory: bool) -> dict:
    """Trains and scores the default config (run in a child process)."""
    from mach_tf.inference.evaluation import evaluate
    from mach_tf.launch.local import train
    from mach_tf.training import pipeline

    if not in_memory:
        pipeline.CACHE_MAX_BYTES = 0
    shutil.rmtree(run, ignore_errors=True)
    config = variant_config({}, prefixes["train"])
    t0 = time.time()
    train(run, prefixes["train"], None, config, verbose=0, log=lambda msg: None)
    train_s = time.time() - t0
    res = evaluate(run, prefixes["dev"], ks=(1, 3, 5))
    return {"train_s": round(train_s, 1),
            **{k: round(res[k], 4) for k in ("p@1", "p@3", "p@5")}}


def in_child(*args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_once, args)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--dataset", action="append", help="NAME or PATH (repeatable)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--workdir", default=os.path.join("work", "levers"))
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.time()
    rows = []
    for spec in args.dataset or ["bibtex", "delicious"]:
        dataset, folder = resolve_dataset(spec)
        base = os.path.join(args.workdir, dataset)
        prefixes = dev_split(folder, base)
        runs = {"in_memory": [], "streamed": []}
        for i in range(args.repeats):
            order = ["in_memory", "streamed"] if i % 2 == 0 else ["streamed", "in_memory"]
            for kind in order:
                res = in_child(prefixes, os.path.join(base, "runs", f"cache_{kind}"),
                               kind == "in_memory")
                say("input_cache", args, f"{dataset} {kind}: {res}")
                runs[kind].append(res)
        best = {kind: min(rs, key=lambda r: r["train_s"]) for kind, rs in runs.items()}
        rows.append({"dataset": dataset, **best,
                     "speedup": round(best["streamed"]["train_s"]
                                      / best["in_memory"]["train_s"], 3)})
    return emit({"benchmark": "input_cache", "results": rows,
                 "settings": {"repeats": args.repeats, "split": "levers dev split",
                              "config": "mach-tf train defaults"}}, t0)


if __name__ == "__main__":
    main()
