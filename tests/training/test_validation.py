"""The validation split, the merged validation metric and early stopping on it."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mach_tf import rundir
from mach_tf.config import MachConfig
from mach_tf.data import config_for_data, training_batches, training_dataset
from mach_tf.inference.ranking import RankingMetrics
from mach_tf.inference.reference import merged_topk_numpy
from mach_tf.model.network import bucket_scores, build_model, compile_model
from mach_tf.training.callbacks import (VALIDATION_EXACT_MAX_CLASSES, MergedValidation,
                                        bucket_scores_of, completed_scores, monitor_name,
                                        training_callbacks, validation_decoder)
from mach_tf.training.group import setup_group
from mach_tf.training import pipeline
from mach_tf.training.pipeline import epochs_dataset
from mach_tf.training.validation import (DataSplit, ValidationSample, data_split, load_sample,
                                         sample_budget)
from tfrecords_tools.dataset import make_dataset, make_record_dataset
from tfrecords_tools.manifest import Manifest


def _records(prefix, record_filter=None):
    """The (feature_ids, labels) of every record, as hashable tuples."""
    out = []
    for b in make_dataset(prefix, 128, record_filter=record_filter):
        for ids, labels in zip(b["feature_ids"].to_list(), b["labels"].to_list()):
            out.append((tuple(ids), tuple(labels)))
    return out


def test_carved_split_is_disjoint_complete_and_seeded(tiny_data, tiny_config):
    split = data_split(tiny_config.replace(validation_fraction=0.25), tiny_data["train"])
    assert split.carved and split.valid == tiny_data["train"]
    train = _records(split.train, split.train_filter())
    valid = _records(split.valid, split.valid_filter())
    everything = _records(tiny_data["train"])
    assert sorted(train + valid) == sorted(everything)
    assert not set(train) & set(valid)
    assert 0.18 < len(valid) / len(everything) < 0.32
    # The same held-out points in any read order (shuffled, other batch size) ...
    shuffled = []
    for b in make_dataset(split.valid, 7, shuffle=True, seed=5,
                          record_filter=split.valid_filter()):
        shuffled += [(tuple(i), tuple(y)) for i, y in zip(b["feature_ids"].to_list(),
                                                          b["labels"].to_list())]
    assert sorted(shuffled) == sorted(valid)
    # ... and other points under another seed.
    other = DataSplit(split.train, split.valid, split.fraction, seed=split.seed + 1)
    assert sorted(_records(other.valid, other.valid_filter())) != sorted(valid)


def test_separate_or_no_validation(tiny_data, tiny_config):
    split = data_split(tiny_config, tiny_data["train"], tiny_data["test"])
    assert not split.carved and split.train_filter() is None and split.valid_filter() is None
    sample = load_sample(split, 50)
    assert sample.num_examples == 50
    assert data_split(tiny_config.replace(validation_fraction=0.0), tiny_data["train"]).valid \
        is None
    assert load_sample(data_split(tiny_config.replace(validation_fraction=0.0),
                                  tiny_data["train"]), 50) is None


def test_sample_budget_bounds_cached_scores(tiny_config):
    big = tiny_config.replace(num_repetitions=16, num_buckets=4096,
                              validation_max_examples=100_000)
    n = sample_budget(big, bytes_budget=64 << 20)
    assert n * 16 * 4096 * 4 <= 64 << 20 and n >= 256
    assert sample_budget(tiny_config) == tiny_config.validation_max_examples


def _reference_metrics(config, models_by_rep, sample):
    """Merged P@k computed independently: numpy merge of every repetition's scores."""
    reps = sorted(models_by_rep)
    scores = []
    for inputs, _ in sample.batches:
        per = [bucket_scores(models_by_rep[r](inputs), config.loss, config.merge).numpy()
               for r in reps]
        scores.append(np.concatenate(per, axis=1))
    scores = np.concatenate(scores)
    table = config.hash_family.subset(reps).table(config.num_classes)
    _, ids = merged_topk_numpy(scores, table, 5)
    m = RankingMetrics([1, 3, 5])
    m.update(ids, sample.labels)
    return m.result()


