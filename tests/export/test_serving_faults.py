"""Adversarial requests against a real exported SavedModel: each one gets InvalidArgument
or a clear error (or, where the request has a well-defined answer, that answer), never a
silently wrong answer, and the next request is served normally. Both through the
signature call and through the v1 Session loader that TensorFlow Serving mirrors."""

import numpy as np
import pytest
import tensorflow as tf

from tfrecords_tools.convert import serialize_example

I64 = tf.int64
GOOD = {"feature_ids": [[1, 2, -1], [7, 40, 3]],
        "feature_values": [[1.0, 0.5, 0.0], [0.3, 2.0, 1.0]]}


@pytest.fixture(scope="module")
def signatures(tiny_export):
    loaded = tf.saved_model.load(tiny_export[0])
    return loaded, loaded.signatures["serving_default"], loaded.signatures["predict_examples"]


def call(fn, ids, values, ids_dtype=I64, values_dtype=tf.float32):
    out = fn(feature_ids=tf.constant(ids, ids_dtype),
             feature_values=tf.constant(values, values_dtype))
    return {k: v.numpy() for k, v in out.items()}


@pytest.fixture(scope="module")
def baseline(signatures):
    return call(signatures[1], GOOD["feature_ids"], GOOD["feature_values"])


def served_normally(fn, baseline):
    out = call(fn, GOOD["feature_ids"], GOOD["feature_values"])
    np.testing.assert_array_equal(out["label_ids"], baseline["label_ids"])
    np.testing.assert_array_equal(out["scores"], baseline["scores"])


@pytest.mark.parametrize("ids, values, message", [
    ([[1, 2**62]], [[1.0, 1.0]], "feature_ids must be < num_features=300"),
    ([[2**63 - 1]], [[1.0]], "feature_ids must be < num_features=300"),
    ([[300]], [[1.0]], "feature_ids must be < num_features=300"),
    ([[-2**63]], [[1.0]], r"feature_ids must be >= 0 \(or -1 for padding\)"),
    ([[3, -2]], [[1.0, 1.0]], r"feature_ids must be >= 0"),
    ([[1], [2]], [[1.0]], r"feature_ids and feature_values must have the same shape"),
    ([[1, 2]], [[1.0, 1.0, 1.0]], r"same shape \[batch, n\]"),
    ([[1, 2], [3, 4]], [[1.0, 1.0]], r"same shape"),
    ([[5, 9, 5]], [[1.0, 1.0, 1.0]], "feature_ids must not repeat within a row"),
    ([[1, 2]], [[1.0, np.nan]], "feature_values must be finite"),
    ([[1, 2]], [[np.inf, 1.0]], "feature_values must be finite"),
])
def test_bad_requests_are_refused(signatures, baseline, ids, values, message):
    fn = signatures[1]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        call(fn, ids, values)
    served_normally(fn, baseline)


@pytest.mark.parametrize("ids, values, dtypes", [
    ([[3]], [[1.0]], (tf.int32, tf.float32)),
    ([[3.7]], [[1.0]], (tf.float32, tf.float32)),
    ([[3]], [[1.0]], (I64, tf.float64)),
    ([["3"]], [[1.0]], (tf.string, tf.float32)),
    ([[3]], [["1"]], (I64, tf.string)),
])
def test_wrong_dtypes_are_refused(signatures, baseline, ids, values, dtypes):
    fn = signatures[1]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"was expected to be a (int64|"
                                                             r"float) tensor but is a"):
        call(fn, ids, values, *dtypes)
    with pytest.raises(TypeError, match="Binding inputs"):
        fn(feature_ids=[[1.5]], feature_values=[[1.0]])  # no silent float -> int64
    served_normally(fn, baseline)


@pytest.mark.parametrize("ids, values", [([3, 4], [1.0, 1.0]), ([[[3]]], [[[1.0]]])])
def test_wrong_rank_is_refused(signatures, baseline, ids, values):
    with pytest.raises(tf.errors.InvalidArgumentError):
        call(signatures[1], ids, values)
    served_normally(signatures[1], baseline)


