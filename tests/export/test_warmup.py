"""Warmup records: written by every export without TensorFlow Serving's Python package
(``pip install "mach-tf[cpu]"`` alone), and exactly the ``PredictionLog`` protos that
package parses."""

import json
import os

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from export import warmup as warmup_lib
from tests.helpers import replay_warmup, run_without_serving_api

#: Exports a run (``sys.argv[1]``) to ``sys.argv[2]`` through the command line, reads the
#: warmup records back and prints what it saw as the last line.
EXPORT_AND_READ = """
import json, os
from export.warmup import WARMUP_FILE, read_warmup
from mach_tf.cli import main

code = main(["export", "--model-dir", sys.argv[1], "--output", sys.argv[2], "--top-k", "5",
             "--decoder", "exact", "--json"])
records = []
if code == 0:
    path = os.path.join(sys.argv[2], "1", "assets.extra", WARMUP_FILE)
    records = [[r.signature_name, r.model_name,
                {k: v.tensor_shape.dim[0].size for k, v in r.inputs.items()
                 if v.tensor_shape.dim}]  # all but a filtered request's scalar top_k
               for r in read_warmup(path)]
print(json.dumps({"exit": code, "records": records,
                  "serving_api": sorted(m for m in sys.modules
                                        if m.startswith("tensorflow_serving"))}))
"""


def _file(export_path):
    return os.path.join(export_path, "assets.extra", warmup_lib.WARMUP_FILE)


def test_export_writes_warmup_without_the_serving_api(tiny_run, tmp_path):
    base = tmp_path / "mach"
    res = run_without_serving_api(EXPORT_AND_READ, tiny_run, base)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert seen["exit"] == 0, res.stderr[-3000:]
    assert seen["serving_api"] == []
    sizes = {}
    for signature, model_name, batch in seen["records"]:
        assert model_name == "mach"
        assert len(set(batch.values())) == 1
        sizes.setdefault(signature, []).append(next(iter(batch.values())))
    assert sizes["serving_default"][:4] == [1, 2, 4, 8]
    assert sizes["predict_examples"][:2] == [1, 4]
    assert sizes["serving_default_filtered"] == sizes["predict_examples_filtered"] == [1, 8]
    # ... and the file is what TensorFlow Serving replays: the SavedModel answers each record
    assert replay_warmup(str(base / "1")) == sizes


def test_records_parse_as_prediction_logs(tiny_export):
    """Each record, parsed by TensorFlow Serving's own proto class, holds the request that
    :func:`read_warmup` decodes."""
    path = _file(tiny_export[0])
    decoded = warmup_lib.read_warmup(path)
    raws = [raw.numpy() for raw in tf.data.TFRecordDataset(path)]
    assert len(raws) == len(decoded) > 0
    for raw, ours in zip(raws, decoded):
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        assert log.WhichOneof("log_type") == "predict_log"
        req = log.predict_log.request
        assert req.model_spec.name == ours.model_name == "mach"
        assert req.model_spec.signature_name == ours.signature_name
        assert not req.model_spec.HasField("version") and ours.version is None
        assert dict(req.inputs) == ours.inputs