def test_merged_metric_merges_group_with_completed_repetitions(tiny_run, tiny_data,
                                                               tiny_config):
    config = tiny_config
    split = data_split(config, tiny_data["train"])
    sample = load_sample(split, 120)
    # Repetitions 0 and 1 of the finished run act as "already complete"; a fresh group
    # model holds repetitions 2 and 3.
    done, done_scores = completed_scores(tiny_run, config, sample, exclude=[2, 3])
    assert done == [0, 1] and done_scores.shape == (sample.num_examples, 2,
                                                    config.num_buckets)
    group = build_model(config, [2, 3])
    cb = MergedValidation(config, sample, [2, 3], done, done_scores)
    cb.set_model(group)
    logs = {}
    cb.on_epoch_end(0, logs)
    singles = {r: rundir.load_repetition(tiny_run, r) for r in done}
    from mach_tf.model.network import split as split_group

    singles.update({r: m for r, m in zip([2, 3], split_group(group))})
    ref = _reference_metrics(config, singles, sample)
    ref_group = _reference_metrics(config, {r: singles[r] for r in (2, 3)}, sample)
    for k in ("p@1", "p@3", "p@5", "ndcg@5"):
        assert logs["merged_" + k] == pytest.approx(ref[k], abs=1e-9)
        assert logs["group_merged_" + k] == pytest.approx(ref_group[k], abs=1e-9)
    assert logs["merged_repetitions"] == 4
    assert monitor_name(config) == "group_merged_" + config.early_stopping_metric


def test_completed_scores_loads_each_repetition_once_per_worker(tiny_run, tiny_data,
                                                                tiny_config, monkeypatch):
    config = tiny_config
    sample = load_sample(data_split(config, tiny_data["train"]), 120)
    loaded = []
    real = rundir.load_repetitions

    def counting(run, reps=None, served=True, popularity_penalty=None):
        assert not served  # merged with the group in training: as trained, no penalty
        loaded.extend(reps)
        return real(run, reps, served, popularity_penalty)

    monkeypatch.setattr(rundir, "load_repetitions", counting)
    cache = {}
    first = completed_scores(tiny_run, config, sample, exclude=[2, 3], cache=cache)
    second = completed_scores(tiny_run, config, sample, exclude=[3], cache=cache)
    assert loaded == [0, 1, 2]  # a later group loads only the newly complete one
    plain = completed_scores(tiny_run, config, sample, exclude=[3])
    assert second[0] == plain[0] == [0, 1, 2] and first[0] == [0, 1]
    np.testing.assert_array_equal(second[1], plain[1])
    np.testing.assert_array_equal(first[1], plain[1][:, :2])
    # Each repetition scored alone gives the scores of the run's stacked model.
    _, stacked = rundir.load_all(tiny_run, [0, 1, 2], served=False)
    np.testing.assert_allclose(plain[1], bucket_scores_of(stacked, config, sample),
                               rtol=1e-5, atol=1e-6)  # (the batched matmul's rounding)
    # Another sample (another run, split or budget) starts the cache afresh.
    del loaded[:]
    other = load_sample(data_split(config, tiny_data["train"]), 60)
    completed_scores(tiny_run, config, other, exclude=[3], cache=cache)
    assert loaded == [0, 1, 2]


