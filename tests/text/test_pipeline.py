"""Text queries end to end: train from raw text, export, load the SavedModel back and ask
``predict_text`` with raw strings (both loaders), against featurising in Python and
``serving_default``; the run directory, warmup, client bodies, predict --text, refusals."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from export import client, stitch
from export.stitch import ExportError, export_model
from export.verification import TEXT_PROBES
from mach_tf import rundir
from mach_tf.inference.predict import pad_batch, predict_lines, predict_text_lines
from mach_tf.inference.reference import topk_agree
from mach_tf.text.reference import featurize_like
from mach_tf.text.statistics import load_featurizer, statistics_sha256
from tests.helpers import decode_rest, python_topk, replay_warmup, serve_both_ways
from tfrecords_tools.dataset import make_dataset
from tfrecords_tools.parse import DataFormatError

LOADERS = ("saved_model.load", "session")


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    from mach_tf.datasets.synthetic_text import text_spec, write_text_split
    from tfrecords_tools.convert import convert

    d = tmp_path_factory.mktemp("text_data")
    train_txt, test_txt = write_text_split(d, text_spec(60, seed=3), 800, 160)
    convert(train_txt, str(d / "tfr" / "train"), "text", num_shards=2)
    convert(test_txt, str(d / "tfr" / "test"), "text")
    return {"train_txt": train_txt, "test_txt": test_txt, "train": str(d / "tfr" / "train"),
            "test": str(d / "tfr" / "test")}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, text_data):
    """A run trained from text by two local worker processes (do not modify it)."""
    from mach_tf.data import config_for_data
    from mach_tf.launch.local import train

    config = config_for_data(text_data["train"], num_buckets=16, num_repetitions=4,
                             hidden_units=[32], epochs=3, batch_size=64, group_size=2,
                             learning_rate=3e-3, seed=1, text_features=4096, char_ngrams=3)
    run = str(tmp_path_factory.mktemp("text_run") / "run")
    summary = train(run, text_data["train"], None, config, workers=2, verbose=0,
                    log=lambda m: None)
    assert summary["complete"] == 4 and summary["workers"] == 2, summary
    assert {rundir.completion(run, r)["worker"] for r in range(4)} == {0, 1}
    return run


@pytest.fixture(scope="module")
def text_export(tmp_path_factory, text_run):
    base = tmp_path_factory.mktemp("text_export") / "mach"
    return export_model(text_run, str(base), top_k=5, decoder="exact")


@pytest.fixture(scope="module")
def queries(text_data):
    """64 raw test queries and the normalisation's corner cases."""
    batch = next(iter(make_dataset(text_data["test"], 64, shuffle=False, with_text=True)))
    return [t.decode("utf-8") for t in batch["text"].numpy()] + list(TEXT_PROBES)


@pytest.fixture(scope="module")
def python_features(text_run, queries):
    """The queries featurised in Python (independent of the graph), padded."""
    config = rundir.load_config(text_run)
    return pad_batch(featurize_like(load_featurizer(text_run, config), queries))


@pytest.fixture(scope="module")
def served(text_export):
    yield from serve_both_ways(text_export.path, client.ALL_SIGNATURES)


def strings(texts):
    out = np.empty(len(texts), dtype=object)
    out[:] = [t.encode("utf-8") if isinstance(t, str) else t for t in texts]
    return out


# -- the run directory ---------------------------------------------------------------------
def test_run_records_the_featuriser(text_run):
    config = rundir.load_config(text_run)
    text = config.text
    assert config.num_features == 4096 and text["char_ngrams"] == 3
    assert text["num_documents"] == 800 and text["fold_table_sha256"]
    df = np.load(os.path.join(text_run, text["statistics"]), allow_pickle=False)
    assert df.dtype == np.int64 and df.shape == (4096,) and 0 < df.max() <= 800
    assert statistics_sha256(df) == text["statistics_sha256"]
    marker = rundir.completion(text_run, 0)
    assert marker["config"]["text"] == text


