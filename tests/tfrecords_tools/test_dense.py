"""Dense vectors (a .npy matrix and its label lines): a lossless float32 round trip read in
chunks of a memory map, every fault named with its file and row, --on-error skip accounting
for every row, the CLI, verify, and dense data refused by the sparse and text runs."""

import gzip
import json

import numpy as np
import pytest
from tensorflow.core.example import example_pb2, feature_pb2

from mach_tf.config import MachConfig
from mach_tf.data import check_data, config_for_data
from mach_tf.errors import RunDirError
from tests.helpers import run_cli
from tfrecords_tools import atomic, dense
from tfrecords_tools.convert import ShardedWriter, convert, serialize_dense_example, write_examples
from tfrecords_tools.dataset import make_dataset
from tfrecords_tools.dense import DenseReader, parse_label_line
from tfrecords_tools.manifest import (FORMAT_VERSION, Manifest, ManifestError, ShardError,
                                      manifest_path)
from tfrecords_tools.parse import DataFormatError
from tfrecords_tools.verification import verify


def write_data(tmp_path, x, label_lines, raw=None, name="emb"):
    feats = tmp_path / f"{name}.npy"
    labels = tmp_path / f"{name}.labels.txt"
    np.save(feats, x)
    labels.write_bytes(raw if raw is not None else
                       "".join(line + "\n" for line in label_lines).encode())
    return str(feats), str(labels)


def random_data(n=50, d=6, k=9, seed=0, dtype=np.float32):
    rs = np.random.RandomState(seed)
    x = (rs.randn(n, d) * 10).astype(dtype)
    labels = [sorted(rs.choice(k, rs.randint(0, 4), replace=False).tolist())
              for _ in range(n)]
    return x, labels, [",".join(map(str, ls)) for ls in labels]


def read_back(prefix, batch_size=7):
    emb, labels = [], []
    for b in make_dataset(prefix, batch_size):
        assert b["embedding"].dtype.name == "float32" and "feature_ids" not in b
        emb.append(b["embedding"].numpy())
        labels += b["labels"].to_list()
    return np.concatenate(emb), labels


def expect_fault(path, line, message, feats, labels, **kw):
    with pytest.raises(DataFormatError, match=message) as info:
        list(DenseReader(feats, labels, **kw))
    err = info.value
    assert err.path == path and err.line == line, str(err)
    assert str(err).startswith(f"{path}:{line}: " if line else f"{path}: ")
    return err


# -- round trip ----------------------------------------------------------------------------
def test_round_trip_in_order(tmp_path):
    x, labels, lines = random_data()
    feats, lab = write_data(tmp_path, x, lines)
    m = convert(feats, str(tmp_path / "d"), "dense", labels_path=lab)
    assert (m.num_examples, m.embedding_dim, m.num_features, m.num_labels) == (50, 6, 0, 9)
    assert m.source["format"] == "dense" and m.source["labels_path"] == lab
    emb, got = read_back(str(tmp_path / "d"))
    assert emb.shape == (50, 6) and np.array_equal(emb, x)
    assert got == labels


@pytest.mark.parametrize("compression", ["NONE", "GZIP"])
def test_round_trip_sharded(tmp_path, compression):
    x, labels, lines = random_data(n=83, d=5, seed=1, dtype=np.float64)
    feats, lab = write_data(tmp_path, x, lines)
    prefix = str(tmp_path / "s")
    m = convert(feats, prefix, "dense", num_shards=3, compression=compression,
                labels_path=lab, num_labels=20)
    assert m.shard_counts == [28, 28, 27] and m.num_labels == 20
    assert all(s.endswith(".tfrecord.gz" if compression == "GZIP" else ".tfrecord")
               for s in m.shards)
    emb, got = read_back(prefix, batch_size=10)
    assert emb.dtype == np.float32
    expected = sorted((r.tobytes(), tuple(ls)) for r, ls in zip(x.astype(np.float32), labels))
    assert sorted((r.tobytes(), tuple(ls)) for r, ls in zip(emb, got)) == expected


