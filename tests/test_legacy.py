"""What users already have on disk keeps working: a run directory and exports written by an
earlier mach-tf (before the package was split into sub-packages; tests/fixtures/legacy)
still load, evaluate, export and serve.

Keras finds the repetitions' layers by their registered names (``mach_tf>SparseDense``),
not by the module that defined them then, and an export is a self-contained SavedModel.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from export.stitch import export_model
from mach_tf import rundir
from mach_tf.data import to_model_inputs
from mach_tf.inference.evaluation import evaluate
from mach_tf.inference.predict import pad_batch
from mach_tf.inference.reference import topk_agree
from mach_tf.model.network import MachModel
from mach_tf.text.reference import featurize_like
from mach_tf.text.statistics import load_featurizer
from tests.helpers import FIXTURES, python_topk, serve_both_ways
from tfrecords_tools.dataset import make_dataset

LEGACY = os.path.join(FIXTURES, "legacy")
LOADERS = ("saved_model.load", "session")


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """A copy of the fixture (tests never write into the checkout)."""
    root = tmp_path_factory.mktemp("legacy") / "legacy"
    shutil.copytree(LEGACY, root)
    return str(root)


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(LEGACY, "expected_metrics.json")) as f:
        return json.load(f)


def _test_inputs(legacy, name="test"):
    batch = next(iter(make_dataset(os.path.join(legacy, "data", name), 64, shuffle=False)))
    return {k: v.numpy() for k, v in to_model_inputs(batch).items()}


def test_repetitions_load_as_todays_model(legacy):
    config, models = rundir.load_repetitions(os.path.join(legacy, "run"))
    assert [type(m) for m in models] == [MachModel, MachModel]
    assert [m.repetitions for m in models] == [[0], [1]]
    # the idf weights trained then are the ones the layer carries now
    weights = rundir.load_array(rundir.feature_weights_path(os.path.join(legacy, "run")))
    np.testing.assert_array_equal(np.asarray(models[0].sparse_input.feature_weights), weights)
    assert config.feature_weighting == "idf"


@pytest.mark.parametrize("name,model,test", [
    ("run", "run", "test"), ("export", "export/mach", "test"),
    ("text_run", "text_run", "text_test"), ("text_export", "text_export/mach", "text_test")])
def test_legacy_models_evaluate(legacy, expected, name, model, test):
    """Each evaluates as it did when it was written (within one flipped near-tie: another
    CPU may round a float sum differently)."""
    got = evaluate(os.path.join(legacy, model), os.path.join(legacy, "data", test))
    assert got["num_examples"] == expected[name]["num_examples"]
    for k in ("p@1", "p@3", "p@5", "ndcg@5"):
        assert got[k] == pytest.approx(expected[name][k], abs=0.03), k


@pytest.mark.parametrize("loader", LOADERS)
def test_legacy_export_answers_like_todays_decoder(legacy, loader):
    """The export written then and today's in-Python merged top-k of its run agree, through
    both of TensorFlow's loaders."""
    inputs = _test_inputs(legacy)
    ref_s, ref_i = python_topk(*rundir.load_all(os.path.join(legacy, "run")), inputs, 5)
    served = serve_both_ways(os.path.join(legacy, "export", "mach", "1"), ["serving_default"])
    out = next(served)(loader, "serving_default", inputs)
    served.close()
    assert topk_agree(out["label_ids"], out["scores"], ref_i, ref_s)


def test_legacy_run_exports_again(legacy):
    """Today's export of the old run (verified against the repetitions before it is
    published) is the next version beside the old one, and answers as the old one does."""
    base = os.path.join(legacy, "export", "mach")
    res = export_model(os.path.join(legacy, "run"), base, top_k=5, decoder="exact")
    assert res.version == 2 and res.verified_queries > 0
    inputs = _test_inputs(legacy)
    answers = []
    for version in ("1", "2"):
        served = serve_both_ways(os.path.join(base, version), ["serving_default"])
        answers.append(next(served)("session", "serving_default", inputs))
        served.close()
    old, new = answers
    assert topk_agree(old["label_ids"], old["scores"], new["label_ids"], new["scores"])


def test_legacy_text_run_exports_again(legacy):
    """The old text run's featuriser (statistics, normalisation table) rebuilds, and a new
    export's predict_text agrees with the old export's."""
    run = os.path.join(legacy, "text_run")
    base = os.path.join(legacy, "text_export", "mach")
    res = export_model(run, base, top_k=5, decoder="candidates", candidate_buckets=3)
    assert res.version == 2
    batch = next(iter(make_dataset(os.path.join(legacy, "data", "text_test"), 32,
                                   shuffle=False, with_text=True)))
    texts = np.asarray(batch["text"].numpy(), dtype=object)
    answers = []
    for version in ("1", "2"):
        served = serve_both_ways(os.path.join(base, version), ["predict_text"])
        answers.append(next(served)("session", "predict_text", {"text": texts}))
        served.close()
    old, new = answers
    assert topk_agree(old["label_ids"], old["scores"], new["label_ids"], new["scores"])
    # and both equal today's in-Python decoding of the Python-featurised queries
    config, model = rundir.load_all(run)
    features = pad_batch(featurize_like(load_featurizer(run, config),
                                        [t.decode("utf-8") for t in texts]))
    ref_s, ref_i = python_topk(config, model, features, 5, "candidates", 3)
    assert topk_agree(new["label_ids"], new["scores"], ref_i, ref_s)
