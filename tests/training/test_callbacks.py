"""The merged validation's scoring function: one trace per group whatever the batch shapes,
with the results of running it eagerly."""

import numpy as np
import pytest
import tensorflow as tf

from mach_tf.model.network import build_model
from mach_tf.training.callbacks import MergedValidation, completed_scores
from mach_tf.training.tensorboard import validation_by_repetition
from mach_tf.training.validation import ValidationSample, data_split, load_sample


@pytest.fixture(scope="module")
def ragged_sample(tiny_data, tiny_config):
    """Validation batches of several sizes and padded widths (the last one partial)."""
    sample = load_sample(data_split(tiny_config, tiny_data["train"]), 70, batch_size=16)
    widths = {b[0]["feature_ids"].shape for b in sample.batches}
    assert len({w[0] for w in widths}) > 1 and len({w[1] for w in widths}) > 1, widths
    return sample


def _metrics(cb):
    return {name: {k: round(v, 12) for k, v in m.items()} for name, m in cb.compute().items()}


@pytest.mark.parametrize("with_done", [False, True])
def test_scoring_traces_once_for_any_batch_shape(tiny_run, tiny_config, ragged_sample,
                                                 with_done):
    config, sample = tiny_config, ragged_sample
    done, done_scores = completed_scores(tiny_run, config, sample, exclude=[2, 3]) \
        if with_done else ([], None)
    model = build_model(config, [2, 3])
    cb = MergedValidation(config, sample, [2, 3], done, done_scores)
    cb.set_model(model)
    cb.set_params({"epochs": 5})  # enough calls in a fit to be worth a trace
    first = _metrics(cb)
    again = _metrics(cb)  # a second epoch: no new trace
    assert cb._fn.experimental_get_tracing_count() == 1
    assert first == again
    # The same forward pass gives each repetition's validation loss and bucket accuracy,
    # as scoring the sample again would.
    want = validation_by_repetition(model, config, [2, 3], sample)
    np.testing.assert_allclose(cb.repetition_validation, want, rtol=1e-5)
    tf.config.run_functions_eagerly(True)
    try:
        eager = MergedValidation(config, sample, [2, 3], done, done_scores)
        eager.set_model(model)
        assert _metrics(eager) == first
    finally:
        tf.config.run_functions_eagerly(False)


def test_a_few_calls_run_eagerly(tiny_run, tiny_config, ragged_sample):
    """Each group's model and tables are its own, so its scoring function is traced once
    per group; when a fit calls it only a few times the trace costs more than it saves
    (and many short groups would trip TensorFlow's retracing warning), so it runs eagerly."""
    model = build_model(tiny_config, [0])
    one_batch = ValidationSample(ragged_sample.batches[:1])
    cb = MergedValidation(tiny_config, one_batch, [0])
    cb.set_model(model)
    cb.set_params({"epochs": 2})
    cb.compute()
    assert not isinstance(cb._fn, tf.types.experimental.PolymorphicFunction)
    traced = MergedValidation(tiny_config, one_batch, [0])
    traced.set_model(model)
    traced.set_params({"epochs": 20})
    assert np.isclose(traced.compute()["group"]["p@1"], cb.compute()["group"]["p@1"])
    assert traced._fn.experimental_get_tracing_count() == 1