def test_float16_and_tolerated_label_lines(tmp_path):
    x = np.arange(12, dtype=np.float16).reshape(4, 3) / 4
    feats, lab = write_data(tmp_path, x, None, raw=b"\xef\xbb\xbf1,0\r\n   \n\t\n2 \n")
    points = list(DenseReader(feats, lab))
    assert [p.labels for p in points] == [[1, 0], [], [], [2]]
    assert all(p.embedding.dtype == np.float32 for p in points)
    assert np.array_equal(np.stack([p.embedding for p in points]), x.astype(np.float32))


def test_gzip_label_file(tmp_path):
    x, labels, lines = random_data(n=5)
    feats, _ = write_data(tmp_path, x, lines)
    gz = tmp_path / "labels.gz"
    gz.write_bytes(gzip.compress("".join(s + "\n" for s in lines).encode()))
    assert [p.labels for p in DenseReader(feats, str(gz))] == labels


@pytest.mark.parametrize("labels,embedding", [
    ([3, 0, 17], [0.5, -1.25, 3.4e38]),
    ([], [1.0]),
    ([2**40, 127, 128, 2**63 - 1], np.linspace(-1, 1, 300)),  # multi-byte varints, lengths
    ([-1], [float("nan"), float("inf")]),  # the schema's checks are the reader's, not here
])
def test_hand_written_records_are_the_protobuf_examples(labels, embedding):
    got = example_pb2.Example.FromString(serialize_dense_example(labels, np.array(embedding)))
    want = example_pb2.Example(features=feature_pb2.Features(feature={
        "embedding": feature_pb2.Feature(float_list=feature_pb2.FloatList(
            value=np.float32(embedding).tolist())),
        "labels": feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=labels))}))
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(
        deterministic=True)


# -- streaming -----------------------------------------------------------------------------
class _Recording:
    """A memory map that records the row slices read from it."""

    def __init__(self, mem, reads):
        self._mem, self.reads = mem, reads
        self.shape, self.dtype = mem.shape, mem.dtype

    def __getitem__(self, key):
        assert isinstance(key, slice), key
        self.reads.append((key.start, min(key.stop, self.shape[0])))
        return self._mem[key]

    def __array__(self, *a, **kw):
        raise AssertionError("the whole matrix was read")


def test_features_are_memory_mapped_and_read_in_chunks(tmp_path, monkeypatch):
    x, labels, lines = random_data(n=10, d=3)
    feats, lab = write_data(tmp_path, x, lines)
    real_load, reads, modes = np.load, [], []

    def load(path, *args, **kwargs):
        modes.append(kwargs.get("mmap_mode"))
        assert kwargs.get("mmap_mode") == "r", "np.load without a memory map"
        mem = real_load(path, *args, **kwargs)
        assert isinstance(mem, np.memmap)
        return _Recording(mem, reads)

    monkeypatch.setattr(dense.np, "load", load)
    points = list(DenseReader(feats, lab, chunk_rows=3))
    assert modes == ["r"]
    assert reads == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert np.array_equal(np.stack([p.embedding for p in points]), x)
    assert [p.labels for p in points] == labels
    # convert streams through the same reader
    m = convert(feats, str(tmp_path / "c"), "dense", labels_path=lab)
    assert m.num_examples == 10 and modes == ["r", "r"]


def test_default_chunk_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(dense, "CHUNK_BYTES", 4 * 4 * 5)  # five rows of four float32
    x, _, lines = random_data(n=12, d=4)
    feats, lab = write_data(tmp_path, x, lines)
    real_load, reads = np.load, []
    monkeypatch.setattr(dense.np, "load",
                        lambda p, **kw: _Recording(real_load(p, **kw), reads))
    assert len(list(DenseReader(feats, lab))) == 12
    assert reads == [(0, 5), (5, 10), (10, 12)]


# -- faults --------------------------------------------------------------------------------
def test_row_count_mismatch_names_both_counts(tmp_path):
    x, _, lines = random_data(n=5)
    feats, lab = write_data(tmp_path, x, lines[:3])
    err = expect_fault(feats, 4, "row 4 has no label line: .* has 3 lines but .* has 5 rows",
                       feats, lab)
    assert lab in str(err)
    feats, lab = write_data(tmp_path, x, lines + ["1", ""], name="long")
    err = expect_fault(lab, 6, "has 7 lines but .* has 5 rows .*an empty line is a row",
                       feats, lab)
    assert feats in str(err)
    # always fails, nothing written
    with pytest.raises(DataFormatError, match="has 7 lines"):
        convert(feats, str(tmp_path / "mm"), "dense", labels_path=lab, on_error="skip")
    assert not (tmp_path / "mm.manifest.json").exists()
    assert not list(tmp_path.glob("mm-*"))


