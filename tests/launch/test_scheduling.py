"""Scheduler integration: worker identity from Vertex AI's variables, and the example
manifest and script in docs/scheduling.md stay valid for the CLI."""

import json
import os
import re
import shlex

import pytest

from mach_tf.cli import build_parser
from mach_tf.launch.identity import worker_identity
from tests.helpers import ROOT

DOC = os.path.join(ROOT, "docs", "scheduling.md")


def _tf_config(kind, index, chief=1, workers=3):
    cluster = {"worker": [f"w{i}:2222" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["c0:2222"]
    return {"TF_CONFIG": json.dumps({"cluster": cluster,
                                     "task": {"type": kind, "index": index}})}


def test_vertex_chief_is_worker_zero_and_workers_follow():
    assert worker_identity(env=_tf_config("chief", 0)) == (0, 4)
    assert [worker_identity(env=_tf_config("worker", j))[0] for j in range(3)] == [1, 2, 3]
    spec = {"cluster": {"workerpool0": ["a:1"], "workerpool1": ["b:1", "c:1"]},
            "task": {"type": "workerpool1", "index": 1}, "environment": "cloud"}
    assert worker_identity(env={"CLUSTER_SPEC": json.dumps(spec)}) == (2, 3)


def test_parameter_server_task_is_refused():
    with pytest.raises(ValueError, match="'ps' task has no repetitions"):
        worker_identity(env=_tf_config("ps", 0))
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        worker_identity(env={"TF_CONFIG": "{not json"})


def _blocks(lang):
    text = open(DOC).read()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_kubernetes_manifest_is_an_indexed_job_the_cli_accepts():
    yaml = pytest.importorskip("yaml")
    (manifest,) = _blocks("yaml")
    job = yaml.safe_load(manifest)
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["MACH_TF_NUM_WORKERS"]) == spec["completions"]
    args = build_parser().parse_args(container["command"][1:])
    assert args.command == "train" and args.worker_index is None
    # each pod's identity comes from its completion index
    n = spec["completions"]
    ids = [worker_identity(env={"JOB_COMPLETION_INDEX": str(i), **env}) for i in range(n)]
    assert ids == [(i, n) for i in range(n)]


def test_slurm_script_passes_index_and_count_the_cli_accepts():
    script = next(b for b in _blocks("bash") if "#SBATCH --array" in b)
    first, last = map(int, re.search(r"--array=(\d+)-(\d+)", script).group(1, 2))
    command = script[script.index("srun ") + len("srun "):].replace("\\\n", " ")
    # what Slurm's shell makes of it in array task 3
    for var, value in (("$SLURM_ARRAY_TASK_ID", "3"), ("$SLURM_CPUS_PER_TASK", "4")):
        command = command.replace(var, value)
    argv = shlex.split(command)
    args = build_parser().parse_args(argv[1:])
    assert args.command == "train" and args.worker_index == 3
    assert args.num_workers == last - first + 1
