"""Filtered decoding: a catalogue's excluded classes and a request's exclude_ids and
restrict_ids, for both decoders, against the unfiltered scores' top-k over the allowed
classes computed in numpy."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from mach_tf.config import MachConfig
from mach_tf.inference.decoder import MergedTopK, exact_scores
from mach_tf.inference.filters import read_class_ids
from mach_tf.inference.reference import filtered_topk_numpy
from tfrecords_tools.parse import DataFormatError

K, B, R = 600, 16, 4


def random_scores(rng, batch):
    z = rng.normal(size=(batch, R, B)).astype(np.float32) * 3
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def config():
    return MachConfig.from_data(K, 30, num_buckets=B, num_repetitions=R, seed=5)


def pad(rows, width=None):
    width = width or max([len(r) for r in rows] + [1])
    out = np.full((len(rows), width), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def reference(all_scores, k, excluded, exclude_rows, restrict_rows):
    """Per row: the top-k (scores, ids) of the allowed classes, ties to the smaller id."""
    out = []
    for i, scores in enumerate(all_scores):
        allowed = set(range(K)) - set(excluded) - set(exclude_rows[i])
        if restrict_rows[i]:
            allowed &= set(restrict_rows[i])
        ids = np.array(sorted(allowed), np.int64)
        order = np.lexsort((ids, -scores[ids]))[:k]
        out.append((scores[ids[order]], ids[order]))
    return out


def check(got, want, k):
    """Same scores bit for bit; the same classes except for the order among exact ties;
    padded with (-inf, -1) past the allowed classes."""
    for s, ids, (ws, wi) in zip(got[0].numpy(), got[1].numpy(), want):
        n = len(wi)
        np.testing.assert_array_equal(s[:n], ws)
        assert (ids[n:] == -1).all() and (s[n:] == -np.inf).all() and len(ids) == k
        strict = ws > ws[-1] if n else np.zeros(0, bool)
        assert set(ids[:n][strict].tolist()) == set(wi[strict].tolist())
        assert len(set(ids[:n].tolist())) == n


@pytest.mark.parametrize("decoder", ["exact", "candidates"])
def test_filters_equal_the_top_k_of_the_allowed_classes(config, decoder):
    rng = np.random.default_rng(0)
    excluded = rng.choice(K, 180, replace=False)
    batch, k = 1000, 10
    s = random_scores(rng, batch)
    exclude_rows = [rng.choice(K, rng.integers(0, 30), replace=False).tolist()
                    for _ in range(batch)]
    restrict_rows = [rng.choice(K, rng.integers(1, 40), replace=False).tolist()
                     if i % 3 == 0 else [] for i in range(batch)]
    layer = MergedTopK(K, config.hashing, k=k, decoder=decoder, candidate_buckets=2,
                       excluded_classes=excluded)
    got = layer(tf.constant(s), exclude_ids=tf.constant(pad(exclude_rows)),
                restrict_ids=tf.constant(pad(restrict_rows)))
    all_scores = exact_scores(tf.constant(s), config.hash_family.table(K)).numpy()
    if decoder == "exact":
        want = reference(all_scores, k, excluded, exclude_rows, restrict_rows)
    else:  # the allowed classes among the candidates of each row's first filling m
        want = filtered_topk_numpy(s, config.hash_family, K, decoder, 2, k, excluded,
                                   pad(exclude_rows), pad(restrict_rows))
        want = [(ws[wi >= 0], wi[wi >= 0]) for ws, wi in zip(*want)]
    check(got, want, k)
    ids = got[1].numpy()
    assert not np.isin(ids, excluded).any()
    free = np.array([not r for r in restrict_rows])
    assert (ids[free] >= 0).all()  # K minus the excluded leaves k for every free row
    for row, ex in zip(ids, exclude_rows):
        assert not set(row.tolist()) & set(ex)
    # A row's answer does not depend on the rest of its batch.
    for i in (0, 1, 2, 500):
        alone = layer(tf.constant(s[i:i + 1]), exclude_ids=tf.constant(pad(exclude_rows)[i:i + 1]),
                      restrict_ids=tf.constant(pad(restrict_rows)[i:i + 1]))
        np.testing.assert_array_equal(alone[1][0], got[1][i])


def test_candidates_take_more_buckets_only_for_the_rows_that_need_them(config):
    rng = np.random.default_rng(4)
    s = random_scores(rng, 64)
    excluded = rng.choice(K, 520, replace=False)  # 80 classes left: some rows must grow
    layer = MergedTopK(K, config.hashing, k=10, decoder="candidates", candidate_buckets=1,
                       excluded_classes=excluded)
    got = layer(tf.constant(s))
    want = filtered_topk_numpy(s, config.hash_family, K, "candidates", 1, 10, excluded)
    np.testing.assert_array_equal(got[0], want[0])
    assert (got[1].numpy() >= 0).all()
    plain = MergedTopK(K, config.hashing, k=10, decoder="candidates", candidate_buckets=1,
                       excluded_classes=excluded)(tf.constant(s[:1]))
    np.testing.assert_array_equal(plain[1][0], got[1][0])


@pytest.mark.parametrize("decoder", ["exact", "candidates"])
def test_nearly_everything_excluded_still_fills_k(config, decoder):
    rng = np.random.default_rng(1)
    keep = rng.choice(K, 12, replace=False)
    layer = MergedTopK(K, config.hashing, k=10, decoder=decoder, candidate_buckets=1,
                       excluded_classes=np.setdiff1d(np.arange(K), keep))
    ids = layer(tf.constant(random_scores(rng, 50)))[1].numpy()
    assert (ids >= 0).all() and np.isin(ids, keep).all()
    few = MergedTopK(K, config.hashing, k=20, decoder=decoder, candidate_buckets=1,
                     excluded_classes=np.setdiff1d(np.arange(K), keep))
    ids = few(tf.constant(random_scores(rng, 5)))[1].numpy()
    assert ((ids >= 0).sum(axis=1) == 12).all() and (ids[:, 12:] == -1).all()


@pytest.mark.parametrize("decoder", ["exact", "candidates"])
def test_restrict_to_one_class_returns_it(config, decoder):
    rng = np.random.default_rng(2)
    layer = MergedTopK(K, config.hashing, k=5, decoder=decoder, excluded_classes=[7])
    s = tf.constant(random_scores(rng, 4))
    restrict = pad([[42], [42, 42, -1], [7], [7, 3]])
    scores, ids = layer(s, restrict_ids=tf.constant(restrict))
    assert ids.numpy().tolist() == [[42, -1, -1, -1, -1], [42, -1, -1, -1, -1],
                                    [-1] * 5, [3, -1, -1, -1, -1]]
    exact = exact_scores(s, config.hash_family.table(K)).numpy()
    assert scores.numpy()[0, 0] == exact[0, 42] and scores.numpy()[3, 0] == exact[3, 3]


def test_excluded_classes_survive_a_keras_round_trip(tmp_path, config):
    layer = MergedTopK(K, config.hashing, k=5, decoder="candidates", excluded_classes=[9, 3])
    model = keras.Sequential([keras.Input((R, B)), layer])
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    s = random_scores(np.random.default_rng(3), 8)
    np.testing.assert_array_equal(model(s)[1], again(s)[1])
    assert again.layers[-1].excluded_classes == [3, 9]
    with pytest.raises(ValueError, match="excluded_classes"):
        MergedTopK(K, config.hashing, excluded_classes=[K])


def test_read_class_ids(tmp_path):
    path = tmp_path / "retired.txt"
    path.write_text("# sold out\n12\n\n3\n12  # twice\n")
    assert read_class_ids(str(path), 20).tolist() == [3, 12]
    path.write_text("1\n20\n")
    with pytest.raises(DataFormatError, match=r"retired.txt:2: class id 20 out of range"):
        read_class_ids(str(path), 20)
    path.write_text("1\nshoe\n")
    with pytest.raises(DataFormatError, match=r"retired.txt:2: malformed class id 'shoe'"):
        read_class_ids(str(path), 20)


def test_growing_candidates_graph_does_not_grow_with_the_buckets():
    """The sizes a short row grows through (m, 2m, ... B) are one loop in the graph: a
    decoder of 4,096 buckets traces no more ops than one of 16."""
    def traced_ops(num_buckets):
        config = MachConfig.from_data(K, 30, num_buckets=num_buckets, num_repetitions=R,
                                      seed=5)
        layer = MergedTopK(K, config.hashing, k=5, decoder="candidates",
                           candidate_buckets=1, excluded_classes=[3, 9])
        spec = tf.TensorSpec([None, R, num_buckets], tf.float32)
        graph = tf.function(layer, input_signature=[spec]).get_concrete_function().graph
        library = graph.as_graph_def().library.function
        return len(graph.get_operations()) + sum(len(f.node_def) for f in library)

    assert traced_ops(4096) == traced_ops(16)
