"""The mach-tf command, run for real in subprocesses."""

import json
import os

import pytest

from mach_tf import rundir
from tests.helpers import ROOT, run_cli

SUBCOMMANDS = ["convert", "verify", "synth", "train", "extend", "export", "evaluate", "predict",
               "tune", "demo"]


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_has_examples(sub):
    res = run_cli(sub, "--help")
    assert res.returncode == 0
    assert "examples:" in res.stdout and f"mach-tf {sub}" in res.stdout


def test_usage_errors_exit_2():
    assert run_cli().returncode == 2
    res = run_cli("train", "--model-dir", "x")
    assert res.returncode == 2 and "--train" in res.stderr
    assert run_cli("convert", "a", "b", "--format", "csv").returncode == 2


def test_flags_are_never_matched_by_prefix():
    from mach_tf.cli.parser import UsageError, build_parser, parse_args

    parser = build_parser()
    assert not parser.allow_abbrev
    assert all(not sub.allow_abbrev for sub in parser.subcommands.values())
    with pytest.raises(UsageError, match=r"mach-tf train: error: unrecognized arguments: "
                                         r"--bucket 64 \(did you mean --buckets for --bucket"):
        parse_args(parser, ["train", "--train", "t", "--model-dir", "r", "--bucket", "64"])
    with pytest.raises(UsageError, match="did you mean --top-k for --top"):
        parse_args(parser, ["predict", "--model", "m", "--top=3"])
    with pytest.raises(UsageError, match="unrecognized arguments: --verb"):
        parse_args(parser, ["evaluate", "--model", "m", "--test", "t", "--verb"])
    res = run_cli("train", "--train", "t", "--model-dir", "r", "--epoch", "3")
    assert res.returncode == 2 and "did you mean --epochs for --epoch?" in res.stderr


def test_home_and_variables_in_path_flags_are_expanded(tmp_path, monkeypatch):
    from mach_tf.cli.parser import build_parser, parse_args

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MACH_RUNS", str(tmp_path / "runs"))
    a = parse_args(build_parser(), ["train", "--train", "~/tfr/train",
                                    "--model-dir=$MACH_RUNS/r1", "--valid=~/tfr/valid"])
    assert (a.train, a.model_dir, a.valid) == (f"{tmp_path}/tfr/train", f"{tmp_path}/runs/r1",
                                               f"{tmp_path}/tfr/valid")
    src = tmp_path / "in.txt"
    src.write_text("2 5 3\n0 1:1\n1,2 3:0.5\n")
    res = run_cli("convert", "~/in.txt", "~/tfr/in", "--json", env={"HOME": str(tmp_path)},
                  process=True)  # also: TensorFlow's native start-up lines held back
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "tfr" / "in.manifest.json").exists()
    assert "absl::InitializeLog" not in res.stderr and "oneDNN" not in res.stderr
    assert not os.path.exists(os.path.join(ROOT, "~"))  # run_cli's working directory


def test_failures_exit_1_with_one_line(tmp_path):
    missing = tmp_path / "missing.txt"
    res = run_cli("convert", missing, tmp_path / "out")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == \
        f"mach-tf convert: error: {missing}: no such file"
    assert "Traceback" not in res.stderr
    verbose = run_cli("convert", missing, tmp_path / "out", "--verbose")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_bad_line_is_located(tmp_path):
    src = tmp_path / "bad.txt"
    src.write_text("2 10 3\n0 1:1\n0 1:1 1:2\n")
    res = run_cli("convert", src, tmp_path / "out")
    assert res.returncode == 1
    assert f"{src}:3: duplicate feature id 1" in res.stderr


