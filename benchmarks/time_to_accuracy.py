"""Time to accuracy: mach-tf's defaults against Omikuji, napkinXC and PECOS, side by side.

    python -m benchmarks.time_to_accuracy --json --dataset bibtex --dataset synthetic-tagging

For each dataset, in one run on the same cores, one tool at a time, each in its own child
process (so its peak RSS is its own):

* the peers (``benchmarks/peers.py``: their standard defaults, all cores), run with the
  interpreter of the peers' environment (``--peer-python``; ``make bench-peers`` builds
  ``.venv-peers``, because PECOS pins ``numpy<2`` and TensorFlow 2.21 needs ``numpy>=2``);
* mach-tf: ``mach-tf train``'s defaults (``config_for_data``: nothing set per dataset), one
  worker with all cores, then ``evaluate`` on the test split. A benchmark-only callback
  scores the *test* split after every epoch with the merged top-k of every repetition
  trained so far (the complete ones and the group in training) and records test P@1 / P@5
  against training seconds; its own scoring time is taken out of the clock, and it never
  feeds a decision (early stopping watches the carved validation split as always).

Reported per tool: ``train_s``, test ``p@1``/``p@3``/``p@5``, ``peak_rss_mb``; for mach-tf
also ``curve`` and ``seconds_to_best_peer_p@1`` (the first point of the curve at or above
the best peer's test P@1; ``null`` if never), with the ratios the goals are stated in:
``reach_ratio`` = that time over the best peer's training time, ``default_run_ratio`` =
mach-tf's whole default run over it. The best peer is the one with the highest test P@1.
Converting the text files to TFRecords (mach-tf's input) is timed apart as ``convert_s``;
the peers' times include no parsing, except Omikuji's (its Python API trains from a file).

A dataset is a NAME under ``../shared/data``, a PATH to a folder with ``train.txt`` and
``test.txt`` in the XMC repository format, or ``synthetic-tagging``: generated here,
shaped like a tagging corpus (50,000 labels with power-law popularity, 20,000 features,
20,000 training and 5,000 test points, about 20 non-zeros and 11 labels per point, most
labels seen a handful of times). A plot per dataset goes to
``benchmarks/plots/time_to_accuracy_NAME.png``. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks import common
from benchmarks.peers import peak_rss_mb

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
PLOTS = os.path.join(HERE, "plots")
PEERS = ("omikuji", "napkinxc", "pecos")
TAGGING = "synthetic-tagging"
#: The generator's settings for the tagging-shaped set (``SyntheticSpec`` fields).
TAGGING_SPEC = {"num_labels": 50_000, "num_features": 20_000, "avg_labels": 11.0,
                "zipf": 0.7, "cluster_size": 16, "shared": 1, "own": 2, "keep": 0.25,
                "noise": 12, "seed": 7}
TAGGING_POINTS = (20_000, 5_000)


def default_peer_python() -> str:
    venv = os.path.join(ROOT, ".venv-peers", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def dataset_folder(spec: str, workdir: str) -> tuple[str, str]:
    """``(name, folder with train.txt and test.txt)``; the synthetic set is written once.

    Raises:
        FileNotFoundError: naming what is missing.
    """
    if spec == TAGGING:
        from mach_tf.datasets.synthetic import SyntheticSpec, write_split

        folder = os.path.join(workdir, TAGGING, "txt")
        if not os.path.exists(os.path.join(folder, "test.txt")):
            write_split(folder, SyntheticSpec(**TAGGING_SPEC), *TAGGING_POINTS)
        return TAGGING, folder
    folder = spec if os.path.isdir(spec) else os.path.join(SHARED_DATA, spec)
    for split in ("train.txt", "test.txt"):
        if not os.path.isfile(os.path.join(folder, split)):
            raise FileNotFoundError(f"{spec}: no {split} in {folder}")
    return os.path.basename(os.path.normpath(folder)), folder


def _last_json(stdout: str, what: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{what} printed no JSON line")


def run_child(cmd: list, what: str, env=None) -> dict:
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {res.returncode}): "
                           f"{res.stderr.strip()[-2000:]}")
    return _last_json(res.stdout, what)


# -- the mach-tf child --------------------------------------------------------------------
def train_mach(train: str, test: str, run: str, seed: int, threads: int | None) -> dict:
    """Trains mach-tf's defaults with the test curve, evaluates; returns the row."""
    import keras
    import numpy as np

    from mach_tf import rundir
    from mach_tf.data import config_for_data
    from mach_tf.inference.evaluation import evaluate
    from mach_tf.launch.local import train as train_run
    from mach_tf.training.callbacks import MergedValidation, completed_scores
    from mach_tf.training.validation import DataSplit, load_sample

    config = config_for_data(train, seed=seed)
    sample = load_sample(DataSplit(test, test, 0.0, seed), max_examples=1 << 30)

    class TestCurve(keras.callbacks.Callback):
        """Test P@1/P@5 of everything trained so far, after every epoch (benchmark only:
        its time is taken out of the clock and nothing reads its figures)."""

        def __init__(self, t0: float):
            super().__init__()
            self.points, self.paused, self.cache = [], 0.0, {}
            self.t0 = t0
            self.scorer = None

        def on_train_begin(self, logs=None):
            t = time.perf_counter()
            group = list(self.model.repetitions)
            done, scores = completed_scores(run, config, sample, exclude=group,
                                            cache=self.cache)
            self.scorer = MergedValidation(config, sample, group, done, scores)
            self.scorer.set_model(self.model)
            self.paused += time.perf_counter() - t

        def on_epoch_end(self, epoch, logs=None):
            t = time.perf_counter()
            res = self.scorer.compute()["run"]
            self.points.append({
                "seconds": round(t - self.t0 - self.paused, 2),
                "repetitions": len(self.scorer.done_repetitions) + len(
                    self.scorer.repetitions),
                "p@1": round(float(res["p@1"]), 4), "p@5": round(float(res["p@5"]), 4)})
            self.paused += time.perf_counter() - t

    t0 = time.perf_counter()
    curve = TestCurve(t0)
    summary = train_run(run, train, None, config, workers=1, threads=threads, verbose=0,
                        log=lambda m: None, callbacks=[curve])
    train_s = time.perf_counter() - t0 - curve.paused
    if summary["failed"]:
        raise RuntimeError(f"repetitions failed: {summary['failed']}")
    res = evaluate(run, test, ks=(1, 3, 5))
    epochs = [rundir.completion(run, r) for r in range(config.num_repetitions)]
    return {"tool": "mach-tf", "train_s": round(train_s, 2),
            **{k: round(float(res[k]), 4) for k in ("p@1", "p@3", "p@5")},
            "curve": curve.points,
            "epochs_run": int(np.sum([e.get("epochs", 0) for e in epochs[::max(
                1, config.group_size)]])),
            "best_epochs": sorted({e.get("best_epoch") for e in epochs} - {None}),
            "config": {"num_buckets": config.num_buckets,
                       "num_repetitions": config.num_repetitions,
                       "hidden_units": config.hidden_units, "epochs": config.epochs,
                       "group_size": config.group_size, "batch_size": config.batch_size,
                       "learning_rate": config.learning_rate},
            "peak_rss_mb": peak_rss_mb()}


