"""Where a training step's time goes, and how close its matmuls come to the machine's peak.

    python -m benchmarks.step_profile --json [--classes 100000 --features 20000]

One group of ``--group`` repetitions of the default config for K, D (hidden width
``--hidden``), one synthetic batch repeated from memory (so file reading is not timed).
In one run:

* ``fit_step_ms``: ``model.fit``'s median step with the default optimizer (``adam``: lazy
  rows for the sparse input kernel) and ``fit_step_dense_adam_ms`` with Keras' dense Adam
  (``adam_dense``), measured in alternating rounds; ``lazy_adam_speedup`` is their ratio;
  ``fit_step_rowwise_ms`` the same with ``adam_rowwise`` (the gathered input kernel by
  row-wise Adagrad), ``rowwise_speedup`` its ratio to ``adam``;
* the step's parts, each a ``tf.function`` timed alone (median): ``forward_ms`` (the
  network), ``loss_ms`` (forward plus the bucket loss, minus forward), ``backward_ms``
  (gradients, minus forward and loss), ``update_input_ms`` / ``update_dense_ms`` (the
  optimizer on the sparse input kernel / on everything else), and ``gemm_ms``: the dense
  layers' matmuls alone (forward and the two backward GEMMs at the step's shapes);
* ``matmul_peak_gflops``: a 2048^3 float32 ``tf.matmul`` in the same process;
* ``flop_efficiency``: the dense layers' FLOPs per step (``6 * batch * sum(in * out)`` per
  repetition) over ``fit_step_ms``, divided by the peak; ``gemm_efficiency``: the same
  FLOPs over ``gemm_ms`` (what the matmuls reach at these shapes on their own).
  ``gemm_share`` = ``gemm_ms / fit_step_ms`` says how much of the step is matmul at all.

With ``--epoch``, where a whole epoch of the default run goes instead, through the real
``mach_tf.train`` on real TFRecords (``--data PREFIX``, default the tagging-shaped synthetic
set of ``benchmarks.time_to_accuracy``: 50,000 labels, 20,000 features, 20,000 points),
one group of the default config (``--epochs`` epochs; early stopping runs but its patience
is the epoch count, so it never stops the group), under ``cProfile``:

* ``epoch_s``: the epoch's wall time, and its parts: ``steps_s`` (the ``fit`` steps, from
  the batch's start to its end: forward, backward, optimizer and any wait for input),
  ``merged_validation_s`` (``MergedValidation.compute``: the held-out points scored and
  merged), ``repetition_validation_s`` (the per-repetition validation scalars),
  ``checkpoint_s`` (``GroupCheckpoint.save``), ``early_stopping_s`` (early stopping,
  which keeps the weights of every improving epoch), ``tensorboard_s`` (Keras' TensorBoard
  callback and the merged scalars) and ``other_s`` (the rest: Keras' loop, other
  callbacks, Python);
* once per group: ``setup_s`` (split, validation sample, model build and compile),
  ``save_s`` (writing the repetitions);
* ``input_pipeline_epoch_s``: one epoch of the group's input pipeline read alone (it
  overlaps the steps in training, on the same cores);
* ``step_parts_ms``: the parts of a step on a batch held in memory (as above).

The last stdout line is one JSON object with the figures and every setting used.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import time

import numpy as np

from benchmarks import common
from benchmarks.step_timing import (dense_flops_per_step, fit_step_seconds, matmul_peak_gflops,
                                    synthetic_batch)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=100_000, help="K")
    p.add_argument("--features", type=int, default=20_000, help="D")
    p.add_argument("--hidden", type=int, default=128, help="H")
    p.add_argument("--group", type=int, default=None, help="G (default: the config's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30, help="fit steps per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shared-input-layer", action="store_true",
                   help="one sparse input layer per group (the config's shared_input_layer)")
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    p.add_argument("--epoch", action="store_true",
                   help="break an epoch of the default run into its parts instead")
    p.add_argument("--data", help="--epoch: training data prefix (default: the synthetic "
                                  "tagging-shaped set)")
    p.add_argument("--epochs", type=int, default=3, help="--epoch: epochs to profile")
    p.add_argument("--workdir", help="--epoch: keep data and run here (default: a "
                                     "temporary folder)")
    return p.parse_args(argv)


_say = functools.partial(common.say, "step_profile")


def _median_ms(f, repeats: int = 20) -> float:
    f()
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


def part_times(model, batch) -> dict:
    """Milliseconds of the step's parts (see module docstring)."""
    import tensorflow as tf

    from mach_tf.model.losses import bucket_loss

    x, y = batch
    variables = model.trainable_variables
    loss_kind = model.loss.kind

    def total(t):  # a scalar that needs every value without densifying IndexedSlices
        return tf.reduce_sum(t.values if isinstance(t, tf.IndexedSlices) else t)

    @tf.function(autograph=False)
    def forward():
        return tf.reduce_sum(model(x, training=True))

    @tf.function(autograph=False)
    def forward_loss():
        return tf.reduce_sum(bucket_loss(y, model(x, training=True), loss_kind))

    @tf.function(autograph=False)
    def gradients():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(bucket_loss(y, model(x, training=True), loss_kind))
        return tf.add_n([total(g) for g in tape.gradient(loss, variables)])

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(bucket_loss(y, model(x, training=True), loss_kind))
    grads = tape.gradient(loss, variables)
    kernels = {id(k) for k in model.sparse_input.kernels}
    first = [(g, v) for g, v in zip(grads, variables) if id(v) in kernels]
    rest = [(g, v) for g, v in zip(grads, variables) if id(v) not in kernels]
    opt = model.optimizer

    @tf.function(autograph=False)
    def update_input():
        opt.apply_gradients(first)

    @tf.function(autograph=False)
    def update_rest():
        opt.apply_gradients(rest)

    batch_size = int(x["feature_ids"].shape[0])
    widths = [model.hidden_units[0]] + model.hidden_units[1:] + [model.num_buckets]
    mats = []
    for i, o in zip(widths[:-1], widths[1:]):
        mats.append((tf.random.stateless_normal([model.groups, batch_size, i], [i, o]),
                     tf.random.stateless_normal([model.groups, i, o], [o, i]),
                     tf.random.stateless_normal([model.groups, batch_size, o], [i, i])))

    @tf.function(autograph=False)
    def gemms():
        out = []
        for h, w, dy in mats:  # forward, d/dinput, d/dkernel
            out += [tf.reduce_sum(tf.matmul(h, w)),
                    tf.reduce_sum(tf.matmul(dy, w, transpose_b=True)),
                    tf.reduce_sum(tf.matmul(h, dy, transpose_a=True))]
        return tf.add_n(out)

    fwd = _median_ms(forward)
    fwd_loss = _median_ms(forward_loss)
    grad = _median_ms(gradients)
    return {"forward_ms": fwd, "loss_ms": max(0.0, fwd_loss - fwd),
            "backward_ms": max(0.0, grad - fwd_loss), "update_input_ms": _median_ms(update_input),
            "update_dense_ms": _median_ms(update_rest), "gemm_ms": _median_ms(gemms)}


