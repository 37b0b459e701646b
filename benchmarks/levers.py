"""Lever ablations on development splits carved from the training files only.

Each variant is the defaults plus a few config overrides; it is trained on 75% of a
dataset's ``train.txt`` and scored on the other 25% (``random.Random(12345)``), so the
official test split plays no part in choosing defaults::

    python -m benchmarks.levers --json --dataset bibtex --dataset delicious \\
        --variant default={} --variant deep='{"hidden_units": [512, 256]}'

Without ``--variant`` it runs the set recorded in docs/defaults.md. Prints one line per
(variant, dataset) and one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

from benchmarks.accuracy import resolve_dataset

#: The ablations behind docs/defaults.md (overrides of the defaults).
VARIANTS = {
    "default": {},
    "hidden_256": {"hidden_units": [256]},
    "hidden_512": {"hidden_units": [512]},
    "hidden_512_256": {"hidden_units": [512, 256]},
    "dropout_0": {"dropout": 0.0},
    "idf": {"feature_weighting": "idf"},
    "sigmoid": {"loss": "sigmoid"},
    "merge_prob": {"merge": "prob"},
    "cosine": {"lr_schedule": "cosine"},
    "stop_on_p@1": {"early_stopping_metric": "p@1"},
}


def dev_split(folder: str, out: str, dev_share: float = 0.25, seed: int = 12345) -> dict:
    """Writes ``out/{train,dev}.txt`` from ``folder/train.txt`` and converts them."""
    from tfrecords_tools.convert import convert

    prefixes = {s: os.path.join(out, "tfr", s) for s in ("train", "dev")}
    if all(os.path.exists(p + ".manifest.json") for p in prefixes.values()):
        return prefixes
    with open(os.path.join(folder, "train.txt")) as f:
        header = f.readline().split()
        rows = f.read().splitlines()
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    ndev = int(len(rows) * dev_share)
    parts = {"dev": sorted(idx[:ndev]), "train": sorted(idx[ndev:])}
    os.makedirs(out, exist_ok=True)
    for name, sel in parts.items():
        path = os.path.join(out, f"{name}.txt")
        with open(path, "w") as f:
            f.write(f"{len(sel)} {header[1]} {header[2]}\n")
            f.writelines(rows[i] + "\n" for i in sel)
        convert(path, prefixes[name])
    return prefixes


def variant_config(overrides: dict, train: str):
    from mach_tf.config import default_buckets
    from mach_tf.data import config_for_data

    overrides = dict(overrides)
    factor = overrides.pop("bucket_factor", None)
    config = config_for_data(train, **overrides)
    if factor:
        config = config.replace(num_buckets=int(default_buckets(config.num_classes) * factor))
    return config


def run_variant(name: str, overrides: dict, prefixes: dict, workdir: str, log) -> dict:
    import shutil

    from mach_tf.inference.evaluation import evaluate
    from mach_tf.launch.local import train

    config = variant_config(overrides, prefixes["train"])
    overrides = dict(overrides)
    factor = overrides.pop("bucket_factor", None)
    run = os.path.join(workdir, "runs", name)
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.time()
    train(run, prefixes["train"], None, config, verbose=0, log=log)
    train_s = time.time() - t0
    res = evaluate(run, prefixes["dev"], ks=(1, 3, 5))
    return {"variant": name, "overrides": overrides if not factor else
            dict(overrides, num_buckets=config.num_buckets),
            **{k: round(res[k], 4) for k in ("p@1", "p@3", "p@5", "ndcg@5", "psp@1", "psp@5")},
            "train_s": round(train_s, 1), "num_dev": res["num_examples"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--dataset", action="append",
                   help="NAME or PATH (repeatable; default bibtex, corel5k, delicious)")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=JSON overrides, or a NAME from the built-in set")
    p.add_argument("--workdir", default=os.path.join("work", "levers"))
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    variants = {}
    for v in a.variant:
        name, _, spec = v.partition("=")
        variants[name] = json.loads(spec) if spec else VARIANTS[name]
    variants = variants or VARIANTS
    rows = []
    for spec in a.dataset or ["bibtex", "corel5k", "delicious"]:
        dataset, folder = resolve_dataset(spec)
        base = os.path.join(a.workdir, dataset)
        prefixes = dev_split(folder, base)
        default = variant_config({}, prefixes["train"])
        for name, overrides in variants.items():
            if name != "default" and variant_config(overrides, prefixes["train"]) == default:
                log(f"{dataset}: {name} is the default config here; skipped")
                continue
            row = {"dataset": dataset, **run_variant(name, overrides, prefixes, base, log)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"benchmark": "levers", "results": rows,
           "settings": {"dev_share": 0.25, "split_seed": 12345,
                        "config": "mach-tf train defaults plus each variant's overrides"}}
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
