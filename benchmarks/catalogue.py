"""What adding classes to a trained run costs and buys, against training from scratch.

``python -m benchmarks.catalogue --json`` on synthetic data: classes ``0..K1-1`` exist
first (a run is trained on the points that have only those), then classes ``K1..K2-1``
arrive with their points. Three models, each with mach-tf's defaults for its K:

* **before**: trained on the old points only (K1 classes), with ``mach-tf train``'s
  defaults for that data;
* **extended**: ``mach-tf extend`` of *before* to K2 classes with its defaults: the new
  points mixed with as many replayed old ones, at 4 times *before*'s learning rate;
* **scratch**: trained on all the training points (K2 classes).

The three use the same number of repetitions (``repetitions`` in :data:`SETTINGS`), the
rest is the defaults. Each is scored on the test points with only old classes (old-class
P@1/P@5) and on those with a new class (new-class P@1/P@5, where only their new classes
count as right). Reported
with the training seconds of each (measured one after the other in this process, on the
same cores) and the goals: new-class P@1 at least 0.9 of scratch's, old-class P@1 within
0.02 of before's, extension time at most 0.3 of scratch's.
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import emit, say, workdir
from mach_tf import rundir
from mach_tf.data import config_for_data
from mach_tf.datasets.synthetic import SyntheticSpec, generate
from mach_tf.inference.evaluation import evaluate
from mach_tf.launch.extension import DEFAULT_REPLAY_RATIO, extend
from mach_tf.launch.local import train
from tfrecords_tools.convert import write_examples

#: ``repetitions`` is the same for the three models (the defaults' R for the sizes here is
#: 16, which makes the three trainings take most of an hour on 2 cores; the comparison is
#: side by side, so it holds for any R).
SETTINGS = {
    "default": {"num_labels": 1000, "new_fraction": 0.1, "num_features": 3000, "train": 12000,
                "test": 3000, "avg_labels": 2.0, "repetitions": 4},
    "small": {"num_labels": 200, "new_fraction": 0.1, "num_features": 1000, "train": 3000,
              "test": 600, "avg_labels": 2.0, "repetitions": 4},
}


def split_points(spec: SyntheticSpec, n: int, seed: int, first_new: int):
    """``(old, new)`` points: those with only classes below ``first_new``, the others."""
    old, new = [], []
    for p in generate(spec, n, seed=seed):
        (new if max(p[0], default=-1) >= first_new else old).append(p)
    return old, new


def only_new(points, first_new: int):
    """The points with their labels cut to the new classes (what new-class P@k counts)."""
    return [([c for c in p[0] if c >= first_new], *p[1:]) for p in points]


def scores(run: str, test_old: str, test_new: str | None) -> dict:
    out = {}
    for name, prefix in (("old", test_old), ("new", test_new)):
        if prefix is None:
            continue
        m = evaluate(run, prefix, ks=(1, 5))
        out[f"{name}_p@1"], out[f"{name}_p@5"] = round(m["p@1"], 4), round(m["p@5"], 4)
    return out


def run_benchmark(settings: dict, folder: str, log, seed: int = 0) -> dict:
    k2, d = settings["num_labels"], settings["num_features"]
    k1 = int(round(k2 * (1 - settings["new_fraction"])))
    spec = SyntheticSpec(num_labels=k2, num_features=d, avg_labels=settings["avg_labels"],
                         seed=seed)
    old, new = split_points(spec, settings["train"], 1, k1)
    test_old, test_new = split_points(spec, settings["test"], 2, k1)
    paths = {name: os.path.join(folder, name) for name in
             ("old", "new", "all", "test_old", "test_new", "before", "extended", "scratch")}
    write_examples(paths["old"], old, d, k1)
    write_examples(paths["new"], new, d, k2)
    write_examples(paths["all"], old + new, d, k2)
    write_examples(paths["test_old"], test_old, d, k1)
    write_examples(paths["test_new"], only_new(test_new, k1), d, k2)
    log(f"K1={k1} old classes, K2={k2}: {len(old)} old and {len(new)} new training points")

    def timed(fn, *args, **kwargs):
        t0 = time.time()
        fn(*args, **kwargs)
        return round(time.time() - t0, 2)

    quiet = {"verbose": 0, "log": lambda m: None}
    r = settings["repetitions"]
    t_before = timed(train, paths["before"], paths["old"], None,
                     config_for_data(paths["old"], seed=seed, num_repetitions=r), **quiet)
    log(f"before: trained in {t_before} s")
    t_ext = timed(extend, paths["before"], paths["extended"], k2, paths["new"],
                  paths["old"], **quiet)
    log(f"extended: in {t_ext} s")
    t_scratch = timed(train, paths["scratch"], paths["all"], None,
                      config_for_data(paths["all"], seed=seed, num_repetitions=r), **quiet)
    log(f"scratch: trained in {t_scratch} s")
    before = scores(paths["before"], paths["test_old"], None)
    extended = scores(paths["extended"], paths["test_old"], paths["test_new"])
    scratch = scores(paths["scratch"], paths["test_old"], paths["test_new"])
    new_ratio = extended["new_p@1"] / scratch["new_p@1"] if scratch["new_p@1"] else None
    return {
        "settings": settings, "old_classes": k1, "classes": k2,
        "train_points": {"old": len(old), "new": len(new)},
        "test_points": {"old": len(test_old), "new": len(test_new)},
        "replay_ratio": DEFAULT_REPLAY_RATIO,
        "before": {**before, "train_seconds": t_before},
        "extended": {**extended, "train_seconds": t_ext},
        "scratch": {**scratch, "train_seconds": t_scratch},
        "new_p@1_vs_scratch": round(new_ratio, 3) if new_ratio is not None else None,
        "old_p@1_change": round(extended["old_p@1"] - before["old_p@1"], 4),
        "time_vs_scratch": round(t_ext / t_scratch, 3),
        "goals": {"new_p@1_vs_scratch>=0.9": bool(new_ratio and new_ratio >= 0.9),
                  "old_p@1_within_0.02": extended["old_p@1"] >= before["old_p@1"] - 0.02,
                  "time_vs_scratch<=0.3": t_ext <= 0.3 * t_scratch},
    }


#: The extension's levers tried on the development points (``--dev``): the replay ratio and
#: the learning rate as a multiple of the source's (docs/defaults.md).
DEV_VARIANTS = {"replay 1, x1": (1.0, 1.0), "replay 0.25, x1": (0.25, 1.0),
                "replay 0.5, x1": (0.5, 1.0), "replay 2, x1": (2.0, 1.0),
                "replay 1, x1/3": (1.0, 1 / 3), "replay 1, x2": (1.0, 2.0),
                "replay 2, x2": (2.0, 2.0), "replay 0.5, x2": (0.5, 2.0),
                "replay 1, x3": (1.0, 3.0), "replay 1, x4": (1.0, 4.0)}


def run_dev(settings: dict, folder: str, log, seed: int = 0) -> dict:
    """The extension's levers on a development sample (seed 3; the test sample is never
    used), from the source and scratch runs :func:`run_benchmark` left in ``folder``."""
    k2, d = settings["num_labels"], settings["num_features"]
    k1 = int(round(k2 * (1 - settings["new_fraction"])))
    spec = SyntheticSpec(num_labels=k2, num_features=d, avg_labels=settings["avg_labels"],
                         seed=seed)
    dev_old, dev_new = split_points(spec, settings["test"], 3, k1)
    paths = {name: os.path.join(folder, name) for name in ("dev_old", "dev_new")}
    write_examples(paths["dev_old"], dev_old, d, k1)
    write_examples(paths["dev_new"], only_new(dev_new, k1), d, k2)
    before, scratch = os.path.join(folder, "before"), os.path.join(folder, "scratch")
    rows = {"before": scores(before, paths["dev_old"], None),
            "scratch": scores(scratch, paths["dev_old"], paths["dev_new"])}
    rate = rundir.load_config(before).learning_rate
    for name, (replay_ratio, factor) in DEV_VARIANTS.items():
        out = os.path.join(folder, "dev_" + name.replace(" ", "").replace(",", "_")
                           .replace("/", "-"))
        t0 = time.time()
        extend(before, out, k2, os.path.join(folder, "new"), os.path.join(folder, "old"),
               replay_ratio=replay_ratio, learning_rate=rate * factor, verbose=0,
               log=lambda m: None)
        row = {**scores(out, paths["dev_old"], paths["dev_new"]),
               "seconds": round(time.time() - t0, 1),
               "epochs": rundir.completion(out, 0)["epochs"]}
        row["new_p@1_vs_scratch"] = round(row["new_p@1"] / rows["scratch"]["new_p@1"], 3)
        rows[name] = row
        log(f"{name}: {row}")
    return {"settings": settings, "dev": rows}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--small", action="store_true", help="a few-second version (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep the data and runs here (default: a temporary one)")
    p.add_argument("--dev", action="store_true",
                   help="also try the extension's levers on a development sample")
    args = p.parse_args(argv)
    t0 = time.time()
    settings = SETTINGS["small" if args.small else "default"]
    with workdir(args.workdir, "mach-catalogue-") as folder:
        out = run_benchmark(settings, folder, lambda m: say("catalogue", args, m), args.seed)
        if args.dev:
            out["dev"] = run_dev(settings, folder, lambda m: say("catalogue", args, m),
                                 args.seed)["dev"]
    return emit(out, t0)


if __name__ == "__main__":
    main()
