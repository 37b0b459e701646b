"""``mach-tf evaluate --repetitions``: the merge of a run's first r repetitions from the CLI
(the library function is checked against separately loaded models in
tests/test_evaluate_subsets.py)."""

import json


def test_cli_repetitions(tiny_run, tiny_data, capsys):
    from mach_tf.cli import main

    assert main(["evaluate", "--model", tiny_run, "--test", tiny_data["test"],
                 "--repetitions", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["repetitions"] == 2 and {"p@1", "p@5", "ndcg@5", "psp@5"} <= set(out)
    assert main(["evaluate", "--model", tiny_run, "--test", tiny_data["test"],
                 "--repetitions", "0", "--json"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"mach-tf evaluate: error: repetitions: {tiny_run} has 4 repetitions, asked to merge 0"