def epoch_profile(args) -> dict:
    """The ``--epoch`` breakdown (see module docstring)."""
    import cProfile
    import pstats

    from benchmarks.step_timing import StepTimer
    from benchmarks.time_to_accuracy import dataset_folder
    from mach_tf.data import config_for_data
    from mach_tf.launch.local import train
    from mach_tf.model.network import build_model, compile_model
    from mach_tf.training.callbacks import ResumableEarlyStopping
    from mach_tf.training.pipeline import epochs_dataset
    from mach_tf.training.validation import data_split, steps_per_epoch
    from tfrecords_tools.convert import convert

    with common.workdir(args.workdir, "step-profile-") as work:
        prefix = args.data
        if prefix is None:
            _, folder = dataset_folder("synthetic-tagging", work)
            prefix = os.path.join(work, "tfr", "train")
            if not os.path.exists(prefix + ".manifest.json"):
                convert(os.path.join(folder, "train.txt"), prefix)
        base = config_for_data(prefix, seed=args.seed)
        # Early stopping runs (it keeps each improving epoch's weights) but never stops.
        config = base.replace(num_repetitions=base.group_size, epochs=args.epochs,
                              early_stopping_patience=args.epochs, hashing=None,
                              shared_input_layer=args.shared_input_layer)
        run = os.path.join(work, "run")
        shutil.rmtree(run, ignore_errors=True)  # a kept workdir's earlier run is complete
        timer = StepTimer()
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        train(run, prefix, None, config, workers=1, verbose=0, log=lambda m: None,
              callbacks=[timer])
        prof.disable()
        total = time.perf_counter() - t0
        stats = pstats.Stats(prof)

        def cum(file_part: str, func: str) -> float:
            return sum(v[3] for (f, _, name), v in stats.stats.items()
                       if name == func and file_part in f)

        stopping = ResumableEarlyStopping.on_epoch_end.__code__
        early_stopping_s = sum(v[3] for (f, line, name), v in stats.stats.items()
                               if (f, line, name) == (stopping.co_filename,
                                                      stopping.co_firstlineno,
                                                      stopping.co_name))

        steps = float(np.sum(timer.segments[-1]))
        parts = {"merged_validation_s": cum("training/callbacks.py", "compute"),
                 "repetition_validation_s": cum("training/tensorboard.py", "on_epoch_end")
                 - cum("training/tensorboard.py", "compute"),
                 "checkpoint_s": cum("training/checkpoint.py", "save"),
                 "early_stopping_s": early_stopping_s,
                 "tensorboard_s": cum("keras/src/callbacks/tensorboard.py", "on_epoch_end")}
        fit_s = cum("training/checkpoint.py", "fit_resumable")
        setup_s = cum("training/group.py", "setup_group") + cum(
            "model/network.py", "build_model") + cum("model/network.py", "compile_model")
        save_s = cum("mach_tf/rundir.py", "save_repetition")
        epochs = args.epochs
        per = {k: v / epochs for k, v in parts.items()}
        epoch_s = fit_s / epochs  # fit_resumable: the epochs with their checkpoints
        other = epoch_s - steps / epochs - sum(per.values())
        # The input pipeline alone, one epoch.
        split = data_split(config, prefix)
        n_steps = steps_per_epoch(split, config.batch_size)
        group = list(range(config.group_size))
        ds = epochs_dataset(prefix, config.replace(epochs=1), group, 0, 0, n_steps,
                            record_filter=split.train_filter())
        t = time.perf_counter()
        for _ in ds:
            pass
        pipeline_s = time.perf_counter() - t
        # The parts of one step, on a batch from memory.
        keras_model = compile_model(build_model(config, group), config)
        keras_model.optimizer.build(keras_model.trainable_variables)
        batch = next(iter(ds))
        step_parts = part_times(keras_model, batch)
    return {"benchmark": "step_profile", "mode": "epoch", "data": args.data or
            "synthetic-tagging", "num_classes": config.num_classes,
            "num_features": config.num_features, "buckets": config.num_buckets,
            "hidden_units": config.hidden_units, "group": config.group_size,
            "shared_input_layer": config.shared_input_layer,
            "batch_size": config.batch_size, "steps_per_epoch": n_steps, "epochs": epochs,
            "total_s": round(total, 2), "epoch_s": round(epoch_s, 2),
            "steps_s": round(steps / epochs, 2),
            **{k: round(v, 2) for k, v in per.items()}, "other_s": round(other, 2),
            "setup_s": round(setup_s, 2), "save_s": round(save_s, 2),
            "input_pipeline_epoch_s": round(pipeline_s, 2),
            "step_ms": round(1000 * steps / max(1, len(timer.segments[-1])), 1),
            "step_parts_ms": {k: round(v, 2) for k, v in step_parts.items()}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.epoch:
        t0 = time.time()
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return common.emit(epoch_profile(args), t0)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from mach_tf.config import MachConfig
    from mach_tf.model.network import build_model, compile_model

    t0 = time.time()
    over = {"hidden_units": [args.hidden], "batch_size": args.batch_size, "seed": args.seed,
            "dropout": 0.5}
    if args.group:
        over["group_size"] = args.group
    if args.shared_input_layer:
        over["shared_input_layer"] = True
    config = MachConfig.from_data(args.classes, args.features, **over)
    group = list(range(min(config.group_size, config.num_repetitions)))
    batch = synthetic_batch(config, group, args.batch_size, args.seed)
    peak = matmul_peak_gflops()
    models = {}
    optimizers = ("adam", "adam_rowwise", "adam_dense")
    for opt in optimizers:
        keras.utils.set_random_seed(args.seed)
        models[opt] = compile_model(build_model(config.replace(optimizer=opt), group),
                                    config.replace(optimizer=opt))
    steps = {opt: [] for opt in optimizers}
    for r in range(args.rounds):
        for opt in optimizers if r % 2 == 0 else optimizers[::-1]:
            steps[opt].append(fit_step_seconds(models[opt], batch, args.steps))
            _say(args, f"round {r + 1}: {opt} {1000 * steps[opt][-1]:.1f} ms/step")
    fit_s = float(np.min(steps["adam"]))
    rowwise_s = float(np.min(steps["adam_rowwise"]))
    dense_s = float(np.min(steps["adam_dense"]))
    parts = part_times(models["adam"], batch)
    flops = dense_flops_per_step(config, args.batch_size, len(group))
    nnz = int(np.sum(np.asarray(batch[0]["feature_ids"]) >= 0))
    out = {"benchmark": "step_profile", "classes": args.classes, "features": args.features,
           "hidden_units": config.hidden_units, "buckets": config.num_buckets,
           "group": len(group), "shared_input_layer": config.shared_input_layer,
           "batch_size": args.batch_size, "nonzeros_per_batch": nnz,
           "dropout": config.dropout, "steps_per_round": args.steps, "rounds": args.rounds,
           "fit_step_ms": round(1000 * fit_s, 2),
           "fit_step_dense_adam_ms": round(1000 * dense_s, 2),
           "lazy_adam_speedup": round(dense_s / fit_s, 2),
           "fit_step_rowwise_ms": round(1000 * rowwise_s, 2),
           "rowwise_speedup": round(fit_s / rowwise_s, 2),
           **{k: round(v, 2) for k, v in parts.items()},
           "matmul_peak_gflops": round(peak, 1),
           "dense_gflop_per_step": round(flops / 1e9, 3),
           "flop_efficiency": round(flops / fit_s / 1e9 / peak, 3),
           "gemm_efficiency": round(flops / (parts["gemm_ms"] / 1000) / 1e9 / peak, 3),
           "gemm_share": round(parts["gemm_ms"] / (1000 * fit_s), 3)}
    return common.emit(out, t0)


if __name__ == "__main__":
    main()
