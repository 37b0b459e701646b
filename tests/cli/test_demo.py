"""`mach-tf demo`: the whole pipeline on built-in data, in a subprocess."""

import json

import pytest

from tests.helpers import run_cli


@pytest.mark.slow
def test_demo_small(tmp_path):
    res = run_cli("demo", "--small", "--workdir", tmp_path / "demo", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["serving_check"] is True
    assert out["p@1"] > out["floor_p@1"] + 0.2
    for key in ("p@1", "p@5", "floor_p@1", "export_dir"):
        assert key in out
    assert out["export_dir"].endswith("/1")
