"""Export refuses runs it cannot stitch faithfully, saying which repetitions and why, and
writes nothing."""

import os
import shutil

import pytest

from export.stitch import export_model
from mach_tf import rundir
from mach_tf.launch.worker import train_worker
from tests.helpers import run_cli


def quiet(msg):
    pass


@pytest.fixture
def run_copy(tmp_path, tiny_run):
    """A private copy of the trained tiny run, free to damage."""
    dst = str(tmp_path / "run")
    shutil.copytree(tiny_run, dst)
    return dst


def refused(run, tmp_path, match):
    base = tmp_path / "serving" / "mach"
    with pytest.raises(rundir.RunDirError, match=match):
        export_model(run, str(base))
    assert not base.exists() or os.listdir(base) == []


def test_missing_repetitions(run_copy, tmp_path):
    shutil.rmtree(rundir.rep_dir(run_copy, 2))
    refused(run_copy, tmp_path, r"repetitions \[2\] of 4 are missing \(never trained\)")


def test_unfinished_repetitions(run_copy, tmp_path):
    os.remove(os.path.join(rundir.rep_dir(run_copy, 1), rundir.COMPLETE))
    # a group whose training started (checkpoint state) but never saved
    shutil.rmtree(rundir.rep_dir(run_copy, 3))
    os.makedirs(os.path.join(run_copy, "work", "group-003", "checkpoint"))
    refused(run_copy, tmp_path, r"repetitions \[1, 3\] of 4 are unfinished")


def test_missing_and_unfinished_are_told_apart(run_copy, tmp_path):
    shutil.rmtree(rundir.rep_dir(run_copy, 0))
    os.remove(os.path.join(rundir.rep_dir(run_copy, 2), rundir.MODEL))
    refused(run_copy, tmp_path, r"repetitions \[0\] of 4 are missing .* and repetitions \[2\] "
                                r"of 4 are unfinished")


@pytest.fixture(scope="module")
def foreign_runs(tmp_path_factory, tiny_data, tiny_config):
    """Repetition 0 trained for four other runs, each differing from the tiny run in one
    field of its config."""
    runs = {}
    for field, value in (("num_classes", 70), ("num_buckets", 32), ("seed", 2),
                         ("num_features", 310)):
        run = str(tmp_path_factory.mktemp("foreign") / field)
        train_worker(run, tiny_data["train"], None, tiny_config.replace(**{field: value}),
                     worker_index=0, num_workers=4, verbose=0, log=quiet)
        runs[field] = (run, value)
    return runs


@pytest.mark.parametrize("field, extra", [
    ("num_classes", None),
    ("num_buckets", "hash coefficients differ"),
    ("seed", "hash coefficients differ"),
    ("num_features", None),
])
def test_repetition_of_another_run_copied_in(run_copy, tmp_path, tiny_config, foreign_runs,
                                             field, extra):
    other, value = foreign_runs[field]
    target = rundir.rep_dir(run_copy, 0)
    shutil.rmtree(target)
    shutil.copytree(rundir.rep_dir(other, 0), target)
    ours = getattr(tiny_config, field)
    with pytest.raises(rundir.RunDirError) as err:
        export_model(run_copy, str(tmp_path / "m"))
    message = str(err.value)
    assert "repetition 0 was not trained for this run" in message
    assert f"{field} {value!r} (this run: {ours!r})" in message
    if extra:
        assert extra in message
    assert not (tmp_path / "m").exists()


def test_model_file_swapped_under_a_good_marker(run_copy, tmp_path, foreign_runs):
    """The marker is this run's, the model file another run's (other seed)."""
    other, _ = foreign_runs["seed"]
    shutil.copy(os.path.join(rundir.rep_dir(other, 0), rundir.MODEL),
                os.path.join(rundir.rep_dir(run_copy, 0), rundir.MODEL))
    refused(run_copy, tmp_path, "the model's initialisation seed is")


def test_repetition_directory_of_another_repetition(run_copy, tmp_path):
    shutil.rmtree(rundir.rep_dir(run_copy, 0))
    shutil.copytree(rundir.rep_dir(run_copy, 1), rundir.rep_dir(run_copy, 0))
    refused(run_copy, tmp_path, r"repetition 0 was not trained .*COMPLETE.json is for "
                                r"repetition 1")


def test_damaged_model_file(run_copy, tmp_path):
    with open(os.path.join(rundir.rep_dir(run_copy, 2), rundir.MODEL), "wb") as f:
        f.write(b"not a keras archive")
    refused(run_copy, tmp_path, r"model.keras: cannot load repetition 2")


def test_cli_refusal_is_one_line(run_copy, tmp_path):
    os.remove(os.path.join(rundir.rep_dir(run_copy, 3), rundir.COMPLETE))
    res = run_cli("export", "--model-dir", run_copy, "--output", tmp_path / "m")
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if "repetitions" in ln]
    assert len(lines) == 1 and "repetitions [3] of 4 are unfinished" in lines[0]
    assert "Traceback" not in res.stderr
