"""How repetitions buy accuracy: test P@k of the merged first r repetitions, r = 1 .. R.

Trains one run with the defaults for the dataset except R (``--max-repetitions``), then
scores the merge of its first r repetitions on the test split for r = 1, 2, 4, ... and
plots P@1, P@3 and P@5 against r (matplotlib, Agg backend)::

    python -m benchmarks.plot_repetitions --json --dataset bibtex --max-repetitions 32

Writes the PNG (default ``benchmarks/plots/p_at_k_vs_repetitions.png``) and prints one JSON
object last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchmarks.accuracy import PEERS, prepare_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subset_metrics(run: str, test: str, r: int) -> dict:
    """P@k, nDCG@k and PSP@k of the merge of repetitions ``0 .. r-1`` of ``run``."""
    from mach_tf.inference.evaluation import evaluate

    return evaluate(run, test, decoder="exact", repetitions=r)


def plot(name: str, rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [row["repetitions"] for row in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for key, marker in (("p@1", "o"), ("p@3", "s"), ("p@5", "^")):
        line, = ax.plot(rs, [row[key] for row in rows], marker=marker, label=f"MACH {key.upper()}")
        if name in PEERS:
            ax.axhline(PEERS[name][key], color=line.get_color(), linestyle="--", linewidth=1,
                       label=f"best peer {key.upper()}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(rs)
    ax.set_xticklabels([str(r) for r in rs])
    ax.set_xlabel("repetitions merged (R)")
    ax.set_ylabel("test precision")
    ax.set_title(f"{name}: precision@k against the number of repetitions")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--dataset", default="bibtex", help="NAME under ../shared/data or PATH")
    p.add_argument("--max-repetitions", type=int, default=32)
    p.add_argument("--workdir", default=os.path.join("work", "repetitions"))
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "plots",
                                                    "p_at_k_vs_repetitions.png"))
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mach_tf.data import config_for_data
    from mach_tf.launch.local import train

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    name, data, run = prepare_dataset(a.dataset, a.workdir)
    config = config_for_data(data["train"], num_repetitions=a.max_repetitions)
    t0 = time.time()
    train(run, data["train"], None, config, verbose=0, log=log)
    train_s = time.time() - t0
    rows = []
    powers = {1 << i for i in range(a.max_repetitions.bit_length())}
    for r in sorted({r for r in powers if r <= a.max_repetitions} | {a.max_repetitions}):
        res = subset_metrics(run, data["test"], r)
        rows.append({"repetitions": r, **{k: round(res[k], 4) for k in (
            "p@1", "p@3", "p@5", "ndcg@5", "psp@1", "psp@5")}})
        log(json.dumps(rows[-1]))
    plot(name, rows, a.output)
    out = {"benchmark": "plot_repetitions", "dataset": name, "rows": rows,
           "plot": a.output, "train_s": round(train_s, 1),
           "settings": {"buckets": config.num_buckets, "max_repetitions": a.max_repetitions,
                        "hidden": config.hidden_units, "config": "defaults except R"}}
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
