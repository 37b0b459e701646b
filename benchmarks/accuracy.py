"""Accuracy of ``mach-tf train``'s defaults on real XMC datasets (official splits).

For each dataset: convert ``train.txt`` and ``test.txt`` to TFRecords, train with the
defaults sized from the data (no per-dataset setting), evaluate on the test split.
Prints one line per dataset and, last, one JSON object::

    python -m benchmarks.accuracy --json                      # the four shared datasets
    python -m benchmarks.accuracy --json --dataset bibtex --dataset /data/eurlex

A dataset is a NAME under ``../shared/data`` (beside the checkout) or a PATH to a folder
holding ``train.txt`` and ``test.txt`` in the XMC repository format.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
DEFAULT_DATASETS = ("bibtex", "corel5k", "delicious", "seq_GO")

#: The best of Omikuji, napkinXC and PECOS XR-Linear with their standard defaults, measured
#: on this machine type (issue 4); None where not measured.
PEERS = {
    "bibtex": {"p@1": 0.632, "p@3": 0.389, "p@5": 0.286},
    "corel5k": {"p@1": 0.350, "p@3": 0.271, "p@5": 0.225},
    "delicious": {"p@1": 0.669, "p@3": 0.602, "p@5": 0.560},
}


def resolve_dataset(spec: str) -> tuple[str, str]:
    """``(name, folder)`` of a dataset NAME (under ../shared/data) or PATH.

    Raises:
        FileNotFoundError: naming what is missing.
    """
    folder = spec if os.path.isdir(spec) else os.path.join(SHARED_DATA, spec)
    for split in ("train.txt", "test.txt"):
        if not os.path.isfile(os.path.join(folder, split)):
            raise FileNotFoundError(f"{spec}: no {split} in {folder}")
    return os.path.basename(os.path.normpath(folder)), folder


def prepare_dataset(spec: str, workdir: str) -> tuple[str, dict, str]:
    """``(name, {"train", "test"} prefixes, run)`` of a dataset: its splits converted under
    ``workdir/NAME/tfr`` once, and an empty run directory ``workdir/NAME/run``."""
    import shutil

    from tfrecords_tools.convert import convert

    name, folder = resolve_dataset(spec)
    base = os.path.join(workdir, name)
    data = {s: os.path.join(base, "tfr", s) for s in ("train", "test")}
    for s, prefix in data.items():
        if not os.path.exists(prefix + ".manifest.json"):
            convert(os.path.join(folder, f"{s}.txt"), prefix)
    run = os.path.join(base, "run")
    shutil.rmtree(run, ignore_errors=True)
    return name, data, run


def run_dataset(spec: str, workdir: str, workers: int = 1, threads: int | None = None,
                seed: int = 0, log=lambda m: None) -> dict:
    """Converts, trains with the defaults and evaluates one dataset; returns its row."""
    from mach_tf import rundir
    from mach_tf.inference.evaluation import evaluate, inverse_propensities, popularity_baseline
    from mach_tf.data import config_for_data
    from mach_tf.launch.local import train

    name, data, run = prepare_dataset(spec, workdir)
    config = config_for_data(data["train"], seed=seed)
    log(f"{name}: K={config.num_classes} D={config.num_features} B={config.num_buckets} "
        f"R={config.num_repetitions} hidden={config.hidden_units} epochs<={config.epochs}")
    t0 = time.time()
    summary = train(run, data["train"], None, config, workers=workers, threads=threads,
                    verbose=0, log=log)
    train_s = time.time() - t0
    if summary["failed"]:
        raise RuntimeError(f"{name}: repetitions failed: {summary['failed']}")
    res = evaluate(run, data["test"], ks=(1, 3, 5))
    epochs = [rundir.completion(run, r).get("best_epoch")
              for r in range(config.num_repetitions)]
    row = {"dataset": name}
    for key in ("p@1", "p@3", "p@5", "ndcg@5", "psp@1", "psp@3", "psp@5"):
        row[key] = round(float(res[key]), 4)
    # The floor: always the most frequent training labels (seq_GO's model reaches no more).
    floor = popularity_baseline(rundir.load_label_counts(run), data["test"], (1, 3, 5),
                                inverse_propensities(run, config.num_classes))
    row.update({"floor_" + k: round(float(floor[k]), 4) for k in ("p@1", "p@5", "psp@5")})
    row.update(train_s=round(train_s, 1), model_params=config.num_params(),
               num_classes=config.num_classes, num_features=config.num_features,
               num_train=rundir.read_json(rundir.train_data_path(run))["num_examples"],
               num_test=res["num_examples"], buckets=config.num_buckets,
               repetitions=config.num_repetitions, hidden=config.hidden_units,
               best_epochs=sorted(set(e for e in epochs if e is not None)),
               peers=PEERS.get(name))
    if name in PEERS:
        row["beats_peers"] = all(row[k] >= v for k, v in PEERS[name].items())
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object last")
    p.add_argument("--dataset", action="append", help="NAME or PATH (repeatable; default: "
                                                      + ", ".join(DEFAULT_DATASETS) + ")")
    p.add_argument("--workdir", default=os.path.join("work", "accuracy"),
                   help="converted data and runs (default: work/accuracy)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes")
    p.add_argument("--threads", type=int, help="TensorFlow threads per worker")
    p.add_argument("--seed", type=int, default=0,
                   help="the config's seed (hashing, initialisation, shuffling, split)")
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    specs = a.dataset or list(DEFAULT_DATASETS)
    rows = []
    t0 = time.time()
    for spec in specs:
        row = run_dataset(spec, a.workdir, a.workers, a.threads, a.seed, log=log)
        rows.append(row)
        print("  ".join(f"{k}={row[k]}" for k in ("dataset", "p@1", "p@3", "p@5", "ndcg@5",
                                                  "psp@1", "psp@3", "psp@5", "train_s",
                                                  "model_params")), flush=True)
    import tensorflow as tf

    from mach_tf.version import __version__

    out = {"benchmark": "accuracy", "results": rows,
           "settings": {"config": "mach-tf train defaults (config_for_data)",
                        "seed": a.seed, "workers": a.workers, "threads": a.threads,
                        "cpus": os.cpu_count(),
                        "tensorflow": tf.__version__, "mach_tf": __version__},
           "total_s": round(time.time() - t0, 1)}
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