@pytest.mark.parametrize("value,col,message", [
    (np.nan, 2, "NaN at column 3 of 4"),
    (np.inf, 0, "infinite value inf at column 1 of 4"),
    (-np.inf, 3, "infinite value -inf at column 4 of 4"),
])
def test_non_finite_values(tmp_path, value, col, message):
    x, _, lines = random_data(n=6, d=4)
    x[4, col] = value
    feats, lab = write_data(tmp_path, x, lines)
    expect_fault(feats, 5, message, feats, lab)


def test_float64_that_overflows_float32(tmp_path):
    x, _, lines = random_data(n=4, d=3, dtype=np.float64)
    x[1, 1] = 3.5e38
    feats, lab = write_data(tmp_path, x, lines)
    expect_fault(feats, 2, r"value 3\.5e\+38 at column 2 of 3 overflows float32", feats, lab)
    x[1, 1] = 3.4e38  # still float32's
    feats, lab = write_data(tmp_path, x, lines)
    assert len(list(DenseReader(feats, lab))) == 4


@pytest.mark.parametrize("array,message", [
    (np.zeros((3, 2), np.int64), "holds int64 values; expected a float dtype"),
    (np.zeros((3, 2), np.complex64), "holds complex64 values; expected a float dtype"),
    (np.zeros((3, 2), bool), "holds bool values"),
    (np.zeros(6, np.float32), r"shape \(6,\); expected a 2-D matrix"),
    (np.zeros((2, 3, 1), np.float32), r"shape \(2, 3, 1\); expected a 2-D"),
    (np.zeros((0, 3), np.float32), "empty matrix: no rows"),
    (np.zeros((3, 0), np.float32), "has no columns"),
    (np.array([[1.0], [None]], dtype=object), "holds object values"),
])
def test_wrong_dtype_or_rank(tmp_path, array, message):
    feats, lab = write_data(tmp_path, array, ["0"] * (len(array) or 1))
    expect_fault(feats, None, message, feats, lab)


def test_unreadable_features(tmp_path):
    _, lab = write_data(tmp_path, np.zeros((2, 2), np.float32), ["0", "1"])
    missing = str(tmp_path / "nope.npy")
    expect_fault(missing, None, "no such file", missing, lab)
    text = tmp_path / "x.txt"
    text.write_text("1 2 3\n")
    expect_fault(str(text), None, "not a .npy file", str(text), lab)
    npz = tmp_path / "x.npz"
    np.savez(npz, a=np.zeros((2, 2)))
    expect_fault(str(npz), None, "is a .npz archive", str(npz), lab)
    expect_fault(str(tmp_path), None, "is a directory", str(tmp_path), lab)
    whole = (tmp_path / "emb.npy").read_bytes()
    cut = tmp_path / "cut.npy"
    cut.write_bytes(whole[:-5])
    expect_fault(str(cut), None, "unreadable .npy file", str(cut), lab)
    feats = str(tmp_path / "emb.npy")
    missing = str(tmp_path / "nolabels.txt")
    expect_fault(missing, None, "no such file", feats, missing)


@pytest.mark.parametrize("line,message", [
    ("a", "malformed label id 'a'"),
    ("1.5", r"malformed label id '1\.5'"),
    ("1,,2", "empty label id"),
    ("1, 2", "malformed label id ' 2'"),
    ("-1", "negative label id -1"),
    ("3,1,3", "duplicate label id 3"),
    ("1 2", "malformed label id '1 2'"),
    ("\u0663", "non-ASCII character"),
    ("12", "label id 12 out of range: num_labels=10"),
])
def test_bad_label_lines(tmp_path, line, message):
    x, _, lines = random_data(n=5)
    lines[2] = line
    feats, lab = write_data(tmp_path, x, lines)
    expect_fault(lab, 3, message, feats, lab, num_labels=10)