def test_empty_batch_gets_an_empty_answer(signatures, baseline):
    for width in (0, 3):
        out = call(signatures[1], np.zeros([0, width], np.int64), np.zeros([0, width]))
        assert out["label_ids"].shape == (0, 5) and out["scores"].shape == (0, 5)
        assert out["labels"].shape == (0, 5)
    out = signatures[2](examples=tf.constant([], tf.string))
    assert out["label_ids"].shape == (0, 5)
    served_normally(signatures[1], baseline)


def test_rows_without_features_get_the_empty_query_answer(signatures, baseline):
    """Zero-length feature lists and all-padding rows have one defined answer (that of an
    input with no features), equal everywhere, finite, and they leave the other rows of
    their batch untouched."""
    fn = signatures[1]
    empty = call(fn, np.zeros([2, 0], np.int64), np.zeros([2, 0]))
    assert np.isfinite(empty["scores"]).all()
    np.testing.assert_array_equal(empty["label_ids"][0], empty["label_ids"][1])
    mixed = call(fn, [[-1, -1, -1]] + GOOD["feature_ids"],
                 [[9.0, 9.0, 9.0]] + GOOD["feature_values"])  # padding values are ignored
    np.testing.assert_array_equal(mixed["label_ids"][0], empty["label_ids"][0])
    np.testing.assert_allclose(mixed["scores"][0], empty["scores"][0], rtol=1e-6)
    np.testing.assert_array_equal(mixed["label_ids"][1:], baseline["label_ids"])
    np.testing.assert_allclose(mixed["scores"][1:], baseline["scores"], rtol=1e-6)


def test_extreme_finite_values_are_not_zeroed(signatures):
    """Feature values are normalised to unit L2 norm; a row of 1e30s (whose squares
    overflow float32) or of 1e-30s (whose squares underflow) must get the same answer as
    the same row scaled to 1, not the answer of an empty row."""
    fn = signatures[1]
    ids = [[3, 17, 42]]
    ref = call(fn, ids, [[1.0, 2.0, 0.5]])
    empty = call(fn, [[-1]], [[0.0]])
    for scale in (1e30, 1e-30, 3e38 / 2):
        out = call(fn, ids, [[scale, 2 * scale, 0.5 * scale]])
        np.testing.assert_array_equal(out["label_ids"], ref["label_ids"])
        np.testing.assert_allclose(out["scores"], ref["scores"], rtol=1e-5)
    assert not np.array_equal(ref["label_ids"], empty["label_ids"])