def _count_first_arguments(monkeypatch, module, name: str) -> list:
    """Wraps ``module.name`` to record the first argument of every call (the list)."""
    calls, real = [], getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def test_a_worker_reads_its_validation_sample_once(tiny_run, tiny_data, tiny_config,
                                                   monkeypatch):
    import mach_tf.training.group as group_training

    reads = _count_first_arguments(monkeypatch, group_training, "load_sample")
    cache = {}
    setups = [setup_group(build_model(tiny_config, reps), tiny_config, reps,
                          tiny_data["train"], run=tiny_run, worker_cache=cache)
              for reps in ([0, 1], [2, 3])]
    assert len(reads) == 1 and setups[0].sample is setups[1].sample
    assert setups[1].done_repetitions == [0, 1]


class _ForgetAfter(keras.callbacks.Callback):
    """From epoch `start` on, zero the bucket layer before the merged validation runs.

    Uniform bucket scores rank every class the same, so the merged metric of those epochs
    falls below any trained epoch's on every machine, whatever its floating-point results
    for the trained ones: early stopping must then stop `patience` epochs after the best.
    """

    def __init__(self, start):
        super().__init__()
        self.start = start

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.start:
            for w in self.model.output_layer.weights:
                w.assign(np.zeros(w.shape, w.dtype))


def test_early_stopping_keeps_the_best_merged_epoch(tmp_path, tiny_data, tiny_config):
    config = tiny_config.replace(epochs=12, early_stopping_patience=2, learning_rate=0.01,
                                 dropout=0.0, validation_fraction=0.3, num_repetitions=2,
                                 hidden_units=[64])
    reps = [0, 1]
    keras.utils.set_random_seed(config.seed)
    model = build_model(config, reps)
    setup = setup_group(model, config, reps, tiny_data["train"], run=str(tmp_path / "run"))
    compile_model(model, config, setup.steps)
    monitor = [c for c in setup.callbacks if isinstance(c, MergedValidation)][0]
    batches = epochs_dataset(tiny_data["train"], config, reps, 0, 0, setup.steps,
                             record_filter=setup.split.train_filter())
    forget = 4
    hist = model.fit(batches, epochs=config.epochs, steps_per_epoch=setup.steps,
                     callbacks=[_ForgetAfter(forget)] + setup.callbacks, verbose=0,
                     shuffle=False)
    metric = config.early_stopping_metric
    seen = [h["group"][metric] for h in monitor.history]
    assert hist.history[monitor_name(config)] == pytest.approx(seen)
    best = int(np.argmax(seen))
    assert best < forget and max(seen[forget:]) < seen[best]
    # It stopped early, exactly `patience` epochs after the best one.
    assert len(seen) - 1 - best == config.early_stopping_patience
    # The weights kept are the best epoch's: scoring them again gives the best value.
    assert monitor.compute()["group"][metric] == pytest.approx(seen[best], abs=1e-9)


class _Interrupt(Exception):
    pass


class _KillAt(keras.callbacks.Callback):
    """Stands for a worker killed right after global step `step` was checkpointed."""

    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            raise _Interrupt()


