"""Training and the run directory under faults: data beyond the run's config is refused
before training, a diverging repetition group fails alone and leaves no completion marker,
and interrupted writes (config, models, markers, checkpoints, exports) never leave a file a
later step takes for complete."""

import json
import os
import re
import shutil

import keras
import pytest

import mach_tf.training.group as model_lib
from export import stitch
from mach_tf import rundir
from mach_tf.inference.evaluation import evaluate, resolve_export
from mach_tf.launch.worker import train_worker
from mach_tf.training.group import train_group
from tests.helpers import run_cli
from tfrecords_tools import atomic
from tfrecords_tools.convert import convert


def quiet(msg):
    pass


def reheadered(tmp_path, txt, name, features=0, labels=0):
    """``txt`` converted with a header declaring ``features``/``labels`` more."""
    head, body = open(txt).read().split("\n", 1)
    n, d, k = (int(x) for x in head.split())
    src = tmp_path / f"{name}.txt"
    src.write_text(f"{n} {d + features} {k + labels}\n{body}")
    prefix = str(tmp_path / name)
    convert(str(src), prefix)
    return prefix


# -- data beyond the run's config --------------------------------------------------------
def test_data_with_larger_dimensions_is_refused_before_training(tmp_path, tiny_data,
                                                                tiny_config, tiny_run,
                                                                tiny_export):
    wide = reheadered(tmp_path, tiny_data["train_txt"], "wide", features=100)
    more = reheadered(tmp_path, tiny_data["train_txt"], "more", labels=1)
    run = str(tmp_path / "run")
    config = tiny_config.replace(epochs=1)
    cases = [(wide, None, f"{wide}.manifest.json: training data has num_features=400, beyond "
                          f"the run's config (num_features=300)"),
             (more, None, f"{more}.manifest.json: training data has num_labels=61, beyond "
                          f"the run's config (num_classes=60)"),
             (tiny_data["train"], more, f"{more}.manifest.json: validation data has "
                                        f"num_labels=61")]
    for train, valid, message in cases:
        with pytest.raises(rundir.RunDirError) as info:
            train_worker(run, train, valid, config, 0, 1, verbose=0, log=quiet)
        assert str(info.value).startswith(message), str(info.value)
        assert sorted(os.listdir(run)) == [rundir.CONFIG]  # nothing trained, nothing counted
    for model in (tiny_run, tiny_export[0]):
        with pytest.raises(rundir.RunDirError, match=re.escape(
                f"{wide}.manifest.json: test data has num_features=400")):
            evaluate(model, wide)


def test_empty_training_data_is_refused(tmp_path, tiny_config):
    src = tmp_path / "empty.txt"
    src.write_text("0 300 60\n")
    convert(str(src), str(tmp_path / "empty"))
    with pytest.raises(rundir.RunDirError,
                       match="empty.manifest.json: training data has no examples"):
        train_worker(str(tmp_path / "run"), str(tmp_path / "empty"), None, tiny_config, 0, 1,
                     verbose=0, log=quiet)


# -- a diverging repetition group --------------------------------------------------------
def test_diverging_group_fails_alone(tmp_path, tiny_data, tiny_config, monkeypatch):
    """Real training where repetitions 0 and 1 get a learning rate of 1e30: their group
    diverges, is reported and gets no marker; the worker's next group trains normally."""
    real = model_lib.compile_model

    def compile_diverging(model, config, *args, **kwargs):
        if 0 in model.repetitions:
            config = config.replace(learning_rate=1e30)
        return real(model, config, *args, **kwargs)

    monkeypatch.setattr(model_lib, "compile_model", compile_diverging)
    run = str(tmp_path / "run")
    lines = []
    report = train_worker(run, tiny_data["train"], None, tiny_config.replace(epochs=1), 0, 1,
                          verbose=0, log=lines.append)
    assert sorted(report.failed) == [0, 1] and report.trained == [2, 3]
    for r in (0, 1):
        assert re.match(r"training loss became (nan|inf) at epoch 1, batch \d+: training "
                        r"diverged \(lower the learning rate", report.failed[r])
        assert not rundir.is_complete(run, r)
        assert not os.path.exists(os.path.join(rundir.rep_dir(run, r), rundir.COMPLETE))
    assert all(rundir.is_complete(run, r) for r in (2, 3))
    assert any(line.startswith("[worker 0/1] repetitions [0, 1] FAILED: training loss became")
               for line in lines)
    with pytest.raises(rundir.RunDirError,
                       match=r"repetitions \[0, 1\] of 4 are (missing|unfinished)"):
        rundir.load_all(run)