def test_bad_example_requests_are_refused(signatures, baseline):
    from tensorflow.core.example import example_pb2, feature_pb2

    fn = signatures[2]
    floats = example_pb2.Example(features=feature_pb2.Features(feature={
        "feature_ids": feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[1.0]))}))
    cases = [
        ([b"\x00\xffnot a proto"], "Could not parse example"),
        ([serialize_example([1], [1, 2], [1.0])], "as many feature_values as feature_ids"),
        ([serialize_example([1], [2**62], [1.0])], "feature_ids must be < num_features=300"),
        ([serialize_example([1], [4, 4], [1.0, 1.0])], "must not repeat within a row"),
        ([serialize_example([], [1], [float("nan")])], "must be finite"),
        ([floats.SerializeToString()], "feature_ids"),
    ]
    for examples, message in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            fn(examples=tf.constant(examples))
        out = fn(examples=tf.constant([serialize_example([], ids[ids >= 0].tolist(),
                                                         vals[ids >= 0].tolist())
                                       for ids, vals in zip(np.array(GOOD["feature_ids"]),
                                                            np.array(GOOD["feature_values"]))]))
        np.testing.assert_array_equal(out["label_ids"].numpy(), baseline["label_ids"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a string tensor"):
        fn(examples=tf.constant([1, 2]))


def test_v1_session_loader(tiny_export, baseline):
    """TensorFlow Serving's C++ loader: the SavedModel in a v1 Session, fed by tensor name.
    Requests reach Session::Run with their own dtype, which the session checks; the public
    ``Session.run`` would first convert feeds with numpy on the client (3.7 -> 3), so wrong
    dtypes are fed here through the session's unconverted path, as the server does."""
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], tiny_export[0])
        sig = meta.signature_def["serving_default"]
        graph = sess.graph
        ids_t = graph.get_tensor_by_name(sig.inputs["feature_ids"].name)
        vals_t = graph.get_tensor_by_name(sig.inputs["feature_values"].name)
        out_t = {k: graph.get_tensor_by_name(v.name) for k, v in sig.outputs.items()}

        def run(ids, vals):
            return sess.run(out_t, {ids_t: ids, vals_t: vals})

        def run_unconverted(ids, vals):
            return sess._call_tf_sessionrun(
                None, {ids_t._as_tf_output(): ids, vals_t._as_tf_output(): vals},
                [out_t["label_ids"]._as_tf_output()], [], None)

        def served_normally():
            out = run(np.array(GOOD["feature_ids"], np.int64),
                      np.array(GOOD["feature_values"], np.float32))
            np.testing.assert_array_equal(out["label_ids"], baseline["label_ids"])

        served_normally()
        for ids, vals, expected in [
                (np.array([[3.7]]), np.ones([1, 1], np.float32), "int64 but double"),
                (np.array([[3]], np.int32), np.ones([1, 1], np.float32), "int64 but int32"),
                (np.array([[b"3"]]), np.ones([1, 1], np.float32), "int64 but string"),
                (np.array([[3]], np.int64), np.ones([1, 1], np.float64), "float but double")]:
            with pytest.raises(tf.errors.InvalidArgumentError, match=f"to be {expected} is "
                                                                     f"provided"):
                run_unconverted(ids, vals)
            served_normally()
        bad = [
            (np.array([[2**62]], np.int64), np.ones([1, 1], np.float32), "< num_features"),
            (np.array([[1, 1]], np.int64), np.ones([1, 2], np.float32), "must not repeat"),
            (np.zeros([2, 2], np.int64), np.zeros([3, 2], np.float32), "same shape"),
            (np.array([[1]], np.int64), np.full([1, 1], np.nan, np.float32), "finite")]
        for ids, vals, message in bad:
            with pytest.raises(tf.errors.InvalidArgumentError, match=message):
                run(ids, vals)
            served_normally()
        with pytest.raises(ValueError, match="Cannot feed value of shape"):
            run(np.zeros([2], np.int64), np.zeros([2], np.float32))
        empty = run(np.zeros([0, 2], np.int64), np.zeros([0, 2], np.float32))
        assert empty["label_ids"].shape == (0, 5)
        served_normally()


def test_errors_read_as_one_meaningful_line(signatures):
    """The CLI prints one line: TensorFlow's own reason, not "Graph execution error:"."""
    from tfrecords_tools.verification import tf_reason

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        call(signatures[1], [[2**62]], [[1.0]])
    assert str(info.value).splitlines()[0] == "Graph execution error:"
    assert tf_reason(info.value).startswith(
        "assertion failed: [feature_ids must be < num_features=300]")


def test_predict_names_the_input_line(tiny_export):
    import io

    from mach_tf.inference.predict import predict_lines
    from tfrecords_tools.parse import DataFormatError

    out = io.StringIO()
    with pytest.raises(DataFormatError, match=r"^<stdin>:2: feature id 300 out of range"):
        predict_lines(tiny_export[0], ["1 2:1\n", "1 300:1\n"], out)
    with pytest.raises(DataFormatError, match=r"^<stdin>:1: duplicate feature id 2"):
        predict_lines(tiny_export[0], ["2:1 2:1\n"], out)