@pytest.mark.parametrize("saves", ["every 2 steps", "off the epoch ends"])
def test_early_stopping_resumes_its_state_after_a_restart(tmp_path, tiny_data, tiny_config,
                                                          saves):
    """Killed mid-epoch after the best epoch: the rerun stops at the same epoch and keeps
    the same best weights as an uninterrupted run (best epoch's file kept on disk, the
    patience counter replayed from the checkpoint's history), not the weights of an
    epoch after the kill. With checkpoints every ``steps + 1`` steps no epoch's end has
    one: the best epoch's weights are written from early stopping's memory instead."""
    from mach_tf.training.checkpoint import GroupCheckpoint, fit_resumable
    from mach_tf.training.group import best_epoch_summary

    config = tiny_config.replace(epochs=12, early_stopping_patience=2, learning_rate=0.01,
                                 dropout=0.0, validation_fraction=0.3, num_repetitions=2,
                                 hidden_units=[64])
    reps, forget = [0, 1], 4

    def attempt(ckpt_dir, after=()):
        keras.utils.set_random_seed(config.seed)
        model = build_model(config, reps)
        setup = setup_group(model, config, reps, tiny_data["train"],
                            cache_dir=str(tmp_path / "cache"))
        compile_model(model, config, setup.steps)
        hist, info = fit_resumable(
            model, lambda first, skip: epochs_dataset(
                tiny_data["train"], config, reps, first, skip, setup.steps,
                record_filter=setup.split.train_filter()),
            steps_per_epoch=setup.steps, epochs=config.epochs, checkpoint_dir=ckpt_dir,
            callbacks=[_ForgetAfter(forget)] + setup.callbacks, after_checkpoint=after,
            every_steps=2 if saves == "every 2 steps" else setup.steps + 1, every_seconds=0)
        return model, setup, hist, info

    ref, ref_setup, ref_hist, _ = attempt(str(tmp_path / "ref"))
    monitor = monitor_name(config)
    values = ref_hist[monitor]
    best = int(np.argmax(values))
    assert best < forget and len(values) - 1 - best == config.early_stopping_patience

    ckpt_dir = str(tmp_path / "killed")
    steps = ref_setup.steps
    kill_at = forget * steps + steps // 2 + 1  # mid-epoch `forget`, after the best epoch
    with pytest.raises(_Interrupt):
        attempt(ckpt_dir, after=[_KillAt(kill_at)])
    state = GroupCheckpoint(ckpt_dir).state()
    assert (state["epoch"], state["finished"]) == (forget, False)
    # Two mid-epoch checkpoints came after the best epoch's end; its file is still kept.
    assert str(best) in state["epoch_ends"]
    assert state["epoch_ends"][str(best)] not in (state["weights"], state["previous"])
    if saves == "off the epoch ends":
        saved = [int(f[5:14]) for f in os.listdir(ckpt_dir) if f.startswith("ckpt-")]
        assert saved and all(g % steps for g in saved)  # no save fell on an epoch's end
        assert state["epoch_ends"] == {str(best): f"epoch-{best:06d}.weights.npz"}

    model, setup, hist, info = attempt(ckpt_dir)
    assert info["resumed_from"]["global_step"] == state["global_step"] > forget * steps
    assert "lost_best_weights" not in info
    # Stopped at the same epoch, with the same best one. (Across the two trainings, allow
    # for float rounding: another machine need not be bit-reproducible between runs.)
    assert len(hist[monitor]) == len(values) and int(np.argmax(hist[monitor])) == best
    assert hist[monitor] == pytest.approx(values, abs=0.01)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-3)
    # The weights kept are the best epoch's, from its kept file: scoring them gives the
    # value that epoch logged (before the kill) exactly.
    mv = [c for c in setup.callbacks if isinstance(c, MergedValidation)][0]
    assert mv.compute()["group"][config.early_stopping_metric] == pytest.approx(
        hist[monitor][best], abs=1e-9)
    # The completion summary sees every epoch, those before the kill included.
    summary, ref_summary = best_epoch_summary(hist, config), best_epoch_summary(ref_hist,
                                                                                config)
    assert summary["best_epoch"] == ref_summary["best_epoch"] == best + 1
    assert summary["group_validation"] == pytest.approx(ref_summary["group_validation"],
                                                        abs=0.01)
    assert summary["group_validation"][config.early_stopping_metric] == hist[monitor][best]


