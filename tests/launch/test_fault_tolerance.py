"""A worker killed with SIGKILL mid-repetition resumes from its step checkpoint, and the
claims that keep two live workers off the same repetition."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mach_tf import rundir
from mach_tf.launch import claims
from mach_tf.launch.worker import train_worker
from mach_tf.rundir import group_name
from mach_tf.training.checkpoint import GroupCheckpoint
from tests.helpers import ROOT


def quiet(msg):
    pass


@pytest.fixture(scope="module")
def long_config(tiny_config):
    # 2 repetitions in one group, 12 epochs of 12 steps (10% of the points held out for the
    # merged validation): long enough to be killed midway. No early stopping, so both runs
    # train every epoch.
    return tiny_config.replace(num_repetitions=2, group_size=2, epochs=12,
                               early_stopping_patience=0)


def _checkpoint_state(run, group):
    return GroupCheckpoint(os.path.join(run, "work", group_name(group), "checkpoint")).state()


def test_sigkilled_worker_resumes_from_its_checkpoint(tmp_path, tiny_data, long_config):
    from mach_tf.inference.evaluation import evaluate

    run = str(tmp_path / "run")
    rundir.ensure_config(run, long_config)
    cmd = [sys.executable, "-m", "mach_tf", "train", "--train", tiny_data["train"],
           "--model-dir", run, "--checkpoint-every", "5", "--threads", "1"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        state, deadline = None, time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            state = _checkpoint_state(run, [0, 1])
            if state and state["global_step"] >= 40:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGSTOP)  # freeze it, look, then kill it
        state = _checkpoint_state(run, [0, 1])
        assert proc.poll() is None and state and not state["finished"], \
            "the worker finished before it could be killed mid-repetition"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not any(rundir.is_complete(run, r) for r in range(2))
    killed_at = state["global_step"]
    # the dead worker's claim is still there, unreleased
    assert claims.current_holder(rundir.rep_dir(run, 0)) is None  # dead on this host
    assert not json.loads(open(os.path.join(rundir.rep_dir(run, 0), "claims",
                                            "claim-000001.json")).read())["released"]

    # the rerun: same command, resumes
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming at epoch" in done.stderr
    for r in range(2):
        marker = rundir.completion(run, r)
        steps = marker["steps_per_epoch"]
        total = long_config.epochs * steps
        resumed = marker["resumed_from"]
        assert resumed is not None and resumed["global_step"] >= killed_at
        assert resumed["global_step"] == resumed["epoch"] * steps + resumed["step"]
        # only the remaining steps ran, and the optimizer continued its count
        assert marker["steps_run"] == total - resumed["global_step"] < total
        assert marker["optimizer_iterations"] == total
        assert marker["epochs"] == long_config.epochs  # history kept across the kill
    took = json.loads(open(os.path.join(rundir.rep_dir(run, 0), "claims",
                                        "claim-000002.json")).read())["took_over"]
    assert took["owner"]["pid"] == proc.pid

    # the same evaluation as an uninterrupted run, within tolerance
    ref = str(tmp_path / "ref")
    train_worker(ref, tiny_data["train"], None, long_config, 0, 1, verbose=0, log=quiet)
    a = evaluate(run, tiny_data["test"])
    b = evaluate(ref, tiny_data["test"])
    assert abs(a["p@1"] - b["p@1"]) <= 0.02 and abs(a["p@5"] - b["p@5"]) <= 0.02
    assert rundir.completion(ref, 0)["resumed_from"] is None
    # the resumed weights are the uninterrupted ones up to float rounding
    _, m1 = rundir.load_all(run)
    _, m2 = rundir.load_all(ref)
    for w1, w2 in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_allclose(w1, w2, atol=2e-3)


# -- claims --------------------------------------------------------------------------------
def _owner(worker=0):
    return claims.Owner.this_process(worker)  # a new token: another owner in this process


def test_a_live_claim_keeps_others_out_until_released(tmp_path):
    d = str(tmp_path / "rep-000")
    a, b = _owner(0), _owner(1)
    ca = claims.try_acquire(d, a, lease_s=60)
    assert ca is not None and ca.gen == 1 and ca.held()
    assert claims.try_acquire(d, b, lease_s=60) is None
    assert claims.current_holder(d)["owner"]["token"] == a.token
    assert ca.renew()
    ca.release()
    cb = claims.try_acquire(d, b, lease_s=60)
    assert cb is not None and cb.gen == 2 and cb.took_over is None  # released, not taken


def test_expired_claim_is_taken_over_and_its_holder_fenced(tmp_path):
    d = str(tmp_path / "rep-000")
    old = claims.ClaimSet.acquire([d], _owner(0), lease_s=0.4)
    old._stop.set()  # this holder stops renewing, as a hung or partitioned worker would
    old.check()
    time.sleep(0.6)
    new = claims.try_acquire(d, _owner(1), lease_s=60)
    assert new is not None and new.gen == 2 and new.took_over["generation"] == 1
    with pytest.raises(claims.ClaimLost, match="taken over"):
        old.check()
    assert not old.claims[0].renew()  # the old holder writes nothing once fenced
    assert claims.current_holder(d)["owner"]["token"] == new.owner.token


def test_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    d = str(tmp_path / "rep-000")
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = claims.Owner.this_process(0)
    import psutil

    dead = claims.Owner(dead.host, dead.boot, p.pid, psutil.Process(p.pid).create_time(),
                        "deadbeef0000", 0)
    assert claims.try_acquire(d, dead, lease_s=3600) is not None
    assert claims.try_acquire(d, _owner(1), lease_s=3600) is None  # alive: kept out
    p.kill()
    p.wait()
    c = claims.try_acquire(d, _owner(1), lease_s=3600)
    assert c is not None and c.took_over["owner"]["pid"] == p.pid


def test_racing_workers_get_one_claim(tmp_path):
    d = str(tmp_path / "rep-000")
    owners = [_owner(i) for i in range(8)]
    barrier = threading.Barrier(len(owners))
    won = []

    def race(o):
        barrier.wait()
        if claims.try_acquire(d, o, lease_s=60) is not None:
            won.append(o.token)

    threads = [threading.Thread(target=race, args=(o,)) for o in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert sorted(os.listdir(os.path.join(d, "claims"))) == ["claim-000001.json"]


def test_worker_leaves_a_claimed_repetition_to_its_holder(tmp_path, tiny_data, tiny_config):
    """Two workers given the same repetitions (e.g. a restarted pod while the old one
    still runs): the second trains only what is not claimed and waits for the rest."""
    config = tiny_config.replace(num_repetitions=2, group_size=1, epochs=1)
    run = str(tmp_path / "run")
    rundir.ensure_config(run, config)
    other = claims.ClaimSet.acquire([rundir.rep_dir(run, 1)], _owner(5), lease_s=30)
    result = {}
    t = threading.Thread(target=lambda: result.update(report=train_worker(
        run, tiny_data["train"], None, None, 0, 1, verbose=0, log=quiet, claim_lease=4)))
    t.start()
    deadline = time.time() + 120
    while not rundir.is_complete(run, 0) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    assert rundir.is_complete(run, 0) and not rundir.is_complete(run, 1) and t.is_alive()
    other.release()  # the holder gives up without finishing: the waiting worker takes it
    t.join(timeout=120)
    report = result["report"]
    assert report.trained == [0, 1] and not report.failed
    assert rundir.completion(run, 1)["worker"] == 0


def test_run_directory_on_a_gfile_filesystem_trains_resumes_and_loads(tiny_data,
                                                                      tiny_config):
    """Data and run directory on TensorFlow's ram:// filesystem: nothing may go through
    os.* (checkpoints, claims, markers, models, logs all use tf.io.gfile / Keras)."""
    import tensorflow as tf

    data = "ram://ft-data/"
    for f in tf.io.gfile.glob(tiny_data["train"] + "*"):
        tf.io.gfile.copy(f, data + os.path.basename(f), overwrite=True)
    run = "ram://ft-run"
    config = tiny_config.replace(num_repetitions=2, group_size=2, epochs=4)

    class Crash(Exception):
        pass

    def crash_after_epoch_2(event):  # the worker dies after its epoch-2 checkpoint
        if event.get("event") == "epoch" and event["epoch"] == 2:
            raise Crash()

    with pytest.raises(Crash):
        train_worker(run, data + "train", None, config, 0, 1, verbose=0, log=quiet,
                     checkpoint_every=3, events=crash_after_epoch_2)
    assert _checkpoint_state(run, [0, 1])["epoch"] == 2
    report = train_worker(run, data + "train", None, None, 0, 1, verbose=0, log=quiet,
                          checkpoint_every=3)
    assert report.trained == [0, 1]
    marker = rundir.completion(run, 0)
    spe = marker["steps_per_epoch"]  # 12: 10% of the points are held out for validation
    assert marker["resumed_from"] == {"epoch": 2, "step": 0, "global_step": 2 * spe}
    assert marker["steps_run"] == 2 * spe and marker["optimizer_iterations"] == 4 * spe
    assert rundir.load_all(run)[1].repetitions == [0, 1]
    assert not tf.io.gfile.exists(os.path.join(run, "work", group_name([0, 1])))


def test_worker_dying_between_writes_trains_nothing_again(tmp_path, tiny_data, tiny_config):
    """Killed after its group finished training and after writing one of the group's
    repetitions: the rerun writes the other from the finished checkpoint, training no
    step, and leaves the written one alone."""
    run = str(tmp_path / "run")
    config = tiny_config.replace(num_repetitions=2, group_size=2, epochs=2)

    class Crash(Exception):
        pass

    def crash_after_rep_0(event):
        if event.get("event") == "rep_complete" and event["rep"] == 0:
            raise Crash()

    with pytest.raises(Crash):
        train_worker(run, tiny_data["train"], None, config, 0, 1, verbose=0, log=quiet,
                     events=crash_after_rep_0)
    assert rundir.is_complete(run, 0) and not rundir.is_complete(run, 1)
    first = rundir.completion(run, 0)
    report = train_worker(run, tiny_data["train"], None, None, 0, 1, verbose=0, log=quiet)
    assert report.skipped == [0] and report.trained == [1]
    marker = rundir.completion(run, 1)
    assert marker["steps_run"] == 0 and marker["resumed_from"]["epoch"] == 2
    assert marker["optimizer_iterations"] == 2 * marker["steps_per_epoch"]
    assert rundir.completion(run, 0) == first


def test_torn_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_config):
    """A checkpoint file damaged after its pointer was written (storage fault): the
    previous checkpoint is restored, with its own position and history."""
    from mach_tf.model.network import build_model, compile_model

    config = tiny_config.replace(num_repetitions=1, group_size=1)
    model = compile_model(build_model(config, [0]), config)
    model.optimizer.build(model.trainable_variables)
    ckpt = GroupCheckpoint(str(tmp_path / "checkpoint"))
    first = [np.array(w) for w in model.get_weights()]
    ckpt.save(model, epoch=1, step=0, global_step=13, steps_per_epoch=13,
              history={"loss": [2.0]})
    model.set_weights([w + 1.0 for w in first])
    state = ckpt.save(model, epoch=1, step=5, global_step=18, steps_per_epoch=13,
                      history={"loss": [2.0]})
    assert state["previous"] == "ckpt-000000013.weights.h5"
    with open(tmp_path / "checkpoint" / state["weights"], "wb") as f:
        f.write(b"torn")
    fresh = compile_model(build_model(config, [0]), config)
    restored = ckpt.restore(fresh)
    assert (restored["epoch"], restored["step"], restored["global_step"]) == (1, 0, 13)
    for a, b in zip(fresh.get_weights(), first):
        np.testing.assert_array_equal(a, b)


def test_a_finished_checkpoint_holds_the_weights_without_the_optimizer_state(tmp_path,
                                                                             tiny_config):
    """A finished group never trains again: its checkpoint is the model's weights alone
    (a third of a checkpoint with both Adam moments), with the optimizer's step count in
    ``checkpoint.json``; restored, it gives those weights, and a torn one falls back to
    the step checkpoint before it."""
    from mach_tf.model.network import build_model, compile_model

    config = tiny_config.replace(num_repetitions=1, group_size=1)
    model = compile_model(build_model(config, [0]), config)
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(26)
    directory = tmp_path / "checkpoint"
    ckpt = GroupCheckpoint(str(directory))
    first = [np.array(w) for w in model.get_weights()]
    ckpt.save(model, epoch=1, step=0, global_step=13, steps_per_epoch=13,
              history={"loss": [2.0]})
    last = [w + 1.0 for w in first]
    model.set_weights(last)
    state = ckpt.save(model, epoch=2, step=0, global_step=26, steps_per_epoch=13,
                      history={"loss": [2.0, 1.5]}, finished=True)
    assert state["weights"] == "final-000000026.weights.npz" and state["finished"]
    assert state["previous"] == "ckpt-000000013.weights.h5"
    assert state["optimizer_iterations"] == 26
    sizes = {name: os.path.getsize(directory / name) for name in os.listdir(directory)
             if name.endswith((".h5", ".npz"))}
    assert set(sizes) == {state["weights"], state["previous"]}
    assert sizes[state["weights"]] * 2 < sizes[state["previous"]]  # no Adam moments

    fresh = compile_model(build_model(config, [0]), config)
    restored = ckpt.restore(fresh)
    assert restored["finished"] and restored["global_step"] == 26
    for a, b in zip(fresh.get_weights(), last):
        np.testing.assert_array_equal(a, b)

    with open(directory / state["weights"], "wb") as f:
        f.write(b"torn")
    fresh = compile_model(build_model(config, [0]), config)
    restored = ckpt.restore(fresh)
    assert (restored["epoch"], restored["global_step"], restored["finished"]) == (1, 13, False)
    for a, b in zip(fresh.get_weights(), first):
        np.testing.assert_array_equal(a, b)