# -- one dataset ---------------------------------------------------------------------------
def seconds_to(curve: list, target: float) -> float | None:
    for point in curve:
        if point["p@1"] >= target:
            return point["seconds"]
    return None


def run_dataset(spec: str, workdir: str, peers, peer_python: str, seed: int,
                threads: int | None, log) -> dict:
    from tfrecords_tools.convert import convert

    name, folder = dataset_folder(spec, workdir)
    base = os.path.join(workdir, name)
    data = {s: os.path.join(base, "tfr", s) for s in ("train", "test")}
    t0 = time.perf_counter()
    for s, prefix in data.items():
        if not os.path.exists(prefix + ".manifest.json"):
            convert(os.path.join(folder, f"{s}.txt"), prefix)
    convert_s = time.perf_counter() - t0
    row = {"dataset": name, "convert_s": round(convert_s, 2), "tools": {}}
    for tool in peers:
        log(f"{name}: {tool}")
        cmd = [peer_python, os.path.join(HERE, "peers.py"), "--tool", tool,
               "--train", os.path.join(folder, "train.txt"),
               "--test", os.path.join(folder, "test.txt")]
        if threads:
            cmd += ["--threads", str(threads)]
        row["tools"][tool] = run_child(cmd, f"{name}: {tool}")
        log(f"{name}: {tool}: {row['tools'][tool]}")
    log(f"{name}: mach-tf")
    run = os.path.join(base, "run")
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "benchmarks.time_to_accuracy", "--mach-child",
           "--train", data["train"], "--test", data["test"], "--run", run,
           "--seed", str(seed)] + (["--threads", str(threads)] if threads else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    mach = run_child(cmd, f"{name}: mach-tf", env=env)
    row["tools"]["mach-tf"] = mach
    log(f"{name}: mach-tf: train_s={mach['train_s']} p@1={mach['p@1']} "
        f"p@5={mach['p@5']}")
    if row["tools"].keys() - {"mach-tf"}:
        best = max((t for t in row["tools"] if t != "mach-tf"),
                   key=lambda t: (row["tools"][t]["p@1"], -row["tools"][t]["train_s"]))
        peer = row["tools"][best]
        reach = seconds_to(mach["curve"], peer["p@1"])
        row.update({
            "best_peer": best, "best_peer_train_s": peer["train_s"],
            "seconds_to_best_peer_p@1": reach,
            "reach_ratio": None if reach is None else round(reach / peer["train_s"], 2),
            "default_run_ratio": round(mach["train_s"] / peer["train_s"], 2),
            "at_or_above_best_peer": {
                k: mach[k] >= max(row["tools"][t][k] for t in row["tools"]
                                  if t != "mach-tf") for k in ("p@1", "p@3", "p@5")}})
    plot(row, os.path.join(PLOTS, f"time_to_accuracy_{name}.png"))
    return row


def plot(row: dict, path: str) -> None:
    """Test P@1 (solid) and P@5 (dashed) of mach-tf against training seconds, the peers
    as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mach = row["tools"]["mach-tf"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [p["seconds"] for p in mach["curve"]]
    ax.plot(xs, [p["p@1"] for p in mach["curve"]], "-", color="C0", label="mach-tf P@1")
    ax.plot(xs, [p["p@5"] for p in mach["curve"]], "--", color="C0", label="mach-tf P@5")
    markers = {"omikuji": "o", "napkinxc": "s", "pecos": "^"}
    for i, (tool, res) in enumerate((t, r) for t, r in row["tools"].items() if t != "mach-tf"):
        for k, fill in (("p@1", None), ("p@5", "none")):
            ax.plot([res["train_s"]], [res[k]], markers.get(tool, "x"), color=f"C{i + 1}",
                    markerfacecolor=fill, label=f"{tool} {k.upper()}")
    ax.set_xscale("log")
    ax.set_xlabel("training seconds (log scale)")
    ax.set_ylabel("test precision")
    ax.set_title(f"{row['dataset']}: time to accuracy (2 CPU cores)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object last")
    p.add_argument("--dataset", action="append",
                   help=f"NAME under ../shared/data, PATH, or {TAGGING} (repeatable; "
                        f"default: bibtex, delicious, {TAGGING})")
    p.add_argument("--peers", default=",".join(PEERS),
                   help="comma-separated peers to run (default: all three; '' for none)")
    p.add_argument("--peer-python", default=default_peer_python(),
                   help="the peers' interpreter (default: .venv-peers/bin/python if it "
                        "exists, else this one)")
    p.add_argument("--workdir", default=os.path.join("work", "time_to_accuracy"))
    p.add_argument("--threads", type=int, help="threads for every tool (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mach-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--train", help=argparse.SUPPRESS)
    p.add_argument("--test", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.mach_child:
        print(json.dumps(train_mach(a.train, a.test, a.run, a.seed, a.threads)))
        return 0
    peers = [t for t in a.peers.split(",") if t]
    unknown = set(peers) - set(PEERS)
    if unknown:
        p.error(f"unknown peers {sorted(unknown)}; choose from {PEERS}")
    t0 = time.time()
    rows = [run_dataset(spec, a.workdir, peers, a.peer_python, a.seed, a.threads,
                        lambda m: common.say("time_to_accuracy", a, m))
            for spec in (a.dataset or ["bibtex", "delicious", TAGGING])]
    out = {"benchmark": "time_to_accuracy", "results": rows,
           "settings": {"seed": a.seed, "threads": a.threads, "cpus": os.cpu_count(),
                        "peers": peers, "peer_python": a.peer_python,
                        "config": "mach-tf train defaults (config_for_data)"}}
    common.emit(out, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