def test_plateau_schedule_replays_its_counters_after_a_restart():
    from mach_tf.training.callbacks import ResumablePlateau

    values = [0.1, 0.2, 0.2, 0.19, 0.18, 0.3, 0.3, 0.29, 0.28, 0.27, 0.31, 0.3, 0.3, 0.3]

    def model(lr):
        m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        m.compile(keras.optimizers.Adam(lr), "mse")
        return m

    def make():
        return ResumablePlateau(monitor="m", factor=0.5, patience=2, cooldown=1,
                                min_lr=0.01 / 8)

    live = make()
    live.set_model(model(0.01))
    live.on_train_begin()
    history, states = {"m": [], "learning_rate": []}, []
    for e, v in enumerate(values):
        logs = {"m": v}
        live.on_epoch_end(e, logs)
        history["m"].append(v)
        history["learning_rate"].append(logs["learning_rate"])
        states.append((live.wait, live.best, live.cooldown_counter,
                       float(live.model.optimizer.learning_rate)))
    rates = [s[3] for s in states]
    assert min(rates) == pytest.approx(0.01 / 8) and len(set(rates)) == 4  # it lowered
    for k in range(1, len(values)):
        resumed = make()
        resumed.set_model(model(states[k - 1][3]))  # the optimizer state of the checkpoint
        assert resumed.resume({n: h[:k] for n, h in history.items()})
        resumed.on_train_begin()  # the fit after the restart keeps the replayed state
        assert (resumed.wait, resumed.best, resumed.cooldown_counter) == states[k - 1][:3]
        for e in range(k, len(values)):
            resumed.on_epoch_end(e, {"m": values[e]})
            assert float(resumed.model.optimizer.learning_rate) == pytest.approx(states[e][3])


def test_no_validation_means_no_callbacks(tiny_config):
    assert training_callbacks(tiny_config, None, [0]) == []


def test_plateau_schedule_lowers_the_rate(tiny_config, tiny_data):
    config = tiny_config.replace(lr_schedule="plateau", early_stopping_patience=0)
    sample = load_sample(data_split(config, tiny_data["train"]), 40)
    kinds = [type(c) for c in training_callbacks(config, sample, [0])]
    assert kinds[0] is MergedValidation and issubclass(kinds[1],
                                                       keras.callbacks.ReduceLROnPlateau)
    kinds = [type(c) for c in training_callbacks(
        config.replace(lr_schedule="constant", early_stopping_patience=3), sample, [0])]
    assert kinds[0] is MergedValidation and issubclass(kinds[1],
                                                       keras.callbacks.EarlyStopping)


def test_run_records_split_and_best_epoch(tiny_run):
    info = rundir.read_json(f"{tiny_run}/validation.json")
    assert info["carved"] and info["num_scored"] > 0
    marker = rundir.completion(tiny_run, 0)
    assert 1 <= marker["best_epoch"] <= marker["epochs"]
    assert marker["monitor"] == "group_merged_ndcg@5"
    assert 0.0 <= marker["merged_validation"]["p@1"] <= 1.0
    assert 0.0 <= marker["group_validation"]["ndcg@5"] <= 1.0


def test_cosine_schedule_decays_to_zero(tiny_config):
    from mach_tf.model.optimizers import make_optimizer

    opt = make_optimizer(tiny_config.replace(lr_schedule="cosine", epochs=4), 10)
    opt.build([keras.Variable(np.zeros(2, np.float32))])
    assert float(opt.learning_rate) == pytest.approx(tiny_config.learning_rate)
    opt.iterations.assign(40)  # 4 epochs of 10 steps
    assert float(opt.learning_rate) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        make_optimizer(tiny_config.replace(lr_schedule="cosine"))


def test_full_merge_equals_the_evaluation_scorer(tiny_run, tiny_data, tiny_config):
    """With every repetition, the merged metric is what evaluation computes."""
    from mach_tf.inference.scorer import MergedScorer

    sample = load_sample(data_split(tiny_config, tiny_data["train"]), 80, batch_size=16)
    config, stacked = rundir.load_all(tiny_run)
    cb = MergedValidation(config, sample, list(range(config.num_repetitions)))
    cb.set_model(stacked)
    got = cb.compute()["run"]
    scorer = MergedScorer(config, stacked, "exact")
    ref = RankingMetrics([1, 3, 5])
    for inputs, labels in sample.batches:
        ref.update(scorer.topk(inputs, 5)[1].numpy(), labels)
    for k in ("p@1", "p@3", "p@5", "ndcg@5"):
        assert got[k] == pytest.approx(ref.result()[k], abs=1e-9)


