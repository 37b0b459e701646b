"""Progress across repetitions, read from the completion markers in the run directory."""

import os

from mach_tf import rundir
from mach_tf.launch.progress import RepetitionProgress, bar


def _complete(run, r):
    d = rundir.rep_dir(str(run), r)
    os.makedirs(d, exist_ok=True)
    for name in (rundir.COMPLETE, rundir.MODEL):
        open(os.path.join(d, name), "w").close()


def test_bar():
    assert bar(0, 4, 8) == "[--------]"
    assert bar(1, 4, 8) == "[##------]"
    assert bar(4, 4, 8) == "[########]"


def test_lines_only_when_the_count_changes_with_an_estimate(tmp_path):
    _complete(tmp_path, 0)  # complete before: not counted in the rate
    lines = []
    p = RepetitionProgress(str(tmp_path), 4, lines.append, interval=3600)
    p._t0 -= 10.0  # as if started 10 s ago
    assert p.poll() == 1 and p.poll() == 1
    assert lines == ["train [#####---------------] 1/4 repetitions complete (25%), 10 s"]
    _complete(tmp_path, 1)
    p.poll()
    # one repetition in 10 s, two left: about 20 s
    assert lines[-1] == ("train [##########----------] 2/4 repetitions complete (50%), 10 s, "
                         "about 20 s left")
    with p:  # entering and leaving polls; nothing changed, nothing printed
        pass
    assert len(lines) == 2
    _complete(tmp_path, 2)
    _complete(tmp_path, 3)
    with p:
        pass
    assert lines[-1].startswith("train [####################] 4/4 repetitions complete (100%)")
    assert "left" not in lines[-1]
