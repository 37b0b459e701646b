"""Evaluating the merge of a run's first r repetitions (``evaluate(..., repetitions=r)``)."""

import numpy as np
import pytest

from mach_tf import rundir
from mach_tf.data import to_model_inputs
from mach_tf.inference.evaluation import evaluate
from mach_tf.inference.ranking import RankingMetrics
from mach_tf.inference.reference import exact_topk_numpy
from mach_tf.model.network import bucket_scores
from tfrecords_tools.dataset import make_dataset


def _reference_p_at_k(run, test, r):
    """P@1/P@5 of repetitions 0..r-1, each loaded on its own and merged in numpy."""
    config = rundir.load_config(run)
    table = config.hash_family.subset(list(range(r))).table(config.num_classes)
    metrics = RankingMetrics((1, 5))
    for batch in make_dataset(test, 64, shuffle=False):
        inputs = to_model_inputs(batch)
        scores = np.concatenate(
            [bucket_scores(rundir.load_repetition(run, i)(inputs, training=False),
                           config.loss, config.merge).numpy() for i in range(r)], axis=1)
        _, ids = exact_topk_numpy(scores, table, 5)
        metrics.update(ids, batch["labels"].to_list())
    return metrics.result()


@pytest.mark.parametrize("r", [1, 3])
def test_first_r_repetitions_merge_like_separately_loaded_models(tiny_run, tiny_data, r):
    res = evaluate(tiny_run, tiny_data["test"], ks=(1, 5), decoder="exact", repetitions=r)
    ref = _reference_p_at_k(tiny_run, tiny_data["test"], r)
    assert res["repetitions"] == r
    assert res["p@1"] == pytest.approx(ref["p@1"], abs=1e-9)
    assert res["p@5"] == pytest.approx(ref["p@5"], abs=1e-9)


def test_all_repetitions_is_the_default(tiny_run, tiny_data):
    config = rundir.load_config(tiny_run)
    full = evaluate(tiny_run, tiny_data["test"], decoder="exact")
    same = evaluate(tiny_run, tiny_data["test"], decoder="exact",
                    repetitions=config.num_repetitions)
    assert full["repetitions"] == config.num_repetitions
    assert {k: v for k, v in full.items() if k != "seconds"} == \
        {k: v for k, v in same.items() if k != "seconds"}


def test_repetitions_out_of_range_or_for_an_export_are_refused(tiny_run, tiny_data,
                                                               tiny_export):
    config = rundir.load_config(tiny_run)
    for bad in (0, config.num_repetitions + 1):
        with pytest.raises(ValueError, match=f"has {config.num_repetitions} repetitions"):
            evaluate(tiny_run, tiny_data["test"], repetitions=bad)
    with pytest.raises(ValueError, match="export merges all"):
        evaluate(tiny_export[0], tiny_data["test"], repetitions=1)
