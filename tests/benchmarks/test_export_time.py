"""The export-time benchmark exports a run with both archives (each export verified with
both loaders) and leaves the export's own archive in place afterwards."""

import json

from benchmarks.export_time import main
from export import signatures, stitch
from export.archive import SignatureArchive


def test_both_archives_export_a_verified_model_and_are_restored(tiny_run, capsys):
    build = stitch.build_archive
    out = main([tiny_run, "--rounds", "1", "--json"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    for kind in ("signatures", "keras"):
        assert len(out[kind]["write_rounds_s"]) == 1
        assert 0 < out[kind]["write_s"] < out[kind]["export_s"]
    assert out["write_speedup"] > 0 and out["export_speedup"] > 0
    assert stitch.build_archive is build and signatures.SignatureArchive is SignatureArchive
