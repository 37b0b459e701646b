"""Plot of training cost against K for the full softmax and MACH, from train_speed results.

    python -m benchmarks.plot_train_speed benchmarks/plots/train_speed_results.json

The input is a JSON list of ``python -m benchmarks.train_speed --json`` outputs (one per
K; the file beside the plot holds the recorded ones). Two panels, log-log, both models:
step time (ms, one batch through all R repetitions for MACH) and trainable parameters
against K. A K where the full softmax did not run is plotted for MACH alone. Writes the PNG
(default ``benchmarks/plots/train_speed.png``) and prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot_train_speed",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="JSON list of train_speed outputs")
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "plots",
                                                    "train_speed.png"))
    return p.parse_args(argv)


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """``(K, value)`` of the rows that have ``key``, sorted by K."""
    pts = sorted((r["classes"], r[key]) for r in rows if r.get(key) is not None)
    return [k for k, _ in pts], [v for _, v in pts]


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(10, 4))
    for model, style in (("full", "o-"), ("mach", "s-")):
        label = "full softmax" if model == "full" else "MACH (default B, R)"
        ax_t.plot(*series(rows, f"{model}_step_ms"), style, label=label)
        ax_p.plot(*series(rows, f"{model}_params"), style, label=label)
    for k, r in ((r["classes"], r) for r in rows):
        if r.get("speedup"):
            ax_t.annotate(f"{r['speedup']:g}x", (k, r["full_step_ms"]),
                          textcoords="offset points", xytext=(4, -12), fontsize=8)
    first = rows[0]
    ax_t.set(xscale="log", yscale="log", xlabel="classes K",
             ylabel="training step (ms, batch %d)" % first["batch_size"],
             title="Training step time")
    ax_p.set(xscale="log", yscale="log", xlabel="classes K", ylabel="trainable parameters",
             title="Parameters")
    for ax in (ax_t, ax_p):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"D = {first['features']:,} features, hidden {first['hidden']}, "
                 f"2 CPU cores (shared)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with open(args.results) as f:
        rows = json.load(f)
    if not isinstance(rows, list) or not rows:
        raise SystemExit(f"{args.results}: expected a non-empty JSON list of train_speed "
                         f"results")
    plot(rows, args.output)
    out = {"benchmark": "plot_train_speed", "plot": os.path.relpath(args.output, ROOT),
           "classes": [r["classes"] for r in rows]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