def test_label_dimension_inferred_or_checked(tmp_path):
    x, _, _ = random_data(n=3)
    feats, lab = write_data(tmp_path, x, ["4", "", "17,2"])
    reader = DenseReader(feats, lab)
    list(reader)
    assert reader.dimensions() == (0, 18) and reader.dim == 6 and reader.num_rows == 3
    assert parse_label_line("  ") == [] and parse_label_line(" 3,1\t") == [3, 1]
    m = convert(feats, str(tmp_path / "k"), "dense", labels_path=lab, num_labels=30)
    assert m.num_labels == 30


# -- --on-error skip -----------------------------------------------------------------------
def test_skip_accounts_for_every_row(tmp_path):
    x, labels, lines = random_data(n=12, d=3, dtype=np.float64)
    x[1, 0] = np.nan
    x[6, 2] = 1e300
    lines[4] = "x"
    lines[9] = "99"
    feats, lab = write_data(tmp_path, x, lines)
    logged = []
    m = convert(feats, str(tmp_path / "sk"), "dense", labels_path=lab, num_labels=20,
                on_error="skip", log=logged.append)
    assert (m.num_examples, m.lines_read) == (8, 12)
    assert m.num_examples + len(m.skipped) == m.lines_read
    assert [s["line"] for s in m.skipped] == [2, 5, 7, 10]
    assert m.skipped[0]["reason"] == "emb.npy: NaN at column 1 of 3"
    assert m.skipped[1]["reason"].startswith("emb.labels.txt: malformed label id 'x'")
    assert "overflows float32" in m.skipped[2]["reason"]
    assert "label id 99 out of range" in m.skipped[3]["reason"]
    assert logged and "converted 8 and skipped 4 of 12" in logged[0]
    disk = json.loads(open(manifest_path(str(tmp_path / "sk"))).read())
    assert disk["skipped"] == m.skipped and disk["embedding_dim"] == 3
    keep = [i for i in range(12) if i not in (1, 4, 6, 9)]
    emb, got = read_back(str(tmp_path / "sk"))
    assert np.array_equal(emb, x[keep].astype(np.float32))
    assert got == [labels[i] for i in keep]


# -- manifest, verify ----------------------------------------------------------------------
def test_manifests_without_embedding_dim_still_load(tmp_path):
    prefix = str(tmp_path / "old")
    write_examples(prefix, [([0], [1], [0.5]), ([1], [0], [2.0])], 2, 2)
    d = json.loads(open(manifest_path(prefix)).read())
    assert "embedding_dim" not in d  # sparse manifests are written as before
    m = Manifest.load(prefix)
    assert m.embedding_dim is None and m.num_examples == 2
    assert "embedding" not in next(iter(make_dataset(prefix, 2)))
    for bad, message in ((0, "embedding_dim must be a positive integer"),
                         ("8", "embedding_dim must be a positive integer"),
                         (True, "embedding_dim must be a positive integer")):
        open(manifest_path(prefix), "w").write(json.dumps({**d, "embedding_dim": bad}))
        with pytest.raises(ManifestError, match=message):
            Manifest.load(prefix)
    open(manifest_path(prefix), "w").write(json.dumps({**d, "embedding_dim": 4, "text": True}))
    with pytest.raises(ManifestError, match="either text or dense embeddings"):
        Manifest.load(prefix)


def test_verify_dense_data(tmp_path):
    x, _, lines = random_data(n=20, d=4)
    feats, lab = write_data(tmp_path, x, lines)
    prefix = str(tmp_path / "v")
    convert(feats, prefix, "dense", num_shards=2, labels_path=lab)
    report = verify(prefix)
    assert report.ok and report.num_examples == 20
    # a shard whose records hold another embedding length (same size on disk: 4 floats
    # -> 4 floats, but the manifest now says 5) is named with its record
    d = json.loads(open(manifest_path(prefix)).read())
    open(manifest_path(prefix), "w").write(json.dumps({**d, "embedding_dim": 5}))
    with pytest.raises(ShardError, match=r"v-00000-of-00002\.tfrecord: record 0: record "
                                         r"holds an embedding of length 4, the manifest's "
                                         r"embedding_dim is 5"):
        verify(prefix)


