"""TensorBoard: the event files a run writes, read back, and served by the real server."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_metadata

from mach_tf import rundir
from mach_tf.training.tensorboard import EpochTensorBoard, final_validation, merged_step


def scalars(logdir: str) -> dict:
    """``{tag: {step: value}}`` of every scalar in ``logdir`` (all event files)."""
    acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        for e in acc.Tensors(tag):
            if e.tensor_proto.dtype == tf.float32.as_datatype_enum and \
                    not e.tensor_proto.tensor_shape.dim:
                out.setdefault(tag, {})[e.step] = float(tf.make_ndarray(e.tensor_proto))
    return out


def group_loss(run: str, group: str) -> dict:
    """The group's Keras TensorBoard ``epoch_loss`` by epoch (1-based)."""
    return {s + 1: v for s, v in scalars(os.path.join(run, "logs", group, "train"))
            ["epoch_loss"].items()}


def test_repetition_loss_metric_round_trip():
    from mach_tf.model.losses import bucket_loss
    from mach_tf.model.metrics import RepetitionLoss

    m = RepetitionLoss(1, "softmax", name="rep_007_loss")
    y = tf.constant([[[0, -1], [2, 1]], [[1, -1], [-1, -1]]], tf.int32)
    logits = tf.random.stateless_normal([2, 2, 3], seed=[1, 2])
    m.update_state(y, logits)
    want = float(tf.reduce_mean(bucket_loss(y[:, 1:], logits[:, 1:])))
    assert float(m.result()) == pytest.approx(want, rel=1e-6)
    back = keras.metrics.deserialize(keras.metrics.serialize(m))
    assert (type(back), back.index, back.kind, back.name) == (
        RepetitionLoss, 1, "softmax", "rep_007_loss")
    back.update_state(y, logits)
    assert float(back.result()) == pytest.approx(want, rel=1e-6)


def test_per_repetition_scalars(tiny_run, tiny_config):
    epochs = {r: rundir.read_json(os.path.join(rundir.rep_dir(tiny_run, r), "COMPLETE.json"))
              ["epochs"] for r in range(tiny_config.num_repetitions)}
    per_rep = {r: scalars(os.path.join(tiny_run, "logs", f"rep-{r:03d}"))
               for r in range(tiny_config.num_repetitions)}
    for r, tags in per_rep.items():
        assert set(tags) == {"train/loss", "train/bucket_acc", "validation/loss",
                             "validation/bucket_acc"}, r
        for tag, series in tags.items():
            assert sorted(series) == list(range(1, epochs[r] + 1)), (r, tag)
            assert all(math.isfinite(v) for v in series.values())
        assert all(0.0 <= v <= 1.0 for v in tags["train/bucket_acc"].values())
        assert all(0.0 <= v <= 1.0 for v in tags["validation/bucket_acc"].values())
        # the model learns: the repetition's training loss falls
        losses = [tags["train/loss"][s] for s in sorted(tags["train/loss"])]
        assert losses[-1] < losses[0]
    # The group's compiled loss is the sum of its repetitions' losses, epoch by epoch.
    for group, reps in (("group-000_001", (0, 1)), ("group-002_003", (2, 3))):
        for epoch, total in group_loss(tiny_run, group).items():
            parts = sum(per_rep[r]["train/loss"][epoch] for r in reps)
            assert parts == pytest.approx(total, rel=1e-4), (group, epoch)


def test_merged_scalars_match_the_merged_validation(tiny_run, tiny_config):
    merged = scalars(os.path.join(tiny_run, "logs", "merged"))
    for tag in ("merged/p@1", "merged/p@3", "merged/p@5", "merged/ndcg@5",
                "merged/repetitions"):
        assert tag in merged, tag
    # group 0-1 merged 2 repetitions, group 2-3 merged itself with the 2 complete ones
    for r, count in ((0, 2), (2, 4)):
        marker = rundir.read_json(os.path.join(rundir.rep_dir(tiny_run, r), "COMPLETE.json"))
        steps = [merged_step(count, e) for e in range(1, marker["epochs"] + 1)]
        assert set(steps) <= set(merged["merged/p@1"]), (r, sorted(merged["merged/p@1"]))
        assert all(merged["merged/repetitions"][s] == count for s in steps)
        best = merged_step(count, marker["best_epoch"])
        for k in ("p@1", "p@5", "ndcg@5"):
            assert merged[f"merged/{k}"][best] == pytest.approx(
                marker["merged_validation"][k], abs=1e-6), (r, k)