def test_pipeline_end_to_end(tmp_path):
    d = tmp_path / "data"
    res = run_cli("synth", d, "--num-labels", 40, "--num-features", 200, "--train", 600,
                  "--test", 100, "--convert", "--json")
    assert res.returncode == 0, res.stderr
    synth = last_json(res.stdout)

    res = run_cli("convert", synth["test"], tmp_path / "test2", "--shards", 2, "--compression",
                  "gzip", "--json")
    assert res.returncode == 0, res.stderr
    assert last_json(res.stdout)["num_examples"] == 100

    run = tmp_path / "run"
    res = run_cli("train", "--train", synth["train_prefix"], "--model-dir", run, "--buckets", 8,
                  "--repetitions", 4, "--hidden", 32, "--epochs", 4, "--batch-size", 32,
                  "--learning-rate", 0.005, "--workers", 2, "--json")
    assert res.returncode == 0, res.stderr
    summary = last_json(res.stdout)
    assert summary["trained"] == [0, 1, 2, 3] and summary["complete"] == 4
    assert "tensorboard --logdir" in res.stderr
    # the run's progress, from the records and completion markers the workers write: every
    # epoch of each worker's group, from the first, and the run's line
    assert "train [--------------------] 0%, 0/4 repetitions complete" in res.stderr
    for worker, group in ((0, "[0, 2]"), (1, "[1, 3]")):
        for epoch in range(1, 5):
            assert f"train worker {worker}/2 reps {group} epoch {epoch}/4: loss " in res.stderr
    assert "train [####################] 100%, 4/4 repetitions complete" in res.stderr
    assert res.stdout.strip().count("\n") == 0  # the report alone: no Keras lines
    assert 0.0 < summary["final_validation"]["p@1"] <= 1.0
    # each worker process wrote its own event files: rep 0 (worker 0), rep 1 (worker 1)
    pids = {r: {f.split(".")[-3] for f in os.listdir(run / "logs" / f"rep-{r:03d}")
                if f.startswith("events.out.tfevents.")} for r in range(4)}
    assert all(pids.values()) and pids[0] == pids[2] and pids[1] == pids[3]
    assert not pids[0] & pids[1]
    assert any(f.startswith("events.out.tfevents.") for f in os.listdir(run / "logs" / "merged"))

    res = run_cli("train", "--train", synth["train_prefix"], "--model-dir", run, "--json")
    assert res.returncode == 0 and last_json(res.stdout)["skipped"] == [0, 1, 2, 3]
    res = run_cli("train", "--train", synth["train_prefix"], "--model-dir", run,
                  "--buckets", 16)
    assert res.returncode == 1 and "different config" in res.stderr

    res = run_cli("export", "--model-dir", run, "--output", tmp_path / "serving" / "mach",
                  "--top-k", 5, "--json")
    assert res.returncode == 0, res.stderr
    exported = last_json(res.stdout)
    steps = [ln for ln in res.stderr.splitlines() if ln.startswith("export [")]
    assert [ln[:12] for ln in steps] == [f"export [{i}/4]" for i in range(1, 5)], steps
    assert exported["path"].endswith("mach/1") and exported["verified_queries"] > 0

    for model in (run, tmp_path / "serving" / "mach"):
        res = run_cli("evaluate", "--model", model, "--test", tmp_path / "test2", "--json")
        assert res.returncode == 0, res.stderr
        metrics = last_json(res.stdout)
        assert metrics["num_examples"] == 100
        assert {"p@1", "p@3", "p@5", "ndcg@5"} <= set(metrics)
        assert metrics["p@1"] > 0.3

    lines = open(synth["test"]).read().splitlines()[1:4]
    res = run_cli("predict", "--model", tmp_path / "serving" / "mach", "--top-k", 3,
                  input_text="\n".join(lines) + "\n")
    assert res.returncode == 0, res.stderr
    answers = [json.loads(x) for x in res.stdout.strip().splitlines()]
    assert len(answers) == 3 and all(len(a["label_ids"]) == 3 for a in answers)


def test_train_prints_its_own_progress_and_no_tensorflow_warnings(tmp_path, tiny_data):
    """One worker, six groups of one repetition, two epochs each: the CLI's output is the
    project's lines (stdout the JSON report alone, no Keras progress lines) and no
    TensorFlow retracing warning, even for groups this short."""
    res = run_cli("train", "--train", tiny_data["train"], "--model-dir", tmp_path / "run",
                  "--buckets", 8, "--repetitions", 6, "--group-size", 1, "--hidden", 16,
                  "--epochs", 2, "--batch-size", 64, "--json",
                  process=True)  # TensorFlow's warnings reach a process's stderr only
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().count("\n") == 0 and last_json(res.stdout)["complete"] == 6
    assert "retracing" not in res.stderr and "WARNING:tensorflow" not in res.stderr, res.stderr
    for r in range(6):
        for epoch in (1, 2):
            assert f"train worker 0/1 reps [{r}] epoch {epoch}/2: loss " in res.stderr


def test_keras_lines_only_with_verbose():
    from mach_tf.cli.commands import _fit_verbosity
    from mach_tf.cli.parser import build_parser

    base = ["train", "--train", "t", "--model-dir", "m"]
    parse = build_parser().parse_args
    assert _fit_verbosity(parse(base)) == 0
    assert _fit_verbosity(parse(base + ["--verbose"])) == 2
    assert _fit_verbosity(parse(base + ["--verbose-fit", "1"])) == 1


def test_train_shares_a_groups_input_layer_when_asked(tmp_path, tiny_data):
    """``--shared-input-layer`` reaches the run's config, and the saved repetitions of a
    group hold the same input layer (each its own copy)."""
    run = tmp_path / "run"
    res = run_cli("train", "--train", tiny_data["train"], "--model-dir", run, "--buckets", 8,
                  "--repetitions", 4, "--group-size", 2, "--hidden", 16, "--epochs", 1,
                  "--shared-input-layer", "--json")
    assert res.returncode == 0, res.stderr
    assert json.load(open(run / "config.json"))["shared_input_layer"] is True
    kernels = [rundir.load_repetition(str(run), r).input_layer.block(0)[0] for r in range(4)]
    assert (kernels[0] == kernels[1]).all() and (kernels[2] == kernels[3]).all()
    assert not (kernels[0] == kernels[2]).all()


def test_output_bias_init_flag_reaches_the_config(tmp_path, tiny_data):
    from mach_tf.cli.commands import _train_config
    from mach_tf.cli.parser import build_parser

    base = ["train", "--train", tiny_data["train"], "--model-dir", str(tmp_path / "run")]
    parse = build_parser().parse_args
    assert _train_config(parse(base)).output_bias_init == "zeros"  # 13 examples per class
    assert _train_config(parse(base + ["--output-bias-init", "log_prior"])) \
        .output_bias_init == "log_prior"
