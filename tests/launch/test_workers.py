"""Per-worker training: sharding, skipping finished repetitions, refusing mixed runs."""

import json
import os

import pytest

from mach_tf import rundir
from mach_tf.launch.identity import assigned_repetitions, worker_identity
from mach_tf.launch.worker import train_worker


def quiet(msg):
    pass


@pytest.fixture
def fast_config(tiny_config):
    return tiny_config.replace(epochs=1)


def test_two_workers_train_each_repetition_exactly_once(tmp_path, tiny_data, fast_config):
    run = str(tmp_path / "run")
    reports = [train_worker(run, tiny_data["train"], None, fast_config, i, 2, verbose=0,
                            log=quiet) for i in range(2)]
    assert reports[0].trained == [0, 2] and reports[1].trained == [1, 3]
    for r in range(fast_config.num_repetitions):
        marker = rundir.completion(run, r)
        assert marker["repetition"] == r and marker["worker"] == r % 2
        assert marker["hashing"] == fast_config.hash_family.subset([r]).to_dict()
    # the run is whole: all repetitions load and stack in order
    config, model = rundir.load_all(run)
    assert model.repetitions == [0, 1, 2, 3] and config == fast_config


def test_rerun_skips_finished_repetitions(tmp_path, tiny_data, fast_config):
    run = str(tmp_path / "run")
    train_worker(run, tiny_data["train"], None, fast_config, 0, 2, verbose=0, log=quiet)
    model_path = os.path.join(rundir.rep_dir(run, 0), rundir.MODEL)
    before = os.stat(model_path).st_mtime_ns
    # a full single-worker rerun trains only what worker 0 did not
    report = train_worker(run, tiny_data["train"], None, None, 0, 1, verbose=0, log=quiet)
    assert report.skipped == [0, 2] and report.trained == [1, 3]
    assert os.stat(model_path).st_mtime_ns == before
    again = train_worker(run, tiny_data["train"], None, None, 0, 1, verbose=0, log=quiet)
    assert again.trained == [] and again.skipped == [0, 1, 2, 3]


def test_rerun_with_other_config_is_refused(tmp_path, tiny_data, fast_config):
    run = str(tmp_path / "run")
    rundir.ensure_config(run, fast_config)
    with pytest.raises(rundir.RunDirError, match="different config.*num_buckets"):
        train_worker(run, tiny_data["train"], None, fast_config.replace(num_buckets=32), 0, 1,
                     verbose=0, log=quiet)


def test_data_beyond_config_is_refused_before_training(tmp_path, tiny_data, fast_config):
    run = str(tmp_path / "run")
    small = fast_config.replace(num_classes=10)
    with pytest.raises(rundir.RunDirError, match="beyond the run's config"):
        train_worker(run, tiny_data["train"], None, small, 0, 1, verbose=0, log=quiet)
    assert not any(rundir.is_complete(run, r) for r in range(small.num_repetitions))


def test_export_refuses_unfinished_run(tmp_path, tiny_data, fast_config):
    run = str(tmp_path / "run")
    train_worker(run, tiny_data["train"], None, fast_config, 1, 2, verbose=0, log=quiet)
    with pytest.raises(rundir.RunDirError, match=r"repetitions \[0, 2\] of 4 are missing"):
        rundir.load_all(run)


def test_assignment():
    assert assigned_repetitions(7, 1, 3) == [1, 4]
    covered = sorted(r for i in range(3) for r in assigned_repetitions(7, i, 3))
    assert covered == list(range(7))


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1)),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:1", "c:1"]},
                               "task": {"type": "worker", "index": 2}})}, (2, 3)),
    ({"JOB_COMPLETION_INDEX": "1", "MACH_TF_NUM_WORKERS": "4"}, (1, 4)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4",
      "SLURM_ARRAY_TASK_COUNT": "3"}, (1, 3)),
])
def test_worker_identity_from_schedulers(env, expected):
    assert worker_identity(env=env) == expected


def test_worker_identity_arguments_win_and_are_checked():
    assert worker_identity(1, 2, env={"SLURM_ARRAY_TASK_ID": "0"}) == (1, 2)
    with pytest.raises(ValueError, match="outside"):
        worker_identity(3, 2, env={})


def test_callbacks_reach_every_group_fit(tmp_path, tiny_data, fast_config):
    """Callbacks given to ``train`` run in every group's ``fit`` (the benchmarks' step
    timer), after the training's own; they cannot reach worker processes."""
    import keras

    from mach_tf.launch.local import train
    from mach_tf.training.validation import data_split, steps_per_epoch

    class Count(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.fits = []

        def on_train_begin(self, logs=None):
            self.fits.append([self.model.repetitions, 0])

        def on_train_batch_end(self, batch, logs=None):
            self.fits[-1][1] += 1

    count = Count()
    run = str(tmp_path / "run")
    summary = train(run, tiny_data["train"], None, fast_config, workers=1, verbose=0,
                    log=quiet, callbacks=[count])
    assert summary["complete"] == fast_config.num_repetitions
    steps = steps_per_epoch(data_split(fast_config, tiny_data["train"]),
                            fast_config.batch_size)
    assert count.fits == [[[0, 1], steps], [[2, 3], steps]]
    with pytest.raises(ValueError, match="workers=1"):
        train(str(tmp_path / "run2"), tiny_data["train"], None, fast_config, workers=2,
              callbacks=[count])
