"""A living catalogue in the export: retired classes never returned, per-request
exclude_ids / restrict_ids, and k per request, through both of TensorFlow's loaders."""

import numpy as np
import pytest
import tensorflow as tf

from export.client import rows_from_padded, serialized_examples
from export.stitch import ExportError, export_model
from mach_tf import rundir
from mach_tf.inference.evaluation import evaluate
from mach_tf.inference.filters import read_class_ids
from mach_tf.inference.reference import filtered_topk_numpy
from mach_tf.inference.scorer import MergedScorer
from tests.helpers import serve_both_ways

LOADERS = ["saved_model.load", "v1 session"]
RETIRED = [0, 3, 4, 7, 11, 19, 23, 40, 42]  # 40: the most frequent training label


@pytest.fixture(scope="module")
def retired_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("catalogue") / "retired.txt"
    path.write_text("# sold out\n" + "\n".join(map(str, RETIRED)) + "\n")
    return str(path)


@pytest.fixture(scope="module", params=["exact", "candidates"])
def retired_export(request, tmp_path_factory, tiny_run, retired_file):
    base = tmp_path_factory.mktemp(f"retired_{request.param}") / "mach"
    res = export_model(tiny_run, str(base), top_k=5, decoder=request.param,
                       candidate_buckets=2, exclude_classes=retired_file)
    return res


@pytest.fixture(scope="module")
def served(retired_export):
    yield from serve_both_ways(retired_export.path, [
        "serving_default", "predict_examples", "serving_default_filtered",
        "predict_examples_filtered"])


def random_queries(n, seed, num_features=300):
    rng = np.random.default_rng(seed)
    ids = np.full((n, 6), -1, np.int64)
    vals = np.zeros((n, 6), np.float32)
    for i in range(n):
        width = rng.integers(1, 7)
        ids[i, :width] = rng.choice(num_features, width, replace=False)
        vals[i, :width] = rng.uniform(0.2, 2.0, width)
    return {"feature_ids": ids, "feature_values": vals}


def no_filter(n, top_k=0):
    return {"exclude_ids": np.full((n, 1), -1, np.int64),
            "restrict_ids": np.full((n, 1), -1, np.int64), "top_k": np.int32(top_k)}


def with_examples(queries):
    return {"examples": np.asarray(serialized_examples(rows_from_padded(
        queries["feature_ids"], queries["feature_values"])), dtype=object)}


def loader_name(loader):
    return "saved_model.load" if loader == "saved_model.load" else "session"


@pytest.mark.parametrize("loader", LOADERS)
def test_retired_classes_never_appear_and_rows_stay_full(served, loader):
    queries = random_queries(1000, seed=1)
    examples = with_examples(queries)
    for signature, feeds in [("serving_default", queries), ("predict_examples", examples),
                             ("serving_default_filtered", {**queries, **no_filter(1000)}),
                             ("predict_examples_filtered", {**examples, **no_filter(1000)})]:
        ids = served(loader_name(loader), signature, feeds)["label_ids"]
        assert ids.shape == (1000, 5), signature
        assert not np.isin(ids, RETIRED).any(), signature
        assert (ids >= 0).all(), signature


def test_filtered_answers_are_the_top_k_of_the_allowed_classes(tiny_run, retired_export,
                                                               served):
    config, stacked = rundir.load_all(tiny_run)
    queries = random_queries(200, seed=2)
    rng = np.random.default_rng(3)
    exclude = np.full((200, 4), -1, np.int64)
    restrict = np.full((200, 5), -1, np.int64)
    for i in range(200):
        if i % 2:
            exclude[i, :3] = rng.choice(60, 3, replace=False)
        if i % 3 == 0:
            n = 1 if i % 9 == 0 else int(rng.integers(1, 6))
            restrict[i, :n] = rng.choice(60, n, replace=False)
    scorer = MergedScorer(config, stacked)
    buckets = scorer.bucket_scores({k: tf.constant(v) for k, v in queries.items()}).numpy()
    filters = {"exclude_ids": exclude, "restrict_ids": restrict, "top_k": np.int32(3)}
    want_s, want_i = filtered_topk_numpy(buckets, config.hash_family, 60,
                                         retired_export.decoder, 2, 5, RETIRED, exclude,
                                         restrict)
    if retired_export.decoder == "exact":  # in plain Python: rank the allowed classes
        all_scores = np.mean([buckets[:, r][:, config.hash_family.table(60)[r]]
                              for r in range(config.num_repetitions)], axis=0)
        for i in range(200):
            allowed = set(range(60)) - set(RETIRED) - set(exclude[i][exclude[i] >= 0])
            if (restrict[i] >= 0).any():
                allowed &= set(restrict[i][restrict[i] >= 0])
            best = sorted(allowed, key=lambda c: (-all_scores[i, c], c))[:5]
            assert want_i[i][want_i[i] >= 0].tolist() == best
    for loader in LOADERS:
        for signature, feeds in [("serving_default_filtered", queries),
                                 ("predict_examples_filtered", with_examples(queries))]:
            out = served(loader_name(loader), signature, {**feeds, **filters})
            assert out["label_ids"].shape == (200, 3)
            np.testing.assert_allclose(out["scores"], want_s[:, :3], rtol=1e-5, atol=1e-6)
            got, want = out["label_ids"], want_i[:, :3]
            for i in range(200):  # the same classes, up to the order of tied scores
                assert set(got[i].tolist()) == set(want[i].tolist()), (signature, loader, i)
            for i in range(200):
                assert not set(got[i].tolist()) & set(exclude[i][exclude[i] >= 0].tolist())
                if (restrict[i] >= 0).any():
                    assert set(got[i][got[i] >= 0].tolist()) <= set(restrict[i].tolist())