# -- Done: predict_text on raw strings == featurise in Python + serving_default ------------
@pytest.mark.parametrize("loader", LOADERS)
def test_predict_text_equals_python_featurisation_and_serving_default(
        served, queries, python_features, loader):
    by_text = served(loader, "predict_text", {"text": strings(queries)})
    by_ids = served(loader, "serving_default", python_features)
    assert by_text["label_ids"].shape == (len(queries), 5)
    np.testing.assert_array_equal(by_text["label_ids"], by_ids["label_ids"])
    np.testing.assert_allclose(by_text["scores"], by_ids["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(by_text["labels"], by_ids["labels"])


def test_predict_text_equals_in_python_merged_top_k(text_run, served, queries,
                                                    python_features):
    ref_s, ref_i = python_topk(*rundir.load_all(text_run), python_features, 5)
    out = served("saved_model.load", "predict_text", {"text": strings(queries)})
    assert topk_agree(out["label_ids"], out["scores"], ref_i, ref_s)


@pytest.mark.parametrize("loader", LOADERS)
def test_predict_examples_reads_the_text_feature(served, queries, loader):
    direct = served(loader, "predict_text", {"text": strings(queries)})
    out = served(loader, "predict_examples",
                 {"examples": strings(client.text_examples(queries))})
    np.testing.assert_array_equal(out["label_ids"], direct["label_ids"])


def test_serving_refuses_bytes_that_are_not_utf8(served):
    with pytest.raises(tf.errors.InvalidArgumentError, match="valid UTF-8"):
        served("saved_model.load", "predict_text", {"text": strings([b"ok", b"caf\xe9"])})
    with pytest.raises(tf.errors.InvalidArgumentError, match="valid UTF-8"):
        served("session", "predict_text", {"text": strings([b"caf\xe9"])})
    empty = served("session", "predict_text", {"text": strings([])})
    assert empty["label_ids"].shape == (0, 5)
    blank = served("session", "predict_text", {"text": strings(["", "!!!"])})
    np.testing.assert_array_equal(blank["label_ids"][0], blank["label_ids"][1])


def test_text_model_is_accurate_and_evaluates_through_the_export(text_run, text_export,
                                                                 text_data):
    from mach_tf.inference.evaluation import evaluate, popularity_baseline

    ours = evaluate(text_run, text_data["test"])
    floor = popularity_baseline(rundir.load_label_counts(text_run), text_data["test"])
    assert ours["p@1"] > floor["p@1"] + 0.3, (ours, floor)
    exported = evaluate(text_export.path, text_data["test"])
    assert exported["num_examples"] == 160
    for k in ("p@1", "p@3", "p@5"):
        assert exported[k] == pytest.approx(ours[k], abs=1e-9)


# -- export artifacts ----------------------------------------------------------------------
def test_export_info_and_warmup_include_text(text_export):
    path = text_export.path
    info = json.load(open(os.path.join(path, "assets.extra", "mach_tf.json")))
    plain = ["serving_default", "predict_examples", "predict_text"]
    assert info["signatures"] == [n + f for n in plain for f in ("", "_filtered")]
    assert info["config"]["text"]["char_ngrams"] == 3
    assert text_export.verified_queries == 64 + len(TEXT_PROBES)
    seen = replay_warmup(path)
    assert seen["predict_text"][:4] == [1, 2, 4, 8]
    assert set(seen) == {n + f for n in plain for f in ("", "_filtered")}
    assert seen["predict_text_filtered"] == [1, 8]


def test_featuriser_bug_in_the_graph_fails_the_export(tmp_path, text_run, monkeypatch):
    """The graph's featuriser is checked against the Python reference: an export whose
    graph weighs features differently (here: its document frequencies lost) is refused."""
    real = stitch.build_archive

    def forgetful(*args, featurizer=None, **kwargs):
        df, n = featurizer.statistics()
        featurizer.set_statistics(np.zeros_like(df), n)
        return real(*args, featurizer=featurizer, **kwargs)

    monkeypatch.setattr(stitch, "build_archive", forgetful)
    base = tmp_path / "mach"
    with pytest.raises(ExportError, match=r"(predict_examples|predict_text) "
                                          r"\(tf.saved_model.load\) differs"):
        export_model(text_run, str(base), top_k=5, warmup=False)
    assert os.listdir(base) == []


# -- clients -------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", client.LAYOUTS)
@pytest.mark.parametrize("loader", LOADERS)
def test_rest_bodies_with_raw_strings(served, queries, layout, loader):
    direct = served("saved_model.load", "predict_text", {"text": strings(queries)})
    body = json.loads(client.rest_json(queries, "predict_text", layout))
    assert body["signature_name"] == "predict_text"
    if layout == "columnar":
        assert body["inputs"] == {"text": queries}
    else:
        assert body["instances"][3] == {"text": queries[3]}
    feeds = decode_rest(body, served.input_dtypes["predict_text"])
    out = served(loader, "predict_text", {k: strings(v) for k, v in feeds.items()})
    np.testing.assert_array_equal(out["label_ids"], direct["label_ids"])
    examples = decode_rest(client.rest_body(queries, "predict_examples", layout, text=True),
                           served.input_dtypes["predict_examples"])
    out = served(loader, "predict_examples", examples)
    np.testing.assert_array_equal(out["label_ids"], direct["label_ids"])


def test_grpc_request_with_raw_strings(served, queries):
    from tensorflow_serving.apis import predict_pb2

    direct = served("saved_model.load", "predict_text", {"text": strings(queries)})
    req = client.grpc_request(queries, "predict_text", model_name="mach")
    wire = predict_pb2.PredictRequest.FromString(req.SerializeToString())
    assert wire.model_spec.signature_name == "predict_text"
    feeds = {k: tf.make_ndarray(v) for k, v in wire.inputs.items()}
    assert set(feeds) == {"text"}
    out = served("session", "predict_text", feeds)
    np.testing.assert_array_equal(out["label_ids"], direct["label_ids"])


def test_client_text_queries():
    assert client.text_queries("red shoes\n1,2\tblue hat") == ["red shoes", "blue hat"]
    assert client.text_queries([b"caf\xc3\xa9", "tea"]) == ["café", "tea"]
    with pytest.raises(client.DataFormatError, match=r":2: query is not valid UTF-8"):
        client.text_queries(["ok", b"caf\xe9"])
    with pytest.raises(ValueError, match="predict_text"):
        client.rest_body(["red"], "serving_default", text=True)


# -- predict --text ------------------------------------------------------------------------
def test_predict_text_lines(text_export, served, queries):
    out = io.StringIO()
    lines = [q.encode("utf-8") + b"\n" for q in queries[:10]] + [b"3,4\t" + b"red shoes\n"]
    assert predict_text_lines(text_export.path, lines, out, top_k=3) == 11
    answers = [json.loads(x) for x in out.getvalue().splitlines()]
    direct = served("saved_model.load", "predict_text",
                    {"text": strings(queries[:10] + ["red shoes"])})
    for a, ids, names in zip(answers, direct["label_ids"], direct["labels"]):
        assert a["label_ids"] == ids[:3].tolist()
        assert a["labels"] == [x.decode() for x in names[:3]]


def test_predict_text_answers_the_lines_before_a_fault(text_export, queries):
    out = io.StringIO()
    lines = [queries[0].encode() + b"\n", b"\n", b"caf\xe9\n", queries[1].encode() + b"\n"]
    with pytest.raises(DataFormatError, match=r"^<stdin>:3: not valid UTF-8"):
        predict_text_lines(text_export.path, lines, out)  # one batch: nothing sent yet
    assert len(out.getvalue().splitlines()) == 2


def test_sparse_queries_to_a_text_export_are_told_to_add_text(text_export):
    with pytest.raises(DataFormatError, match=r"<stdin>:1: malformed label id 'red'.*this "
                                              r"export takes text queries: add --text"):
        predict_lines(text_export.path, ["red running shoes\n"], io.StringIO())


def test_predict_text_refuses_a_sparse_export(tiny_export):
    with pytest.raises(ValueError, match="no predict_text signature"):
        predict_text_lines(tiny_export[0], ["red"], io.StringIO())


def test_cli_predict_text_names_a_bad_line(text_export, queries):
    stdin = (queries[0] + "\n" + "1,2\t" + queries[1] + "\n").encode() + b"caf\xe9\n"
    res = run_cli_bytes("predict", "--model", os.path.dirname(text_export.path), "--text",
                        "--batch-size", "1", "--top-k", "2", input_bytes=stdin)
    assert res.returncode == 1
    answers = [json.loads(x) for x in res.stdout.decode().splitlines()]
    assert len(answers) == 2 and all(len(a["label_ids"]) == 2 for a in answers)
    assert "<stdin>:3: not valid UTF-8" in res.stderr.decode()


def run_cli_bytes(*args, input_bytes):
    import subprocess
    import sys

    from tests.helpers import ROOT

    return subprocess.run([sys.executable, "-m", "mach_tf", *map(str, args)],
                          input=input_bytes, capture_output=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ))


# -- refusals ------------------------------------------------------------------------------
def test_text_and_sparse_data_do_not_mix(tmp_path, text_run, text_data, tiny_data,
                                         tiny_config):
    from mach_tf.data import config_for_data
    from mach_tf.launch.worker import train_worker

    with pytest.raises(rundir.RunDirError, match="holds sparse features but the run's model "
                                                 "reads raw text"):
        train_worker(text_run, tiny_data["train"])
    with pytest.raises(rundir.RunDirError, match="holds raw text .* model reads sparse"):
        train_worker(str(tmp_path / "sparse"), text_data["train"], config=tiny_config)
    with pytest.raises(ValueError, match="--char-ngrams apply to text data"):
        config_for_data(tiny_data["train"], char_ngrams=3)


def test_changed_or_missing_statistics_are_refused(tmp_path, text_run):
    copy = str(tmp_path / "run")
    shutil.copytree(text_run, copy)
    stats = os.path.join(copy, "text_statistics.npy")
    df = np.load(stats)
    df[0] += 1
    np.save(stats, df)
    with pytest.raises(rundir.RunDirError, match="text_statistics.npy: the document "
                                                 "frequencies differ"):
        export_model(copy, str(tmp_path / "m"))
    os.remove(stats)
    with pytest.raises(rundir.RunDirError, match="statistics are missing"):
        export_model(copy, str(tmp_path / "m"))


def test_rerun_reuses_the_statistics(text_run, text_data, monkeypatch):
    from mach_tf.data import config_for_data
    from mach_tf.launch.local import train
    from mach_tf.text import featurizer as text_lib

    def never(*a, **k):
        raise AssertionError("adapted again")

    monkeypatch.setattr(text_lib.TextFeaturizer, "adapt", never)
    before = open(os.path.join(text_run, rundir.CONFIG)).read()
    # the same settings asked again (not the recorded config): reused, nothing retrained
    config = config_for_data(text_data["train"], num_buckets=16, num_repetitions=4,
                             hidden_units=[32], epochs=3, batch_size=64, group_size=2,
                             learning_rate=3e-3, seed=1, text_features=4096, char_ngrams=3)
    summary = train(text_run, text_data["train"], None, config, log=lambda m: None)
    assert summary["skipped"] == [0, 1, 2, 3] and summary["trained"] == []
    assert open(os.path.join(text_run, rundir.CONFIG)).read() == before
    other = config.replace(text={**config.text, "char_ngrams": 4})
    with pytest.raises(rundir.RunDirError, match="different config"):
        train(text_run, text_data["train"], None, other, log=lambda m: None)


def test_demo_serving_check_for_text(text_run, text_export, text_data):
    from mach_tf.cli.demo import text_serving_check

    check = text_serving_check(text_export.path, text_run, text_data["test"], top_k=5, n=64)
    assert check == {"serving_check": True, "serving_queries": 64}


# -- a living catalogue: classes introduced by their names -----------------------------------
def test_extend_introduces_classes_by_their_names(tmp_path, text_run):
    from mach_tf.inference.scorer import MergedScorer
    from mach_tf.launch.extension import extend

    config = rundir.load_config(text_run)
    k = config.num_classes
    names = {k: "quokka lantern", k + 1: "zephyr marmalade"}
    titles = tmp_path / "titles.tsv"
    titles.write_text("".join(f"{c}\t{t}\n" for c, t in names.items() for _ in range(20)))
    out = str(tmp_path / "run2")
    report = extend(text_run, out, k + 2, None, class_text=str(titles), replay_ratio=0.5,
                    epochs=30, learning_rate=1e-2, early_stopping_patience=0,
                    log=lambda m: None)
    assert report["complete"] == 4 and report["extension"]["class_text"] == str(titles)
    config2, model = rundir.load_all(out)
    scorer = MergedScorer(config2, model)
    featurizer = load_featurizer(out, config2)
    assert config2.text == config.text  # the source's featuriser and statistics
    _, ids = scorer.topk(featurizer(tf.constant([t.encode() for t in names.values()])), 5)
    assert ids.numpy()[:, 0].tolist() == list(names)
    # A name is never held out for validation: it may be its class's only line.
    held = make_dataset(os.path.join(out, "extension", "valid"), 64, shuffle=False,
                        with_text=True)
    held_labels = {int(y) for batch in held for y in batch["labels"].values.numpy()}
    assert held_labels and not held_labels & set(names)
    bad = tmp_path / "bad.tsv"
    bad.write_text(f"{k + 5}\tsomething\n")
    with pytest.raises(ValueError, match=r"bad.tsv:1: label id .* out of range"):
        extend(text_run, str(tmp_path / "run3"), k + 2, None, class_text=str(bad),
               log=lambda m: None)


def test_text_export_retires_classes_in_every_text_signature(tmp_path, text_run, queries):
    from tests.helpers import serve_both_ways

    retired = [40, 47, 54, 1, 8]  # among the most frequent
    res = export_model(text_run, str(tmp_path / "mach"), top_k=5, decoder="candidates",
                       candidate_buckets=1, exclude_classes=retired)
    rng = np.random.default_rng(0)
    words = " ".join(queries[:64]).split()
    texts = queries + [" ".join(rng.choice(words, rng.integers(1, 6))) for _ in range(936)]
    feed = np.asarray([t.encode("utf-8") for t in texts], dtype=object)
    none = {"exclude_ids": np.full((len(texts), 1), -1, np.int64),
            "restrict_ids": np.full((len(texts), 1), -1, np.int64), "top_k": np.int32(0)}
    for run in serve_both_ways(res.path, ["predict_text", "predict_text_filtered"]):
        for loader in ("saved_model.load", "session"):
            for signature, extra in (("predict_text", {}), ("predict_text_filtered", none)):
                ids = run(loader, signature, {"text": feed, **extra})["label_ids"]
                assert ids.shape == (len(texts), 5) and (ids >= 0).all(), signature
                assert not np.isin(ids, retired).any(), (signature, loader)