def test_cli_diverging_training_exits_1_with_one_line(tmp_path, tiny_data):
    run = tmp_path / "run"
    res = run_cli("train", "--train", tiny_data["train"], "--model-dir", run, "--buckets", 8,
                  "--repetitions", 2, "--hidden", 16, "--epochs", 1, "--batch-size", 64,
                  "--learning-rate", 1e30, "--json")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"mach-tf train: error: repetitions \[0, 1\] failed: training loss "
                        r"became (nan|inf) at epoch 1, batch \d+: training diverged \(lower the "
                        r"learning rate, now 1e\+30, or look for extreme feature values\)", last)
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert sorted(summary["failed"]) == ["0", "1"] and summary["complete"] == 0
    assert not [p for p, _, files in os.walk(run) if rundir.COMPLETE in files]


# -- interrupted writes in the run directory ---------------------------------------------
def refuse_publish(monkeypatch, suffix):
    real = atomic.publish

    def publish(tmp, path, overwrite=True):
        if path.endswith(suffix):
            raise OSError(f"killed while publishing {path} (injected)")
        real(tmp, path, overwrite)

    monkeypatch.setattr(atomic, "publish", publish)


def test_interrupted_config_write_leaves_no_config(tmp_path, tiny_config, monkeypatch):
    run = str(tmp_path / "run")
    refuse_publish(monkeypatch, rundir.CONFIG)
    with pytest.raises(OSError, match="injected"):
        rundir.ensure_config(run, tiny_config)
    assert os.listdir(run) == []
    with pytest.raises(rundir.RunDirError, match="not a run directory"):
        rundir.load_config(run)


def test_interrupted_repetition_save_is_not_complete(tmp_path, tiny_run, tiny_config,
                                                     monkeypatch):
    run = str(tmp_path / "run")
    rundir.ensure_config(run, tiny_config)
    single = rundir.load_repetition(tiny_run, 0)
    d = rundir.rep_dir(run, 0)
    marker = {"repetition": 0}

    with monkeypatch.context() as m:  # the model file is written but never renamed
        refuse_publish(m, rundir.MODEL)
        with pytest.raises(OSError, match="injected"):
            rundir.save_repetition(run, 0, single, marker)
    assert os.listdir(d) == [] and not rundir.is_complete(run, 0)

    with monkeypatch.context() as m:  # Keras dies half-way through writing the archive
        def half_save(path, *args, **kwargs):
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half an archive")
            raise OSError("killed while saving (injected)")

        m.setattr(single, "save", half_save)
        with pytest.raises(OSError, match="injected"):
            rundir.save_repetition(run, 0, single, marker)
    assert os.listdir(d) == []

    with monkeypatch.context() as m:  # the model is in place, its marker never lands
        refuse_publish(m, rundir.COMPLETE)
        with pytest.raises(OSError, match="injected"):
            rundir.save_repetition(run, 0, single, marker)
    assert os.listdir(d) == [rundir.MODEL] and not rundir.is_complete(run, 0)
    with pytest.raises(rundir.RunDirError, match=r"repetitions \[1, 2, 3\] of 4 are missing "
                                                 r".* repetitions \[0\] of 4 are unfinished"):
        rundir.load_all(run)
    rundir.save_repetition(run, 0, single, marker)  # the rerun's save completes it
    assert rundir.is_complete(run, 0)