@pytest.mark.parametrize("loader", LOADERS)
def test_restrict_to_one_class_and_k_per_request(served, loader):
    queries = random_queries(6, seed=4)
    name = loader_name(loader)
    one = {"exclude_ids": np.full((6, 1), -1, np.int64),
           "restrict_ids": np.array([[5], [8], [5], [3], [59], [-1]], np.int64),
           "top_k": np.int32(1)}
    ids = served(name, "serving_default_filtered", {**queries, **one})["label_ids"]
    assert ids[:, 0].tolist()[:5] == [5, 8, 5, -1, 59]  # 3 is retired
    full = served(name, "serving_default_filtered", {**queries, **no_filter(6)})
    for k in (1, 2, 5):
        part = served(name, "serving_default_filtered", {**queries, **no_filter(6, k)})
        assert part["label_ids"].shape == (6, k)
        np.testing.assert_array_equal(part["label_ids"], full["label_ids"][:, :k])
    plain = served(name, "serving_default", queries)
    np.testing.assert_array_equal(plain["label_ids"], full["label_ids"])


@pytest.mark.parametrize("bad,message", [
    ({"top_k": np.int32(6)}, "top_k must be <= 5"),
    ({"top_k": np.int32(-1)}, "top_k must be >= 0"),
    ({"exclude_ids": np.array([[60]] * 3, np.int64)}, "exclude_ids must be < num_classes=60"),
    ({"restrict_ids": np.array([[-2]] * 3, np.int64)}, "restrict_ids must be >= 0"),
    ({"restrict_ids": np.array([[1]] * 2, np.int64)}, "restrict_ids must have one row per"),
])
def test_bad_filters_are_invalid_argument(served, bad, message):
    feeds = {**random_queries(3, seed=5), **no_filter(3), **bad}
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        served("saved_model.load", "serving_default_filtered", feeds)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        served("session", "serving_default_filtered", feeds)


def test_evaluate_and_predict_honour_the_same_file(tiny_run, tiny_data, retired_export,
                                                   retired_file, tmp_path):
    import io
    import json

    from mach_tf.inference.predict import predict_lines

    run_m = evaluate(tiny_run, tiny_data["test"], decoder=retired_export.decoder,
                     candidate_buckets=2, exclude_classes=retired_file)
    export_m = evaluate(retired_export.path, tiny_data["test"])
    for key in ("p@1", "p@3", "p@5"):
        assert run_m[key] == pytest.approx(export_m[key], abs=1e-9), key
    from tfrecords_tools.parse import read_points

    truth = sorted({c for p in read_points(tiny_data["test_txt"]) for c in p.labels})
    blind = evaluate(tiny_run, tiny_data["test"], decoder=retired_export.decoder,
                     exclude_classes=truth)  # every true label excluded: nothing is right
    assert blind["p@1"] == blind["p@5"] == 0.0 and run_m["p@1"] > 0
    more = tmp_path / "more.txt"
    more.write_text("1\n2\n")
    out = io.StringIO()
    predict_lines(retired_export.path, ["5:1\n", "7:1 9:2\n"], out, exclude_classes=str(more))
    for line in out.getvalue().splitlines():
        ids = json.loads(line)["label_ids"]
        assert len(ids) == 5 and not set(ids) & set(RETIRED + [1, 2])


def test_refusals(tiny_run, tmp_path):
    with pytest.raises(ExportError, match="all 60 classes are excluded"):
        export_model(tiny_run, str(tmp_path / "m"), exclude_classes=range(60))
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n60\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: class id 60 out of range"):
        export_model(tiny_run, str(tmp_path / "m"), exclude_classes=str(bad))
    assert read_class_ids(str(bad), 61).tolist() == [1, 60]


@pytest.mark.parametrize("loader", LOADERS)
def test_rest_and_grpc_requests_with_filters(served, loader):
    from export import client
    from tests.helpers import decode_rest

    lines = ["5:1 9:0.5", "7:1", "1:2 2:1"]
    name = loader_name(loader)
    body = client.rest_body(lines, exclude=[8, 15], restrict=[[], [5, 6, 7], []], top_k=2)
    assert body["signature_name"] == "serving_default_filtered"
    assert body["inputs"]["top_k"] == 2 and body["inputs"]["restrict_ids"][0] == [-1, -1, -1]
    feeds = decode_rest(body, served.input_dtypes["serving_default_filtered"])
    out = served(name, "serving_default_filtered", feeds)
    assert out["label_ids"].shape == (3, 2)
    assert not np.isin(out["label_ids"], [8, 15] + RETIRED).any()
    assert set(out["label_ids"][1].tolist()) <= {5, 6, 7}
    request = client.grpc_request(lines, exclude=[8, 15], restrict=[[], [5, 6, 7], []],
                                  top_k=2)
    assert request.model_spec.signature_name == "serving_default_filtered"
    grpc_out = served(name, "serving_default_filtered",
                      {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
    np.testing.assert_array_equal(grpc_out["label_ids"], out["label_ids"])
    examples = client.rest_body(lines, "predict_examples", top_k=1)
    assert examples["signature_name"] == "predict_examples_filtered"
    with pytest.raises(ValueError, match="columnar"):
        client.rest_body(lines, layout="row", top_k=1)
    with pytest.raises(ValueError, match="2 rows for 3 queries"):
        client.filter_inputs(3, exclude=[[1], [2]])


def test_warmup_replays_filtered_requests(retired_export):
    from tests.helpers import replay_warmup

    seen = replay_warmup(retired_export.path)
    assert seen["serving_default_filtered"] == seen["predict_examples_filtered"] == [1, 8]