def test_final_metrics_and_hparams_session(tiny_run, tiny_config):
    logdir = os.path.join(tiny_run, "logs", "merged")
    merged = scalars(logdir)
    final = final_validation(tiny_run)
    R = tiny_config.num_repetitions
    for k in ("p@1", "p@3", "p@5", "ndcg@5"):
        assert merged[f"final/{k}"] == {R: pytest.approx(final[k], abs=1e-6)}
    assert merged["final/train_seconds"][R] > 0
    # final = all R merged on the held-out points, computed here another way
    from mach_tf.inference.ranking import RankingMetrics
    from mach_tf.inference.scorer import MergedScorer
    from mach_tf.training.validation import DataSplit, load_sample, sample_budget

    info = rundir.read_json(os.path.join(tiny_run, "validation.json"))
    split = DataSplit(info["train"], info["valid"], info["fraction"], info["seed"])
    sample = load_sample(split, sample_budget(tiny_config))
    config, stacked = rundir.load_all(tiny_run)
    scorer = MergedScorer(config, stacked, "exact")
    want = RankingMetrics((1, 3, 5))
    for inputs, labels in sample.batches:
        want.update(scorer.topk(inputs, 5)[1].numpy(), labels)
    assert info["num_scored"] == sample.num_examples > 0
    for k in ("p@1", "p@5", "ndcg@5"):
        assert final[k] == pytest.approx(want.result()[k], abs=1e-6), k
    assert 0.0 < final["p@1"] <= 1.0
    acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    assert hp_metadata.SESSION_START_INFO_TAG in content
    info = hp_metadata.parse_session_start_info_plugin_data(
        content[hp_metadata.SESSION_START_INFO_TAG])
    values = {k: (v.number_value if v.HasField("number_value") else v.string_value)
              for k, v in info.hparams.items()}
    assert values["B"] == tiny_config.num_buckets and values["R"] == R
    assert values["hidden"] == "32" and values["loss"] == tiny_config.loss
    assert values["lr"] == pytest.approx(tiny_config.learning_rate)
    assert values["K"] == tiny_config.num_classes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: bytes | None = None):
    req = urllib.request.Request(url, data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read().decode())


@pytest.mark.slow
def test_tensorboard_server_serves_the_run(tiny_run, tmp_path):
    port = _free_port()
    log = open(tmp_path / "tensorboard.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", os.path.join(tiny_run, "logs"),
         "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
        stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        tags, deadline = {}, time.time() + 90
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "tensorboard.log").read_text()
            try:
                tags = _get(base + "/data/plugin/scalars/tags")
            except OSError:
                tags = {}
            if "merged" in tags and "rep-003" in tags:
                break
            time.sleep(0.5)
        assert {"rep-000", "rep-001", "rep-002", "rep-003", "merged"} <= set(tags), tags
        assert {"train/loss", "train/bucket_acc", "validation/loss",
                "validation/bucket_acc"} <= set(tags["rep-000"])
        assert {"merged/p@1", "merged/p@3", "merged/p@5", "merged/ndcg@5",
                "final/p@1"} <= set(tags["merged"])
        series = _get(base + "/data/plugin/scalars/scalars?run=merged&tag=final%2Fp%401")
        assert len(series) == 1 and 0.0 < series[0][2] <= 1.0
        exp = _get(base + "/data/plugin/hparams/experiment",
                   json.dumps({"experimentName": ""}).encode())
        names = {h["name"] for h in exp["hparamInfos"]}
        assert {"B", "R", "hidden", "lr", "batch"} <= names
        metrics = {m["name"]["tag"] for m in exp["metricInfos"]}
        assert {"final/p@1", "final/ndcg@5"} <= metrics
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_summaries_need_no_validation(tmp_path, tiny_data, tiny_config):
    """Without a validation split: per-repetition training scalars, no merged ones, and
    an HParams session without final metrics."""
    from mach_tf.launch.local import train

    run = str(tmp_path / "run")
    config = tiny_config.replace(num_repetitions=1, epochs=1, validation_fraction=0.0,
                                 early_stopping_patience=0)
    summary = train(run, tiny_data["train"], None, config, verbose=0, log=lambda m: None)
    assert "final_validation" not in summary
    tags = scalars(os.path.join(run, "logs", "rep-000"))
    assert set(tags) == {"train/loss", "train/bucket_acc"}
    merged = scalars(os.path.join(run, "logs", "merged"))
    assert set(merged) == {"final/train_seconds"}
    assert np.isfinite(tags["train/loss"][1])


