"""Trains one established XMC library on an XMC-format split and scores its test P@k.

    python benchmarks/peers.py --tool omikuji --train DIR/train.txt --test DIR/test.txt

Run by ``benchmarks.time_to_accuracy`` in a child process, one per tool, with the
interpreter of the peers' environment (``make bench-peers`` builds ``.venv-peers``: PECOS
pins ``numpy<2``, which TensorFlow 2.21 cannot use, so the peers never share mach-tf's
environment). This file imports nothing from the project, only numpy, scipy and the tool.

Each tool is trained with its standard defaults on all the machine's cores:

* ``omikuji``: ``Model.default_hyper_param()`` (Parabel-like label tree, 2-means
  clustering, L2-regularised logistic leaves), trained from the file (Omikuji's Python API
  trains only from a path, so its time includes parsing the training file);
* ``napkinxc``: ``napkinxc.models.PLT`` with its defaults (hierarchical k-means tree,
  logistic loss, LIBLINEAR leaves), from the parsed CSR matrix;
* ``pecos``: XR-Linear, the documented recipe: PIFA label embedding, ``Indexer.gen``
  hierarchical k-means, ``XLinearModel.train`` with its defaults, on the parsed CSR
  matrix with its rows scaled to unit L2 norm (PECOS assumes normalised features).

The last stdout line is one JSON object: ``train_s`` (the training call alone, except
Omikuji as said), ``p@1``/``p@3``/``p@5`` on the test split, ``predict_s`` and the
process's ``peak_rss_mb``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np
import scipy.sparse as sp

TOOLS = ("omikuji", "napkinxc", "pecos")


def peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss`` it does not
    carry over the parent's peak through fork and exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def read_xmc(path: str):
    """``(X csr float32 [n, D], labels list of int arrays, D, K)`` of an XMC file."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().split()
        n, d, k = (int(x) for x in header)
        indptr, indices, values, labels = [0], [], [], []
        for lineno, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split(" ")
            first = parts[0]
            if first and ":" in first:        # a point without labels
                feats, labs = parts, []
            else:
                feats = parts[1:]
                labs = [int(x) for x in first.split(",")] if first else []
            for tok in feats:
                if not tok:
                    continue
                i, v = tok.split(":")
                indices.append(int(i))
                values.append(float(v))
            indptr.append(len(indices))
            labels.append(np.asarray(labs, np.int64))
    x = sp.csr_matrix((np.asarray(values, np.float32), np.asarray(indices, np.int64),
                       np.asarray(indptr, np.int64)), shape=(len(labels), d))
    if len(labels) != n:
        print(f"{path}: header says {n} points, read {len(labels)}", file=sys.stderr)
    return x, labels, d, k


def label_matrix(labels, k: int) -> sp.csr_matrix:
    indptr = np.cumsum([0] + [len(y) for y in labels])
    indices = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr),
                         shape=(len(labels), k))


def precision_at(topk: np.ndarray, labels, ks=(1, 3, 5)) -> dict:
    """P@k: hits among the first k predictions over k, averaged over all test points
    (a point without labels counts 0, as mach-tf's evaluation does)."""
    out = {}
    for k in ks:
        hits = [len(set(row[:k].tolist()) & set(y.tolist())) / k
                for row, y in zip(topk, labels)]
        out[f"p@{k}"] = round(float(np.mean(hits)), 4)
    return out


def _pad(rows, width=5) -> np.ndarray:
    out = np.full((len(rows), width), -1, np.int64)
    for i, r in enumerate(rows):
        r = list(r)[:width]
        out[i, :len(r)] = r
    return out


def run_omikuji(train_path, x_test, threads):
    import omikuji

    t0 = time.perf_counter()
    model = omikuji.Model.train_on_data(train_path, omikuji.Model.default_hyper_param(),
                                        n_threads=threads)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = []
    for i in range(x_test.shape[0]):
        s, e = x_test.indptr[i], x_test.indptr[i + 1]
        pairs = list(zip(x_test.indices[s:e].tolist(), x_test.data[s:e].tolist()))
        rows.append([lab for lab, _ in model.predict(pairs, top_k=5)])
    return train_s, time.perf_counter() - t0, _pad(rows)


def run_napkinxc(x, labels, x_test, threads):
    from napkinxc.models import PLT

    with tempfile.TemporaryDirectory(prefix="napkinxc-") as tmp:
        model = PLT(os.path.join(tmp, "model"), threads=threads)
        t0 = time.perf_counter()
        model.fit(x, [y.tolist() for y in labels])
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = model.predict(x_test, top_k=5)
        return train_s, time.perf_counter() - t0, _pad(rows)


def _l2_rows(x: sp.csr_matrix) -> sp.csr_matrix:
    """Rows scaled to unit L2 norm: PECOS's linear rankers assume normalised features (its
    benchmark data are L2-normalised tf-idf)."""
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    out = (sp.diags(1.0 / np.maximum(norms, 1e-12)) @ x).astype(np.float32).tocsr()
    out.sort_indices()
    return out


def run_pecos(x, labels, k, x_test, threads):
    from pecos.xmc import Indexer, LabelEmbeddingFactory
    from pecos.xmc.xlinear.model import XLinearModel

    y = label_matrix(labels, k)
    x, x_test = _l2_rows(x), _l2_rows(x_test)
    t0 = time.perf_counter()
    label_feat = LabelEmbeddingFactory.create(y, x, method="pifa")
    chain = Indexer.gen(label_feat, threads=threads)
    model = XLinearModel.train(x, y, C=chain, threads=threads)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = model.predict(x_test, only_topk=5, threads=threads).tocsr()
    rows = []
    for i in range(pred.shape[0]):
        s, e = pred.indptr[i], pred.indptr[i + 1]
        order = np.argsort(-pred.data[s:e], kind="stable")
        rows.append(pred.indices[s:e][order].tolist())
    return train_s, time.perf_counter() - t0, _pad(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tool", choices=TOOLS, required=True)
    p.add_argument("--train", required=True, help="XMC-format training file")
    p.add_argument("--test", required=True, help="XMC-format test file")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for the tool (default: all cores)")
    a = p.parse_args(argv)
    x_test, y_test, _, _ = read_xmc(a.test)
    if a.tool == "omikuji":
        train_s, predict_s, topk = run_omikuji(a.train, x_test, a.threads)
    else:
        x, labels, _, k = read_xmc(a.train)
        if a.tool == "napkinxc":
            train_s, predict_s, topk = run_napkinxc(x, labels, x_test, a.threads)
        else:
            train_s, predict_s, topk = run_pecos(x, labels, k, x_test, a.threads)
    out = {"tool": a.tool, "train_s": round(train_s, 2), "predict_s": round(predict_s, 2),
           **precision_at(topk, y_test), "num_test": len(y_test), "threads": a.threads,
           "peak_rss_mb": peak_rss_mb()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