@pytest.mark.parametrize("in_memory", [True, False])
def test_epochs_dataset_gives_each_epoch_its_own_seeded_batches(tiny_data, tiny_config,
                                                                in_memory, monkeypatch):
    """The epochs are built as one pipeline, yet epoch e is exactly the first ``steps``
    batches of the stream shuffled with seed ``config.seed + e``, and a resumed pipeline
    (``first``, ``skip``) continues with the same batches. In memory (small data) the
    stream is the records read once in file order, shuffled in full; else it is read from
    the files each epoch."""
    if not in_memory:
        monkeypatch.setattr(pipeline, "CACHE_MAX_BYTES", 0)
    assert pipeline.in_memory(tiny_data["train"]) is in_memory
    config, reps, steps = tiny_config.replace(epochs=3), [0, 1], 4
    split = data_split(config, tiny_data["train"])
    keep = split.train_filter()
    n = Manifest.load(tiny_data["train"]).num_examples
    expected = []
    for e in range(config.epochs):
        if in_memory:
            records = make_record_dataset(tiny_data["train"], record_filter=keep).shuffle(
                n, seed=config.seed + e, reshuffle_each_iteration=True).repeat()
            ds = training_batches(records, config, reps)
        else:
            ds = training_dataset(tiny_data["train"], config, reps, shuffle=True,
                                  seed=config.seed + e, repeat=True, record_filter=keep)
        expected += [(x["feature_ids"].numpy(), y.numpy()) for x, y in ds.take(steps)]
    got = [(x["feature_ids"].numpy(), y.numpy()) for x, y in epochs_dataset(
        tiny_data["train"], config, reps, 0, 0, steps, record_filter=keep)]
    resumed = [(x["feature_ids"].numpy(), y.numpy()) for x, y in epochs_dataset(
        tiny_data["train"], config, reps, 1, 2, steps, record_filter=keep)]
    assert len(got) == len(expected) == config.epochs * steps
    for (gx, gy), (ex, ey) in zip(got, expected):
        np.testing.assert_array_equal(gx, ex)
        np.testing.assert_array_equal(gy, ey)
    assert len(resumed) == 2 * steps - 2
    for (rx, _), (ex, _) in zip(resumed, expected[steps + 2:]):
        np.testing.assert_array_equal(rx, ex)
    # Every epoch sees each training record at most once before the stream repeats.
    first_epoch = [tuple(np.sort(r[r >= 0])) for x, _ in got[:steps] for r in x]
    assert len(set(first_epoch)) == len(first_epoch)


def test_merged_validation_decodes_by_candidates_only_for_large_catalogues():
    assert validation_decoder(VALIDATION_EXACT_MAX_CLASSES) == "exact"
    assert validation_decoder(VALIDATION_EXACT_MAX_CLASSES + 1) == "candidates"
    sample = ValidationSample([])
    for k, want in ((1000, "exact"), (VALIDATION_EXACT_MAX_CLASSES + 1, "candidates")):
        config = MachConfig.from_data(k, 50, num_buckets=64, num_repetitions=2,
                                      hidden_units=[8])
        mv = MergedValidation(config, sample, [1], [0], np.zeros((0, 1, 64), np.float32))
        assert mv.run_decoder.decoder == mv.group_decoder.decoder == want


def _concatenation_depth(ds) -> int:
    """The most concatenation layers an element of ``ds`` passes through."""
    inputs = ds._inputs()
    own = 1 if "Concatenate" in type(ds).__name__ else 0
    return own + max((_concatenation_depth(d) for d in inputs), default=0)