def test_scheduler_workers_write_the_run_summary_once(tmp_path, tiny_data, tiny_config):
    """Workers started by a scheduler (here a Slurm array index) have no driver to write
    the run's final metrics and HParams session: the worker that completes the run does,
    exactly once."""
    from mach_tf.launch.report import summarize_if_complete
    from mach_tf.launch.worker import train_worker
    from mach_tf.rundir import SUMMARY_MARKER
    from tests.helpers import run_cli

    run = str(tmp_path / "run")
    config = tiny_config.replace(num_repetitions=2, group_size=1, epochs=1)
    rundir.ensure_config(run, config)
    logdir = os.path.join(run, "logs", "merged")
    train_worker(run, tiny_data["train"], None, config, 0, 2, verbose=0, log=lambda m: None)
    assert summarize_if_complete(run, config, 0, log=lambda m: None) is None  # 1 of 2 done
    assert not tf.io.gfile.exists(os.path.join(logdir, SUMMARY_MARKER))
    done = run_cli("train", "--train", tiny_data["train"], "--model-dir", run,
                   "--num-workers", "2", "--json",
                   env={"SLURM_ARRAY_TASK_ID": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])  # --json: the last stdout line
    assert out["trained"] == [1] and "final_validation" in out
    assert "wrote the run's final merged validation" in done.stderr
    final = final_validation(run)
    R = config.num_repetitions
    merged = scalars(logdir)
    assert merged["final/p@1"] == {R: pytest.approx(final["p@1"], abs=1e-6)}
    assert out["final_validation"]["p@1"] == pytest.approx(final["p@1"], abs=1e-4)
    acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    assert hp_metadata.SESSION_START_INFO_TAG in acc.PluginTagToContent(
        hp_metadata.PLUGIN_NAME)
    # Any later worker (a retried task, a rerun) leaves it alone.
    assert summarize_if_complete(run, config, 0, log=lambda m: None) is None
    assert scalars(logdir) == merged


def test_validation_scalars_are_the_kept_weights_loss(tiny_run, tiny_config):
    """The traced per-repetition validation gives the eager numbers, and the scalars
    logged at each repetition's kept epoch are its saved weights' loss and accuracy."""
    from mach_tf.training.tensorboard import traced_repetition_stats, validation_by_repetition
    from mach_tf.training.validation import DataSplit, load_sample, sample_budget

    split = DataSplit.from_dict(rundir.read_json(rundir.validation_path(tiny_run)))
    sample = load_sample(split, sample_budget(tiny_config), batch_size=40)
    assert len(sample.batches) > 1  # batches of different widths share one trace
    config, stacked = rundir.load_all(tiny_run)
    reps = list(range(config.num_repetitions))
    eager = validation_by_repetition(stacked, config, reps, sample)
    traced = validation_by_repetition(stacked, config, reps, sample,
                                      traced_repetition_stats(stacked, config, reps, sample))
    np.testing.assert_allclose(traced, eager, rtol=1e-5)
    for r in reps:
        kept = rundir.completion(tiny_run, r)["best_epoch"]
        tags = scalars(os.path.join(tiny_run, "logs", f"rep-{r:03d}"))
        assert tags["validation/loss"][kept] == pytest.approx(eager[0][r], rel=1e-4)
        assert tags["validation/bucket_acc"][kept] == pytest.approx(eager[1][r], abs=1e-6)


def test_epoch_tensorboard_writes_what_keras_writes_per_epoch(tmp_path):
    """The group's TensorBoard callback skips Keras' per-batch summary calls (no writer
    is active for them when only epochs are recorded) and writes the same epoch
    summaries as Keras' own callback."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 1))).astype(np.float32)
    written = {}
    for name, callback in (("ours", EpochTensorBoard(str(tmp_path / "ours"))),
                           ("keras", keras.callbacks.TensorBoard(
                               str(tmp_path / "keras"), write_graph=False, profile_batch=0))):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False,
                  callbacks=[callback])
        written[name] = scalars(str(tmp_path / name / "train"))
    assert set(written["ours"]) == set(written["keras"]) and "epoch_loss" in written["ours"]
    for tag, values in written["keras"].items():
        assert written["ours"][tag].keys() == values.keys()
        for step, value in values.items():
            assert written["ours"][tag][step] == pytest.approx(value, rel=1e-6)
