"""What a shorter early-stopping patience would have cost, read from runs already trained.

    python -m benchmarks.patience --json RUN [RUN ...] [--patience 1 2 3 4 5]

Every group of a run logs its own merged validation after each epoch (TensorBoard,
``RUN/logs/group-*/train``: ``epoch_group_merged_*``, the metric early stopping watches).
Training is a fixed function of the seed up to the epoch it stops at, so the epochs a
group would have run with a patience ``p`` no larger than the run's own, and the epoch
whose weights it would have kept, follow from that curve alone: the first epoch that is
``p`` epochs past the best so far ends it, and the best epoch's development-split metrics
are what it keeps. For each run and each ``p``: the epochs of every group, their total
against the run's own, and the mean over groups of the kept epoch's dev P@1, P@5 and
nDCG@5 (the group's own merge, as early stopping sees it). A ``p`` above the run's own
patience is refused: its curves stop too early to say.

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks import common
from mach_tf import rundir

_TAG = "epoch_group_merged_"


def group_curves(run: str, metric: str) -> dict[str, dict[str, list[float]]]:
    """``{group: {"watched", "p@1", "p@5", "ndcg@5": [value per epoch]}}`` of a run."""
    out = {}
    for logdir in sorted(glob.glob(os.path.join(run, "logs", "group-*", "train"))):
        acc = EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        tags = set(acc.Tags().get("tensors", []))

        def curve(name):
            if _TAG + name not in tags:
                raise ValueError(f"{logdir}: no {_TAG + name} scalars (a run trained "
                                 f"without validation?)")
            events = sorted(acc.Tensors(_TAG + name), key=lambda e: e.step)
            return [float(np.asarray(e.tensor_proto.float_val or
                                     np.frombuffer(e.tensor_proto.tensor_content,
                                                   np.float32))[0]) for e in events]

        out[os.path.basename(os.path.dirname(logdir))] = {
            "watched": curve(metric), **{m: curve(m) for m in ("p@1", "p@5", "ndcg@5")}}
    if not out:
        raise ValueError(f"{run}: no group logs under {os.path.join(run, 'logs')}")
    return out


def stop(watched: list[float], patience: int) -> tuple[int, int]:
    """(epochs run, 0-based best epoch kept) under early stopping with ``patience``,
    as Keras' ``EarlyStopping`` does it (the first maximum is kept)."""
    best, best_epoch = -np.inf, 0
    for epoch, value in enumerate(watched):
        if value > best:
            best, best_epoch = value, epoch
        elif epoch - best_epoch >= patience:
            return epoch + 1, best_epoch
    return len(watched), best_epoch


def simulate(run: str, patiences: list[int]) -> dict:
    config = rundir.load_config(run)
    own = config.early_stopping_patience
    too_long = [p for p in patiences if p > own or p < 1]
    if too_long:
        raise ValueError(f"{run}: trained with patience {own}; its curves cannot say what "
                         f"patience {too_long} would do (give 1..{own})")
    curves = group_curves(run, config.early_stopping_metric)
    base = sum(len(c["watched"]) for c in curves.values())
    out = {"run": run, "patience": own, "groups": len(curves), "epochs": base, "by": {}}
    for p in patiences:
        runs = [stop(c["watched"], p) for c in curves.values()]
        kept = {m: float(np.mean([c[m][b] for c, (_, b) in zip(curves.values(), runs)]))
                for m in ("p@1", "p@5", "ndcg@5")}
        total = sum(n for n, _ in runs)
        out["by"][str(p)] = {"epochs": [n for n, _ in runs], "total_epochs": total,
                             "epoch_share": round(total / base, 3),
                             **{f"dev_{m}": round(v, 4) for m, v in kept.items()}}
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.patience", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories trained with validation")
    p.add_argument("--patience", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    results = []
    for run in args.runs:
        r = simulate(run, args.patience)
        common.say("patience", args, f"{run}: " + ", ".join(
            f"p={p}: {v['epoch_share']:.2f} of the epochs, dev P@1 {v['dev_p@1']:.4f}"
            for p, v in r["by"].items()))
        results.append(r)
    return common.emit({"benchmark": "patience", "runs": results}, t0)


if __name__ == "__main__":
    main()
