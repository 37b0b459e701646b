"""``mach-tf extend``: a new run with more classes, fine-tuned from a trained one that is
never modified; the old classes keep their buckets; refusals; resumption after SIGKILL."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.datasets.synthetic import SyntheticSpec, generate
from mach_tf.errors import RunDirError
from mach_tf.inference.evaluation import evaluate
from mach_tf.launch.extension import extend
from mach_tf.launch.local import train
from mach_tf.training.checkpoint import GroupCheckpoint
from tests.helpers import ROOT
from tfrecords_tools.convert import write_examples

K1, K2, D = 48, 60, 300


def quiet(msg):
    pass


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """Old data (classes below K1), new data (points with a class of K1..K2-1), a run
    trained on the old data."""
    d = tmp_path_factory.mktemp("catalogue")
    spec = SyntheticSpec(num_labels=K2, num_features=D, avg_labels=1.5, seed=3)
    points = list(generate(spec, 2400, seed=1))
    old = [p for p in points if max(p[0], default=0) < K1]
    new = [p for p in points if max(p[0], default=0) >= K1]
    write_examples(str(d / "old"), old[:-200], D, K1)
    write_examples(str(d / "new"), new[:-100], D, K2)
    write_examples(str(d / "new_test"), new[-100:], D, K2)
    write_examples(str(d / "old_test"), old[-200:], D, K1)
    config = MachConfig.from_data(K1, D, num_buckets=16, num_repetitions=4, hidden_units=[32],
                                  epochs=4, batch_size=64, group_size=2, learning_rate=3e-3,
                                  seed=1)
    train(str(d / "run"), str(d / "old"), None, config, verbose=0, log=quiet)
    return {k: str(d / k) for k in ("old", "new", "new_test", "old_test", "run")} | \
        {"dir": d}


def tree_digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            full = os.path.join(root, f)
            h.update(full.encode() + open(full, "rb").read())
    return h.hexdigest()


def test_extension_adds_classes_and_leaves_the_source_alone(catalogue, tmp_path):
    before = tree_digest(catalogue["run"])
    out = str(tmp_path / "run2")
    said = []
    report = extend(catalogue["run"], out, K2, catalogue["new"], epochs=3, log=said.append)
    assert report["complete"] == 4 and report["extension"]["source_classes"] == K1
    assert tree_digest(catalogue["run"]) == before  # the source run is only read
    old_config, new_config = rundir.load_config(catalogue["run"]), rundir.load_config(out)
    assert new_config.num_classes == K2 and new_config.hashing == old_config.hashing
    np.testing.assert_array_equal(new_config.hash_family.table(K2)[:, :K1],
                                  old_config.hash_family.table(K1))
    assert any("starting from" in m for m in said)
    # The mixed data: every new example and as many replayed old ones.
    mixed = json.load(open(os.path.join(out, "extension", "train.manifest.json")))
    new_n = json.load(open(catalogue["new"] + ".manifest.json"))["num_examples"]
    held = json.load(open(os.path.join(out, "extension", "valid.manifest.json")))
    assert mixed["num_labels"] == K2 and mixed["source"]["replayed"] == new_n
    # a share of them held out for the merged validation, the rest trained on
    assert held["num_examples"] == mixed["source"]["held_out"] > 0
    assert mixed["num_examples"] + held["num_examples"] == 2 * new_n
    assert rundir.read_json(rundir.validation_path(out))["valid"].endswith(
        os.path.join("extension", "valid"))
    # New classes are found; old ones still are.
    new_p1 = evaluate(out, catalogue["new_test"])["p@1"]
    base_old = evaluate(catalogue["run"], catalogue["old_test"])["p@1"]
    ext_old = evaluate(out, catalogue["old_test"])["p@1"]
    assert new_p1 > 0.3 and ext_old > base_old - 0.1
    # A rerun with the same settings has nothing left to do.
    again = extend(catalogue["run"], out, K2, catalogue["new"], epochs=3, log=quiet)
    assert again["trained"] == [] and again["complete"] == 4


def test_refusals(catalogue, tmp_path):
    run, new = catalogue["run"], catalogue["new"]
    with pytest.raises(ValueError, match=f"--num-classes {K1} must be above the run's {K1}"):
        extend(run, str(tmp_path / "a"), K1, new, log=quiet)
    with pytest.raises(ValueError, match="must be a new directory"):
        extend(run, run, K2, new, log=quiet)
    with pytest.raises(ValueError, match=f"labels up to {K2 - 1}, above the {K2 - 1} classes"):
        extend(run, str(tmp_path / "b"), K2 - 1, new, log=quiet)
    other = str(tmp_path / "other")
    write_examples(other, [([K1], [1], [1.0])], D + 1, K2)
    with pytest.raises(ValueError, match=f"{D + 1} features, the run has {D}"):
        extend(run, str(tmp_path / "c"), K2, other, log=quiet)
    out = str(tmp_path / "d")
    extend(run, out, K2, new, epochs=1, log=quiet)
    with pytest.raises(RunDirError, match="extended with other settings.*replay_ratio"):
        extend(run, out, K2, new, replay_ratio=2.0, epochs=1, log=quiet)
    with pytest.raises(RunDirError, match="not an extension"):
        extend(run, str(_plain_run(tmp_path)), K2, new, log=quiet)


def _plain_run(tmp_path):
    path = tmp_path / "plain"
    rundir.ensure_config(str(path), MachConfig.from_data(K2, D, seed=0))
    return path


def test_sigkilled_extension_resumes(catalogue, tmp_path):
    out = str(tmp_path / "run2")
    cmd = [sys.executable, "-m", "mach_tf", "extend", "--model-dir", catalogue["run"],
           "--num-classes", str(K2), "--train", catalogue["new"], "--output-run", out,
           "--epochs", "12", "--checkpoint-every", "5", "--threads", "1"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = GroupCheckpoint(rundir.checkpoint_dir(out, [0, 1]))
    try:
        state, deadline = None, time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            state = ckpt.state() if os.path.isdir(rundir.checkpoint_dir(out, [0, 1])) else None
            if state and state["global_step"] >= 20:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGSTOP)
        assert proc.poll() is None and state and not state["finished"], \
            "the extension finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not rundir.is_complete(out, 0)
    done = subprocess.run(cmd + ["--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming at epoch" in done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["complete"] == 4
    assert rundir.completion(out, 0)["resumed_from"] is not None
    assert evaluate(out, catalogue["new_test"])["p@1"] > 0.3