def test_verify_names_a_record_with_a_bad_embedding(tmp_path):
    prefix = str(tmp_path / "hand")
    good = np.ones(3, np.float32)
    m = convert_records(prefix, [serialize_dense_example([0], good),
                                 serialize_dense_example([1], good),
                                 serialize_dense_example([1], np.ones(2, np.float32)),
                                 serialize_dense_example([5], good)], dim=3, num_labels=2)
    with pytest.raises(ShardError, match="record 2: record holds an embedding of length 2"):
        verify(m)
    report = verify(m, raise_on_fault=False)
    assert not report.ok and "record 2" in report.faults[0]


def convert_records(prefix, records, dim, num_labels):
    """A dense dataset of hand-made records (one shard)."""
    with ShardedWriter(prefix) as w:
        for r in records:
            w.write(r)
    m = Manifest(num_examples=len(records), num_features=0, num_labels=num_labels,
                 shards=w.names, shard_counts=w.counts, shard_bytes=w.sizes,
                 format_version=FORMAT_VERSION, embedding_dim=dim)
    atomic.write_json(manifest_path(prefix), m.to_dict())
    return Manifest.load(prefix)


# -- the CLI -------------------------------------------------------------------------------
def test_cli_converts_and_verifies(tmp_path):
    x, _, lines = random_data(n=9, d=4)
    feats, lab = write_data(tmp_path, x, lines)
    prefix = tmp_path / "cli"
    res = run_cli("convert", feats, prefix, "--format", "dense", "--labels", lab,
                  "--shards", "2", "--verify", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["num_examples"] == 9 and out["embedding_dim"] == 4 and out["verified"]
    res = run_cli("verify", prefix, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["ok"]


def test_cli_faults_and_usage_errors(tmp_path):
    x, _, lines = random_data(n=4, d=2)
    x[2, 1] = np.nan
    feats, lab = write_data(tmp_path, x, lines)
    res = run_cli("convert", feats, tmp_path / "bad", "--format", "dense", "--labels", lab)
    assert res.returncode == 1
    assert f"mach-tf convert: error: {feats}:3: NaN at column 2 of 2" in res.stderr
    res = run_cli("convert", feats, tmp_path / "bad", "--format", "dense")
    assert res.returncode == 2 and "--format dense needs --labels" in res.stderr
    res = run_cli("convert", lab, tmp_path / "bad", "--labels", lab)
    assert res.returncode == 2 and "--labels applies to --format dense only" in res.stderr
    with pytest.raises(ValueError, match="num_features does not apply to --format dense"):
        convert(feats, str(tmp_path / "nf"), "dense", labels_path=lab, num_features=3)
    with pytest.raises(ValueError, match="labels_path is required"):
        convert(feats, str(tmp_path / "nf"), "dense")


# -- dense data is for dense runs only -------------------------------------------------------
def test_runs_refuse_dense_data(tmp_path):
    x, _, lines = random_data(n=8, d=4)
    feats, lab = write_data(tmp_path, x, lines)
    prefix = str(tmp_path / "dd")
    convert(feats, prefix, "dense", labels_path=lab)
    sparse = MachConfig.from_data(9, 100, 8)
    with pytest.raises(RunDirError, match=r"dd\.manifest\.json: training data holds dense "
                                          r"embeddings .*embedding_dim=4.* but the run's "
                                          r"model reads sparse features"):
        check_data(sparse, prefix, "training")
    text = sparse.replace(text={})
    with pytest.raises(RunDirError, match="test data holds dense embeddings .* reads raw text"):
        check_data(text, prefix, "test")
    dense = config_for_data(prefix)  # a config sized to dense data reads dense vectors
    assert (dense.input_format, dense.num_features) == ("dense", 4)
    check_data(dense, prefix, "training")
    with pytest.raises(RunDirError, match="embedding_dim=4, the run's model reads vectors of "
                                          "num_features=5"):
        check_data(dense.replace(num_features=5), prefix, "training")
    with pytest.raises(ValueError, match="--word-ngrams apply to text data"):
        config_for_data(prefix, word_ngrams=2)