def test_epochs_are_concatenated_in_order_through_a_few_layers():
    """Sixty epochs chained one after the other would pass the first epoch's elements
    through 59 concatenation layers (a tenth of delicious' training time went to that);
    the balanced concatenation keeps the order with at most ceil(log2(60)) = 6."""
    streams = [tf.data.Dataset.range(3 * i, 3 * i + 3) for i in range(60)]
    ds = pipeline._concatenate(streams)
    assert list(ds.as_numpy_iterator()) == list(range(180))
    assert _concatenation_depth(ds) == 6
    assert list(pipeline._concatenate(streams[:1]).as_numpy_iterator()) == [0, 1, 2]


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_parsed_records_gather_the_batches_parsing_gives(kind, tiny_data, tiny_config,
                                                         dense_data):
    """A group's training data held parsed in memory gives, for any record numbers, the
    inputs and bucket targets that parsing and hashing those records gives."""
    if kind == "sparse":
        train, config = tiny_data["train"], tiny_config
    else:
        train = dense_data["train"]
        config = config_for_data(train, seed=3)
    reps = [1, 0]
    keep = data_split(config, train).train_filter()
    records = list(make_record_dataset(train, record_filter=keep).as_numpy_iterator())
    table = pipeline.ParsedRecords(pipeline.parse_records(Manifest.load(train), config,
                                                          record_filter=keep), config, reps)
    assert table.size == len(records)
    numbers = np.random.default_rng(0).permutation(len(records))[:37]
    got_inputs, got_targets = table.batch(tf.constant(numbers, tf.int64))
    expected = training_batches(tf.data.Dataset.from_tensor_slices(
        [records[i] for i in numbers]), config, reps, batch_size=len(numbers))
    want_inputs, want_targets = next(iter(expected))
    assert sorted(got_inputs) == sorted(want_inputs)
    for key in want_inputs:
        np.testing.assert_array_equal(got_inputs[key].numpy(), want_inputs[key].numpy())
    np.testing.assert_array_equal(got_targets.numpy(), want_targets.numpy())
    assert got_targets.shape[1] == len(reps)


@pytest.mark.parametrize("in_memory", [True, False])
def test_the_training_input_runs_without_an_autotuning_thread(tiny_data, tiny_config,
                                                              in_memory, monkeypatch):
    """Destroying an iterator waits for its autotuning thread's current sleep, which grows
    with the iterator's age: a group's training iterator, alive for its whole fit, held
    every group's end for 3 to 70 s. The training input runs without one."""
    if not in_memory:
        monkeypatch.setattr(pipeline, "CACHE_MAX_BYTES", 0)
    ds = epochs_dataset(tiny_data["train"], tiny_config.replace(epochs=2), [0, 1], 0, 0, 3)
    assert ds.options().autotune.enabled is False
    assert len(list(ds)) == 6


def test_a_worker_parses_its_training_data_once(tiny_data, tiny_config, monkeypatch):
    """A worker's later groups gather their batches from the records its first group
    parsed (each with its own repetitions' buckets), and another split parses again."""
    config, steps = tiny_config.replace(epochs=2), 3
    keep = data_split(config, tiny_data["train"]).train_filter()
    reads = _count_first_arguments(monkeypatch, pipeline, "make_record_dataset")
    kept = {}

    def batches(reps, key="split", cache=kept):
        return [(x["feature_ids"].numpy(), y.numpy()) for x, y in epochs_dataset(
            tiny_data["train"], config, reps, 0, 0, steps, record_filter=keep, kept=cache,
            kept_key=key)]

    first = batches([0, 1])
    second = batches([2, 3])
    assert len(reads) == 1
    for (gx, gy), (ex, ey) in zip(second, batches([2, 3], cache=None)):
        np.testing.assert_array_equal(gx, ex)
        np.testing.assert_array_equal(gy, ey)
    assert any((a[1] != b[1]).any() for a, b in zip(first, second))  # their own buckets
    assert len(reads) == 2  # (the uncached reference read the files itself)
    batches([0, 1], key="another split")
    assert len(reads) == 3
