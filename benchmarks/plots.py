"""PNG plots of recorded benchmark figures, for benchmarks/RESULTS.md.

Reads the JSON under ``benchmarks/recorded/`` (figures of benchmark runs recorded in
RESULTS.md, with the commands that produced them) and writes ``benchmarks/plots/*.png``::

    python -m benchmarks.plots --json

* ``latency_vs_classes.png`` from ``recorded/serving.json`` (``benchmarks.serving``):
  batch-1 latency p50 / p99 and batch-64 throughput of the exact and candidate decoders
  against K.
* ``p_at_k_vs_repetitions.png`` from ``recorded/plot_repetitions.json`` (the JSON line of
  ``python -m benchmarks.plot_repetitions --json``), when it has been recorded.

Plots whose JSON is missing are listed under ``skipped``. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDED = os.path.join(HERE, "recorded")
PLOTS = os.path.join(HERE, "plots")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_vs_classes(data: dict, path: str) -> None:
    """Two panels: batch-1 latency (p50 solid, p99 dashed) and batch-64 throughput."""
    plt = _pyplot()
    rows = sorted(data["rows"], key=lambda r: r["classes"])
    ks = [r["classes"] for r in rows]
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for name, marker in (("exact", "o"), ("candidates", "s")):
        line, = lat.plot(ks, [r[f"{name}_p50_ms"] for r in rows], marker=marker,
                         label=f"{name} p50")
        lat.plot(ks, [r[f"{name}_p99_ms"] for r in rows], marker=marker, linestyle="--",
                 color=line.get_color(), label=f"{name} p99")
        thr.plot(ks, [r[f"{name}_batch64_qps"] for r in rows], marker=marker,
                 color=line.get_color(), label=name)
    s = data.get("settings", {})
    m = s.get("candidate_buckets")
    for ax, title, unit in ((lat, "batch-1 latency", "ms per query"),
                            (thr, "batch-64 throughput", "queries per second")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ks, [f"{k:,}" for k in ks])
        ax.set_xlabel("classes (K)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Serving: exact vs candidate decoding (m = {m}), B = {s.get('buckets')}, "
                 f"R = {s.get('repetitions')}, {s.get('machine', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def p_at_k_vs_repetitions(data: dict, path: str) -> None:
    from benchmarks.plot_repetitions import plot

    plot(data["dataset"], data["rows"], path)


#: plot file -> (recorded JSON, function)
PLOTTERS = {
    "latency_vs_classes.png": ("serving.json", latency_vs_classes),
    "p_at_k_vs_repetitions.png": ("plot_repetitions.json", p_at_k_vs_repetitions),
}


def make_plots(recorded: str = RECORDED, output: str = PLOTS) -> dict:
    """Writes every plot whose recorded JSON exists.

    Returns:
        ``{"written": [paths], "skipped": {plot: reason}}``.
    """
    os.makedirs(output, exist_ok=True)
    written, skipped = [], {}
    for name, (source, fn) in PLOTTERS.items():
        src = os.path.join(recorded, source)
        if not os.path.exists(src):
            skipped[name] = f"{os.path.relpath(src)} not recorded"
            continue
        with open(src, encoding="utf-8") as f:
            data = json.load(f)
        path = os.path.join(output, name)
        fn(data, path)
        written.append(os.path.relpath(path))
    return {"written": written, "skipped": skipped}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--recorded", default=RECORDED, help="folder of recorded JSON")
    p.add_argument("--output", default=PLOTS, help="folder for the PNGs")
    a = p.parse_args(argv)
    out = make_plots(a.recorded, a.output)
    for path in out["written"]:
        print(f"wrote {path}", file=sys.stderr)
    out = {"benchmark": "plots", **out, "settings": {
        "recorded": os.path.relpath(a.recorded), "output": os.path.relpath(a.output)}}
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
