"""Export time: the serving signatures traced once (the export's own archive) against Keras'
``ExportArchive``, side by side on one trained run.

    mach-tf demo --text --small --workdir work/demo-text      # any run will do
    python -m benchmarks.export_time --json work/demo-text/run [--rounds 3]

Each round exports the run twice, the two archives alternating so that machine noise hits
both alike: once as ``mach-tf export`` does, and once with Keras' archive in its place
(the same signature functions given to ``keras.export.ExportArchive.add_endpoint``, which
also attaches each to the saved object, where ``tf.saved_model.save`` traces it again).
Both exports are verified with both loaders as usual, so both must serve the same answers.
For each: the median over rounds of the SavedModel's build and write (``write_s``: tracing
the signatures and ``tf.saved_model.save``) and of the whole export (``export_s``:
loading, building, verifying, warmup).

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import time

import keras

from benchmarks import common
from export import signatures, stitch


class KerasArchive:
    """Keras' ``ExportArchive`` behind :class:`export.archive.SignatureArchive`'s methods."""

    def __init__(self):
        self.archive = keras.export.ExportArchive()

    def track(self, resource):
        self.archive.track(resource)

    def add_signature(self, name, fn, input_signature):
        self.archive.add_endpoint(name, fn, input_signature=list(input_signature))

    def write_out(self, path):
        self.archive.write_out(path, verbose=False)


@contextlib.contextmanager
def archive_kind(kind: str, timings: list):
    """Builds the export's archive as ``kind`` ("signatures" or "keras") and appends the
    seconds spent tracing and writing it to ``timings``."""
    real_build, real_class = stitch.build_archive, signatures.SignatureArchive

    def timed_build(*args, **kwargs):
        start = time.perf_counter()
        archive = real_build(*args, **kwargs)
        write_out = archive.write_out

        def timed_write(path):
            write_out(path)
            timings.append(time.perf_counter() - start)

        archive.write_out = timed_write
        return archive

    if kind == "keras":
        signatures.SignatureArchive = KerasArchive
    stitch.build_archive = timed_build
    try:
        yield
    finally:
        stitch.build_archive = real_build
        signatures.SignatureArchive = real_class


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_time", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a trained run directory")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--decoder", choices=("exact", "candidates"), default="exact")
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    a = p.parse_args(argv)
    start = time.time()
    kinds = ("signatures", "keras")
    write = {k: [] for k in kinds}
    whole = {k: [] for k in kinds}
    out_dir = tempfile.mkdtemp(prefix="export-time-")
    try:
        for round_ in range(a.rounds):
            for kind in (kinds if round_ % 2 == 0 else kinds[::-1]):
                base = os.path.join(out_dir, kind, "mach")
                t = time.perf_counter()
                with archive_kind(kind, write[kind]):
                    res = stitch.export_model(a.run, base, top_k=5, decoder=a.decoder)
                whole[kind].append(time.perf_counter() - t)
                assert res.verified_queries > 0
                shutil.rmtree(os.path.join(out_dir, kind))
                common.say("export_time", a, f"round {round_ + 1} {kind}: write "
                           f"{write[kind][-1]:.1f} s, export {whole[kind][-1]:.1f} s")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    result = {"benchmark": "export_time", "run": a.run, "decoder": a.decoder,
              "rounds": a.rounds}
    for kind in kinds:
        result[kind] = {"write_s": round(statistics.median(write[kind]), 2),
                        "export_s": round(statistics.median(whole[kind]), 2),
                        "write_rounds_s": [round(x, 2) for x in write[kind]],
                        "export_rounds_s": [round(x, 2) for x in whole[kind]]}
    result["write_speedup"] = round(result["keras"]["write_s"]
                                    / result["signatures"]["write_s"], 2)
    result["export_speedup"] = round(result["keras"]["export_s"]
                                     / result["signatures"]["export_s"], 2)
    return common.emit(result, start)


if __name__ == "__main__":
    main()
