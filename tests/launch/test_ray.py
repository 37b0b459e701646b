"""The Ray launcher on a real local Ray runtime (one per module: Ray starts slowly)."""

import json
import os
import shutil
import signal
import threading
import time

import pytest

from mach_tf import rundir
from mach_tf.rundir import group_name
from mach_tf.training.checkpoint import GroupCheckpoint
from tests.helpers import run_cli

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield
    ray.shutdown()


def test_two_ray_workers_train_then_export_and_rerun_skips(tmp_path, tiny_data,
                                                           tiny_config, ray_runtime):
    import tensorflow as tf

    from export.stitch import export_model
    from mach_tf.launch.ray_launcher import train_ray

    run = str(tmp_path / "run")
    lines = []
    summary = train_ray(run, tiny_data["train"], None, tiny_config, num_workers=2,
                        log=lines.append)
    assert summary["launcher"] == "ray" and summary["failed"] == {}
    assert summary["trained"] == [0, 1, 2, 3] and summary["complete"] == 4
    assert summary["attempts"] == {"0": 1, "1": 1} and summary["threads_per_worker"] == 1
    for r in range(4):
        assert rundir.completion(run, r)["worker"] == r % 2  # worker i trained r % 2 == i
    # progress came from the workers while they ran: epochs and each written repetition
    assert any("epoch 3/3" in ln for ln in lines)
    assert any("(4/4 complete)" in ln for ln in lines)
    # TensorBoard: the workers' per-repetition event files, the driver's final summary
    for r in range(4):
        assert any(f.startswith("events.out.tfevents.")
                   for f in os.listdir(os.path.join(run, "logs", f"rep-{r:03d}")))
    assert 0.0 < summary["final_validation"]["p@1"] <= 1.0

    res = export_model(run, str(tmp_path / "serving" / "mach"), top_k=5, decoder="exact")
    assert res.verified_queries > 0  # loaded back and checked against in-Python scoring
    loaded = tf.saved_model.load(res.path)
    out = loaded.signatures["serving_default"](
        feature_ids=tf.constant([[1, 5, -1]], tf.int64),
        feature_values=tf.constant([[1.0, 0.5, 0.0]], tf.float32))
    assert out["label_ids"].shape == (1, 5)

    # a rerun with Ray trains only what is missing and leaves finished repetitions untouched
    shutil.rmtree(rundir.rep_dir(run, 3))  # as if worker 1 had died before writing it
    before = {r: os.stat(os.path.join(rundir.rep_dir(run, r), rundir.MODEL)).st_mtime_ns
              for r in range(3)}
    markers = {r: rundir.completion(run, r) for r in range(3)}
    again = train_ray(run, tiny_data["train"], None, None, num_workers=2, log=lines.append)
    assert again["trained"] == [3] and again["skipped"] == [0, 1, 2]
    assert again["attempts"] == {"0": 0, "1": 1}  # worker 0 had nothing to do: not started
    for r in range(3):
        path = os.path.join(rundir.rep_dir(run, r), rundir.MODEL)
        assert os.stat(path).st_mtime_ns == before[r]
        assert rundir.completion(run, r) == markers[r]
    assert rundir.completion(run, 3)["group"] == [3]  # trained alone, rep 1 not again
    done = train_ray(run, tiny_data["train"], None, None, num_workers=2, log=lines.append)
    assert done["trained"] == [] and done["skipped"] == [0, 1, 2, 3]


def test_ray_launcher_refuses_a_different_config(tmp_path, tiny_data, tiny_config,
                                                 ray_runtime):
    from mach_tf.launch.ray_launcher import train_ray

    run = str(tmp_path / "run")
    rundir.ensure_config(run, tiny_config)
    with pytest.raises(rundir.RunDirError, match="different config.*num_buckets"):
        train_ray(run, tiny_data["train"], None, tiny_config.replace(num_buckets=32),
                  num_workers=2, log=lambda m: None)
    assert not os.path.exists(rundir.rep_dir(run, 0))  # no worker started


def test_cli_ray_launcher_refuses_a_different_config(tmp_path, tiny_data, tiny_config):
    run = str(tmp_path / "run")
    rundir.ensure_config(run, tiny_config)
    p = run_cli("train", "--launcher", "ray", "--num-workers", "2", "--train",
                tiny_data["train"], "--model-dir", run, "--buckets", "32")
    assert p.returncode == 1
    assert "different config" in p.stderr and "num_buckets" in p.stderr
    assert "Traceback" not in p.stderr


def test_ray_retries_a_killed_worker_which_resumes(tmp_path, tiny_data, tiny_config,
                                                   ray_runtime):
    """Worker 0's process is SIGKILLed mid-repetition: Ray runs the task again, the new
    process takes over the dead one's claim and resumes from the step checkpoint."""
    config = tiny_config.replace(num_repetitions=2, group_size=1, epochs=6)
    run = str(tmp_path / "run")
    rundir.ensure_config(run, config)
    claim = os.path.join(rundir.rep_dir(run, 0), "claims", "claim-000001.json")
    ckpt = GroupCheckpoint(os.path.join(run, "work", group_name([0]), "checkpoint"))
    killed = {}

    def kill_worker_0():
        deadline = time.time() + 240
        while time.time() < deadline:
            state = ckpt.state() if os.path.exists(claim) else None
            if state and state["global_step"] >= 30 and not state["finished"]:
                pid = rundir.read_json(claim)["owner"]["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.update(pid=pid, step=state["global_step"])
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_worker_0)
    killer.start()
    # the real command, as a driver joining the running Ray cluster
    address = ray.get_runtime_context().gcs_address
    p = run_cli("train", "--launcher", "ray", "--ray-address", address, "--num-workers", "2",
                "--max-retries", "2", "--checkpoint-every", "5", "--train", tiny_data["train"],
                "--model-dir", run, "--json")
    killer.join()
    assert p.returncode == 0, p.stderr[-3000:]
    assert killed, "worker 0 finished before it could be killed"
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["failed"] == {} and summary["complete"] == 2
    assert summary["attempts"] == {"0": 2, "1": 1}
    assert "[worker 0/2] started (pid" in p.stderr and "attempt 2" in p.stderr
    assert "took over rep-000" in p.stderr and "(2/2 complete)" in p.stderr
    marker = rundir.completion(run, 0)
    assert marker["resumed_from"]["global_step"] >= killed["step"]
    assert marker["optimizer_iterations"] == config.epochs * marker["steps_per_epoch"]
    assert marker["steps_run"] < config.epochs * marker["steps_per_epoch"]
    assert rundir.completion(run, 1)["resumed_from"] is None  # worker 1 was not disturbed