def test_damaged_run_files_are_named(tmp_path, tiny_run):
    run = str(tmp_path / "run")
    shutil.copytree(tiny_run, run)
    marker = os.path.join(rundir.rep_dir(run, 1), rundir.COMPLETE)
    open(marker, "w").write('{"repetition": 1, "hash')
    with pytest.raises(rundir.RunDirError, match=re.escape(f"{marker}: unreadable completion "
                                                           f"marker")):
        rundir.load_all(run)
    shutil.copy(os.path.join(tiny_run, "rep-001", rundir.COMPLETE), marker)
    model = os.path.join(rundir.rep_dir(run, 2), rundir.MODEL)
    data = open(model, "rb").read()
    open(model, "wb").write(data[: len(data) // 2])
    with pytest.raises(rundir.RunDirError, match=re.escape(f"{model}: cannot load repetition "
                                                           f"2")):
        rundir.load_all(run)
    counts = os.path.join(run, rundir.LABEL_COUNTS)
    open(counts, "wb").write(open(counts, "rb").read()[:40])
    with pytest.raises(rundir.RunDirError, match=re.escape(f"{counts}: unreadable label "
                                                           f"counts")):
        rundir.load_label_counts(run)
    config = os.path.join(run, rundir.CONFIG)
    open(config, "w").write(open(config).read()[:-30])
    with pytest.raises(rundir.RunDirError, match=re.escape(f"{config}: ")):
        rundir.load_config(run)


def test_leftovers_of_a_killed_writer_are_never_taken_for_complete(tmp_path, tiny_run):
    run = str(tmp_path / "run")
    shutil.copytree(tiny_run, run)
    d = rundir.rep_dir(run, 3)
    for name in (rundir.MODEL, rundir.COMPLETE):
        os.rename(os.path.join(d, name), os.path.join(d, f"{name}.tmp-0123456789"))
    open(os.path.join(d, "model.tmp-0123456789.keras"), "wb").write(b"PK\x03\x04")
    assert not rundir.is_complete(run, 3) and rundir.is_complete(run, 2)
    with pytest.raises(rundir.RunDirError, match=r"repetitions \[3\] of 4"):
        rundir.load_all(run)


def test_unreadable_checkpoint_restarts_the_group(tmp_path, tiny_data, tiny_config,
                                                  monkeypatch):
    """A crash that tears every checkpoint file must not fail each rerun: the rerun reports
    it and trains the group from the start."""
    import mach_tf.training.group as train_lib

    config = tiny_config.replace(epochs=2, num_repetitions=1, group_size=1,
                                 hidden_units=[8], hashing=None)
    run = str(tmp_path / "run")
    rundir.ensure_config(run, config)

    class Killed(BaseException):
        pass

    def guard_then_kill(learning_rate):
        class Kill(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 1:  # after the first epoch's checkpoint was written
                    raise Killed()
        return Kill()

    with monkeypatch.context() as m:
        m.setattr(train_lib, "StopOnNonFiniteLoss", guard_then_kill)
        with pytest.raises(Killed):  # a checkpoint every step, so epoch 0's end has one
            train_group(run, config, [0], tiny_data["train"], verbose=0, log=quiet,
                        checkpoint_every=1)
    ckpt = os.path.join(run, "work", "group-000", "checkpoint")
    files = [os.path.join(ckpt, f) for f in os.listdir(ckpt) if f.endswith(".h5")]
    assert files
    for f in files:  # every checkpoint file cut short
        open(f, "r+b").truncate(max(1, os.path.getsize(f) // 3))
    lines = []
    train_group(run, config, [0], tiny_data["train"], verbose=0, log=lines.append)
    assert rundir.is_complete(run, 0) and rundir.completion(run, 0)["epochs"] == 2
    assert rundir.completion(run, 0)["resumed_from"] is None
    assert any(f"{ckpt}: " in line and "training them from the start" in line
               for line in lines)
    assert not os.path.exists(os.path.join(run, "work", "group-000"))


# -- interrupted exports -----------------------------------------------------------------
def test_export_interrupted_mid_write_leaves_no_version(tmp_path, tiny_run, monkeypatch):
    real = stitch.build_archive

    def cut_short(*args, **kwargs):
        archive = real(*args, **kwargs)
        write_out = archive.write_out

        def write_then_die(path, **kw):
            write_out(path, **kw)
            pb = os.path.join(path, "saved_model.pb")
            data = open(pb, "rb").read()
            open(pb, "wb").write(data[: len(data) // 2])
            raise OSError("killed while writing the SavedModel (injected)")

        archive.write_out = write_then_die
        return archive

    monkeypatch.setattr(stitch, "build_archive", cut_short)
    base = tmp_path / "mach"
    with pytest.raises(OSError, match="injected"):
        stitch.export_model(tiny_run, str(base), verify=False, warmup=False)
    assert os.listdir(base) == []
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        resolve_export(str(base))


def test_leftover_temporary_export_is_ignored(tmp_path, tiny_export):
    base = tmp_path / "mach"
    shutil.copytree(tiny_export[0], base / ".tmp-2-deadbeef")  # a writer killed before rename
    (base / "3").mkdir()  # a version folder without a SavedModel
    assert stitch.existing_versions(str(base)) == [3]
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        resolve_export(str(base))
    shutil.copytree(tiny_export[0], base / "1")
    assert resolve_export(str(base)) == str(base / "1")
