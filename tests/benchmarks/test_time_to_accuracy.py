"""The time-to-accuracy benchmark's own parts: the peers' XMC reader and P@k, the synthetic
tagging set's shape, the curve's time to a target and the plot. (The peers themselves are
an optional install; the benchmark runs them.)"""

import numpy as np
import pytest

from benchmarks.peers import precision_at, read_xmc
from benchmarks.time_to_accuracy import TAGGING_SPEC, dataset_folder, plot, seconds_to
from mach_tf.datasets.synthetic import SyntheticSpec, generate


def test_peers_read_the_xmc_format_and_score_p_at_k(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("3 5 4\n1,3 0:1.5 4:2\n 2:1\n0 1:0.5\n")  # the second point: no labels
    x, labels, d, k = read_xmc(str(path))
    assert (d, k) == (5, 4) and x.shape == (3, 5)
    np.testing.assert_allclose(x.toarray(), [[1.5, 0, 0, 0, 2], [0, 0, 1, 0, 0],
                                             [0, 0.5, 0, 0, 0]])
    assert [y.tolist() for y in labels] == [[1, 3], [], [0]]
    topk = np.array([[3, 0, 2, 1, -1], [0, 1, 2, 3, -1], [2, 0, 1, 3, -1]])
    got = precision_at(topk, labels)
    # P@1: hit, (no labels), miss; P@3: 1 of 3, 0, 1 of 3; P@5: 2 of 5, 0, 1 of 5.
    assert got == {"p@1": pytest.approx(1 / 3, abs=1e-4),
                   "p@3": pytest.approx(2 / 9, abs=1e-4),
                   "p@5": pytest.approx(0.2, abs=1e-4)}


def test_the_synthetic_tagging_set_is_shaped_like_a_tagging_corpus():
    spec = SyntheticSpec(**TAGGING_SPEC)
    points = list(generate(spec, 2000, seed=1))
    nnz = np.mean([len(ids) for _, ids, _ in points])
    labels = np.mean([len(y) for y, _, _ in points])
    assert 17 <= nnz <= 23 and 10 <= labels <= 12
    seen = np.bincount(np.concatenate([y for y, _, _ in points]), minlength=spec.num_labels)
    # Power law: the most popular label on about a tenth of the points, most labels rare.
    assert 0.05 <= seen.max() / len(points) <= 0.25
    assert np.median(seen[seen > 0]) <= 2


def test_seconds_to_a_target_and_the_plot(tmp_path):
    curve = [{"seconds": 1.0, "p@1": 0.2, "p@5": 0.1}, {"seconds": 2.5, "p@1": 0.6, "p@5": 0.3},
             {"seconds": 4.0, "p@1": 0.7, "p@5": 0.35}]
    assert seconds_to(curve, 0.6) == 2.5
    assert seconds_to(curve, 0.71) is None
    pytest.importorskip("matplotlib")
    row = {"dataset": "toy", "tools": {
        "mach-tf": {"curve": curve}, "pecos": {"train_s": 0.5, "p@1": 0.65, "p@5": 0.3}}}
    out = tmp_path / "plot.png"
    plot(row, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_dataset_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-set: no train.txt"):
        dataset_folder("no-such-set", str(tmp_path))
