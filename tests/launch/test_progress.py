"""A run's progress from the first epoch, read from the groups' progress records and the
completion markers in the run directory; the estimate of the time left."""

import os

import pytest

from mach_tf import rundir
from mach_tf.launch.local import train
from mach_tf.launch.progress import RepetitionProgress, bar, epoch_events, estimate


def _complete(run, r):
    d = rundir.rep_dir(str(run), r)
    os.makedirs(d, exist_ok=True)
    for name in (rundir.COMPLETE, rundir.MODEL):
        open(os.path.join(d, name), "w").close()


def test_bar():
    assert bar(0, 4, 8) == "[--------]"
    assert bar(1, 4, 8) == "[##------]"
    assert bar(4, 4, 8) == "[########]"


class Clock:
    """An injected clock: the tests never read the wall clock."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def _record(group, worker, epoch, *, started_at, start_epoch=0, epochs=10, stopped=False,
            seconds=5.0, updated_at=None):
    history = [{"epoch": e, "loss": 2.0 - 0.1 * e, "val_p@1": 0.1 * e, "seconds": seconds,
                "stopped": stopped and e == epoch} for e in range(start_epoch + 1, epoch + 1)]
    return {"group": group, "worker": worker, "pid": 1, "epochs": epochs,
            "start_epoch": start_epoch, "started_at": started_at, "epoch": epoch,
            "stopped": stopped, "updated_at": started_at + epoch if updated_at is None
            else updated_at, "history": history}


def test_estimate_counts_repetition_epochs_and_improves_as_epochs_finish():
    # R = 4, cap 10, 2 workers: worker 0 owns [0, 2], worker 1 owns [1, 3], groups of 2.
    since = 0.0
    est = estimate([], {}, 4, 10, 2, since, now=30.0)
    assert (est.done, est.total, est.left) == (0.0, 40.0, None)  # no epoch yet: no guess
    # Worker 0 started at t=10 and trained 2 epochs of its group by t=30: 4 units in 20 s;
    # 20 - 4 = 16 units left -> 80 s. Worker 1 has no epoch yet: it is expected to go
    # as fast as the others, and its 20 units take 100 s: the run's estimate.
    recs = [_record([0, 2], 0, 2, started_at=10.0)]
    est = estimate(recs, {}, 4, 10, 2, since, now=30.0)
    assert (est.done, est.total) == (4.0, 40.0)
    assert est.left == pytest.approx(100.0)
    # Worker 1 now trains twice as fast: worker 0's 80 s is the longest.
    recs.append(_record([1, 3], 1, 4, started_at=10.0))
    est = estimate(recs, {}, 4, 10, 2, since, now=30.0)
    assert est.done == 12.0 and est.left == pytest.approx(80.0)
    # Worker 0's group stops early at epoch 3: its budget is what it trained, and the other
    # group now expects 3 epochs too (the mean of those ended), but at least one more.
    recs[0] = _record([0, 2], 0, 3, started_at=10.0, stopped=True)
    est = estimate(recs, {}, 4, 10, 2, since, now=40.0)
    assert (est.done, est.total) == (6.0 + 8.0, 6.0 + 10.0)
    # worker 1: 8 units in 30 s; 2 units left
    assert est.left == pytest.approx(2 / (8 / 30))
    assert est.fraction == pytest.approx(14 / 16)


def test_estimate_leaves_earlier_sessions_out_of_the_rate():
    # Repetition 0 complete after 6 epochs, group [1] trained 4 epochs in an earlier session
    # (started before `since`) and resumed now at 4; nothing trained this session yet.
    old = _record([1], 0, 4, started_at=5.0)
    est = estimate([old], {0: 6}, 2, 10, 1, since=100.0, now=120.0)
    assert (est.done, est.total, est.left) == (10.0, 6.0 + 6.0, None)
    resumed = _record([1], 0, 5, started_at=110.0, start_epoch=4)
    est = estimate([resumed], {0: 6}, 2, 10, 1, since=100.0, now=120.0)
    # 1 unit in 10 s; expects max(6, 5 + 1) = 6 epochs: 1 left -> 10 s
    assert est.done == 11.0 and est.left == pytest.approx(10.0)
    # everything complete: nothing left to estimate
    est = estimate([resumed], {0: 6, 1: 6}, 2, 10, 1, since=100.0, now=130.0)
    assert est.fraction == 1.0 and est.left is None


def _write(run, rec):
    rundir.write_progress(run, rec["group"], rec)


def test_a_line_for_every_epoch_from_the_first_then_the_run_line(tmp_path):
    run, clock = str(tmp_path), Clock(1000.0)
    _write(run, _record([3], 1, 7, started_at=10.0, epochs=8))  # an earlier session's
    lines = []
    p = RepetitionProgress(run, 4, lines.append, interval=3600, epochs=8, num_workers=2,
                           clock=clock)
    assert p.poll() == 0
    assert lines == ["train [####----------------] 21%, 0/4 repetitions complete, 0 s"]
    assert p.poll() == 0 and len(lines) == 1  # nothing changed: nothing printed
    clock.now = 1014.0
    _write(run, _record([0, 2], 0, 1, started_at=1004.0, epochs=8, seconds=9.0))
    p.poll()
    assert lines[1:] == [
        "train worker 0/2 reps [0, 2] epoch 1/8: loss 1.9, val P@1 0.100, 9.0 s",
        # 2 + 7 of 32 units; worker 0: 2 units in 10 s, 14 left: 70 s; worker 1 (group
        # [1] unstarted, [3] from before) at the same rate: 8 + 1 units, 45 s
        "train [######--------------] 28%, 0/4 repetitions complete, 14 s, about 1 min 10 s "
        "left"]
    clock.now = 1040.0
    _write(run, _record([0, 2], 0, 3, started_at=1004.0, epochs=8, stopped=True,
                        seconds=12.0))
    _complete(run, 0)
    _complete(run, 2)
    p.poll()
    assert lines[3:5] == [
        "train worker 0/2 reps [0, 2] epoch 2/8: loss 1.8, val P@1 0.200, 12 s",
        "train worker 0/2 reps [0, 2] epoch 3/8: loss 1.7, val P@1 0.300, 12 s, early stop"]
    assert lines[5].startswith("train [") and "2/4 repetitions complete, 40 s" in lines[5]
    for r in (1, 3):
        _complete(run, r)
    with p:
        pass
    assert lines[-1] == "train [####################] 100%, 4/4 repetitions complete, 40 s"


def test_epoch_events_print_a_workers_own_epochs():
    lines = []
    receive = epoch_events(lines.append, 3)
    receive({"event": "group_start", "worker": 2, "reps": [2]})
    receive({"event": "epoch", "worker": 2, "reps": [2, 5], "epoch": 1, "epochs": 4,
             "loss": 3.25, "seconds": 61.0, "bucket_acc": 0.5})
    assert lines == ["train worker 2/3 reps [2, 5] epoch 1/4: loss 3.25, 1 min 01 s"]


def test_a_worker_records_every_epoch_as_it_trains(tmp_path, tiny_data, tiny_config):
    """The record a worker leaves after each epoch (what the launcher's lines come from) is
    on disk when the next callback runs, from the first epoch; a one-worker run prints a
    line for every epoch of every group, then the run's line."""
    import keras

    run = str(tmp_path / "run")
    config = tiny_config.replace(epochs=2)
    seen = []

    class Look(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            mine = [r for r in rundir.read_progress(run) if r["group"] == self.model.repetitions]
            seen.append((mine[0]["group"], mine[0]["epoch"], len(mine[0]["history"])))

    lines = []
    summary = train(run, tiny_data["train"], None, config, workers=1, verbose=0,
                    log=lines.append, callbacks=[Look()])
    assert summary["complete"] == 4
    assert seen == [([0, 1], 1, 1), ([0, 1], 2, 2), ([2, 3], 1, 1), ([2, 3], 2, 2)]
    epochs = [ln.split(":")[0] for ln in lines if ln.startswith("train worker")]
    assert epochs == [f"train worker 0/1 reps {g} epoch {e}/2" for g in ("[0, 1]", "[2, 3]")
                      for e in (1, 2)]
    assert "val P@1" in next(ln for ln in lines if ln.startswith("train worker"))
    assert lines[-1].startswith("train [####################] 100%, 4/4 repetitions complete")
