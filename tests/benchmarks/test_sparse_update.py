"""The sparse-update benchmark times lazy Adam's row update, the fused sparse RMSProp and
the row sum both include, every round, on kernels of the requested shape."""

import json

from benchmarks.sparse_update import main


def test_times_each_way_every_round(capsys):
    out = main(["--features", "300", "--hidden", "8", "--kernels", "2", "--ids", "50",
                "--distinct", "20", "--steps", "2", "--rounds", "2", "--json"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    for name in ("lazy_adam_ms", "sparse_rmsprop_ms", "row_sum_ms"):
        assert len(out[name]) == 2 and min(out[name]) > 0
