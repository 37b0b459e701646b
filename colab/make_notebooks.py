"""Writes colab/real_data.ipynb from the cells below (outputs empty).

    python colab/make_notebooks.py

Edit the cells here, not the notebook, and run it again. (quickstart.ipynb and
tf_serving.ipynb are edited as notebooks.) The test suite executes every notebook in
colab/ with MACH_TF_NOTEBOOK_SMALL=1 (tests/colab/test_notebooks.py).
"""

from __future__ import annotations

import os

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))

INSTALL = '''\
# Install mach-tf (on Colab or a fresh environment). Skipped when it is already importable.
# MACH_TF_PIP says where to install it from: a git URL of your copy, or a local checkout
# path; "[cpu]" pulls the TensorFlow CPU wheel ("[gpu]" for tensorflow[and-cuda]).
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("mach_tf") is None:
    source = os.environ.get("MACH_TF_PIP", "git+https://github.com/mach-tf/mach-tf.git")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"mach-tf[cpu] @ {source}"])'''

REAL_DATA = [
    ("markdown", """\
# mach-tf on a real XMC dataset

Point this notebook at a dataset in the [Extreme Classification Repository](
http://manikvarma.org/downloads/XC/XMLRepository.html) text format: a folder with
`train.txt` and `test.txt`, each a header line `num_points num_features num_labels` and
one line per point, `l1,l2,... f:v f:v ...`. It converts the files, trains MACH with the
defaults for the data, evaluates precision (P@k) and propensity-scored precision (PSP@k,
which rewards getting the rare labels right), and shows what each extra repetition buys."""),
    ("code", INSTALL),
    ("code", '''\
import json, os, tempfile
# The test suite runs every notebook top to bottom with MACH_TF_NOTEBOOK_SMALL=1: it then
# writes a small synthetic dataset in the same text format to DATA instead of reading one.
SMALL = os.environ.get("MACH_TF_NOTEBOOK_SMALL") == "1"
WORKDIR = os.environ.get("MACH_TF_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="mach-tf-")
# Your dataset: a folder with train.txt and test.txt (bibtex, delicious, Eurlex-4K, ...).
DATA = os.environ.get("MACH_TF_NOTEBOOK_DATA", os.path.join("..", "shared", "data", "bibtex"))
if SMALL:
    DATA = os.path.join(WORKDIR, "small_xmc")
R_MAX = 4 if SMALL else 16      # repetitions to train; subsets 1, 2, 4, ... are compared
print("data:", os.path.abspath(DATA), "| working in", WORKDIR)'''),
    ("code", '''\
if SMALL:  # a stand-in written by the notebook itself, in the XMC text format
    from mach_tf.datasets.synthetic import SyntheticSpec, write_split
    write_split(DATA, SyntheticSpec(num_labels=150, num_features=800, seed=0), 1500, 300)
for split in ("train", "test"):
    path = os.path.join(DATA, f"{split}.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: set MACH_TF_NOTEBOOK_DATA (or DATA above) "
                                f"to a folder holding train.txt and test.txt")
with open(os.path.join(DATA, "train.txt")) as f:
    print(f.readline().strip(), "  <- header: points, features, labels")
    print(f.readline()[:100], "...")'''),
    ("markdown", """\
## 1. Convert to TFRecords

The converter checks every line (a bad line stops it with the file and line at fault) and
writes sharded TFRecords with a manifest."""),
    ("code", '''\
from tfrecords_tools import convert

prefix = {s: os.path.join(WORKDIR, "tfr", s) for s in ("train", "test")}
for s in ("train", "test"):
    m = convert(os.path.join(DATA, f"{s}.txt"), prefix[s])
    print(s, m.num_examples, "points,", m.num_features, "features,", m.num_labels, "labels")'''),
    ("markdown", """\
## 2. Train

`config_for_data` sizes B, the network and the epoch cap from the data (K, D, N); here only
R is set. Training holds out 10% of the training points and stops each group of repetitions
when their merged validation nDCG@5 stops improving. TensorBoard shows every repetition's
loss and bucket accuracy and the merged validation P@k (run the command printed below; in
Colab: `%load_ext tensorboard` then `%tensorboard --logdir <run>/logs`)."""),
    ("code", '''\
from mach_tf.data import config_for_data
from mach_tf.launch.local import train

run_dir = os.path.join(WORKDIR, "run")
config = config_for_data(prefix["train"], num_repetitions=R_MAX,
                         **({"epochs": 4} if SMALL else {}))
print(f"K={config.num_classes} D={config.num_features} B={config.num_buckets} "
      f"R={config.num_repetitions} hidden={config.hidden_units} epochs<={config.epochs}")
summary = train(run_dir, prefix["train"], config=config, verbose=0, log=lambda m: None)
print({k: summary[k] for k in ("complete", "seconds", "final_validation") if k in summary})
print("tensorboard --logdir", os.path.join(run_dir, "logs"))'''),
    ("markdown", "## 3. Evaluate: P@k, nDCG@k and PSP@k on the test split"),
    ("code", '''\
from mach_tf import rundir
from mach_tf.inference.evaluation import evaluate, popularity_baseline

metrics = evaluate(run_dir, prefix["test"], ks=(1, 3, 5))
floor = popularity_baseline(rundir.load_label_counts(run_dir), prefix["test"])
print(json.dumps({k: round(v, 4) for k, v in metrics.items()
                  if k.startswith(("p@", "psp@", "ndcg@"))}, indent=1))
print("floor P@1 (always the most frequent labels):", round(floor["p@1"], 4))'''),
    ("markdown", """\
## 4. What do more repetitions buy?

The R repetitions are independent, so the merge of the first r of them is exactly the model
one would have trained with R = r (same hash functions, same networks): one training run
gives the whole curve. `evaluate(..., repetitions=r)` scores that merge."""),
    ("code", '''\
rs = sorted({r for r in (1, 2, 4, 8, 16, 32) if r <= R_MAX} | {R_MAX})
rows = []
for r in rs:
    m = evaluate(run_dir, prefix["test"], ks=(1, 3, 5), repetitions=r)
    rows.append({"R": r, **{k: round(m[k], 4) for k in ("p@1", "p@3", "p@5", "psp@1", "psp@5")}})
    print(rows[-1])'''),
    ("code", '''\
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for key in ("p@1", "p@3", "p@5"):
    axes[0].plot(rs, [row[key] for row in rows], marker="o", label=key.upper())
for key in ("psp@1", "psp@5"):
    axes[1].plot(rs, [row[key] for row in rows], marker="s", label=key.upper())
for ax, title in zip(axes, ("precision", "propensity-scored precision")):
    ax.set_xscale("log", base=2); ax.set_xticks(rs, [str(r) for r in rs])
    ax.set_xlabel("repetitions merged (R)"); ax.set_title(title); ax.grid(alpha=0.3)
    ax.legend()
fig.suptitle(f"{os.path.basename(os.path.normpath(DATA))}: K = {config.num_classes:,}, "
             f"B = {config.num_buckets}")
fig.tight_layout()
plt.show()'''),
    ("markdown", """\
Next: `mach-tf export --model-dir <run> --output serving/mach` makes one SavedModel for
TensorFlow Serving (see `tf_serving.ipynb`); `mach-tf tune` searches B, the network, the
loss and the learning rate with keras-tuner."""),
]


def notebook(cells) -> nbformat.NotebookNode:
    nb = v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python",
                                  "name": "python3"},
                   "language_info": {"name": "python"}}
    nb.cells = [v4.new_markdown_cell(src) if kind == "markdown" else v4.new_code_cell(src)
                for kind, src in cells]
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating changes nothing
        cell["id"] = f"cell-{i:02d}"
    return nb


def main() -> None:
    path = os.path.join(HERE, "real_data.ipynb")
    nbformat.write(notebook(REAL_DATA), path)
    print("wrote", path)


if __name__ == "__main__":
    main()
