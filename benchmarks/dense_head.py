"""A MACH head against a full softmax head on the same dense encoder.

``python -m benchmarks.dense_head --json`` on synthetic dense data: K classes, each a noisy
cluster in d = 256 dimensions (a random unit centre per class; a point is its class's centre
plus Gaussian noise, scaled to unit length), one label per point, the labels drawn from a
power law over the classes (class ``i`` with probability proportional to
``(i + 1) ** -alpha``). Both models share the encoder ``Input((d,)) -> Dense(h, relu)``
(same architecture, same initial weights) and train on the same points for the same
epochs and batch size:

* **mach**: ``MachClassifier(encoder, K)`` with its defaults for B and R (or ``--buckets``,
  ``--repetitions``) and its default ``compile()`` (Adam at Keras' default learning rate,
  :class:`~mach_tf.losses.MachLoss`; ``--merged-metric`` adds the merged P@1, which ranks
  all K classes at every step);
* **softmax**: the encoder followed by ``Dense(K)``, sparse categorical cross-entropy on
  the logits, Adam at the same learning rate.

Each is trained in its own child process (``spawn``), so its peak memory (``VmHWM``) is
its own. Reported for each: P@1 and P@5 on held-out points (MACH's merged top 5, the
softmax's top 5 logits, both scored with :func:`mach_tf.inference.ranking.precision_at_k`),
the head's parameters, the mean training step (a callback timing the train batches after
the first few), the training seconds and the peak memory; and the ratios
``p@1_vs_softmax``, ``head_param_ratio`` (softmax head / MACH head) and
``step_time_ratio`` (MACH step / softmax step). Goal: P@1 at least 0.9 of the softmax's
with at least 5 times fewer head parameters, at K = 100,000.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import keras
import numpy as np
from keras import ops

from benchmarks.common import emit, say
from benchmarks.peers import peak_rss_mb
from mach_tf import MachClassifier
from mach_tf.datasets.synthetic_dense import class_centres, sample_points
from mach_tf.inference.ranking import precision_at_k

#: ``points_per_class`` is N / K; ``alpha`` the power law's exponent, ``noise`` the
#: Gaussian noise's length relative to the unit centre. Sized so that both trainings
#: together take about 10 minutes on 2 shared cores at K = 100,000.
SETTINGS = {
    "default": {"classes": 100_000, "dim": 256, "hidden": 128, "train": 100_000,
                "test": 5_000, "alpha": 1.0, "noise": 1.0, "epochs": 2, "batch_size": 256},
    "small": {"classes": 5_000, "dim": 256, "hidden": 128, "train": 20_000, "test": 2_000,
              "alpha": 1.0, "noise": 1.0, "epochs": 3, "batch_size": 256},
}

#: Train batches left out of the mean step time (tracing, warm-up).
SKIP_STEPS = 5


def make_data(settings: dict, seed: int):
    """``(x_train, y_train, x_test, y_test)`` of ``settings``, all from ``seed``."""
    centres = class_centres(settings["classes"], settings["dim"], seed)
    kw = {"alpha": settings["alpha"], "noise": settings["noise"]}
    train = sample_points(centres, settings["train"], seed * 2 + 1, **kw)
    test = sample_points(centres, settings["test"], seed * 2 + 2, **kw)
    return (*train, *test)


def make_encoder(dim: int, hidden: int, seed: int):
    """``Input((dim,)) -> Dense(hidden, relu)`` with its initial weights from ``seed``."""
    return keras.Sequential([
        keras.Input((dim,)),
        keras.layers.Dense(hidden, activation="relu",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                           name="encoder_dense")], name="encoder")


class StepTimer(keras.callbacks.Callback):
    """Wall time of every train batch after the first ``skip``."""

    def __init__(self, skip: int = SKIP_STEPS):
        super().__init__()
        self.skip, self.times, self._t0, self._step = skip, [], 0.0, 0

    def on_train_batch_begin(self, batch, logs=None):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step > self.skip:
            self.times.append(time.perf_counter() - self._t0)

    def mean_ms(self) -> float | None:
        return round(1000 * float(np.mean(self.times)), 2) if self.times else None


def softmax_topk(model, x, k: int, batch_size: int = 512) -> np.ndarray:
    """The top ``k`` classes of every row of ``x`` by the model's logits, best first."""
    out = []
    for start in range(0, len(x), batch_size):
        logits = model.predict_on_batch(x[start:start + batch_size])
        out.append(ops.convert_to_numpy(ops.top_k(logits, k=k)[1]).astype(np.int64))
    return np.concatenate(out)


def run_model(kind: str, settings: dict, seed: int, quiet: bool) -> dict:
    """Trains and scores one model (``"mach"`` or ``"softmax"``); run in a child process."""
    args = argparse.Namespace(json=quiet)
    t0 = time.time()
    x, y, x_test, y_test = make_data(settings, seed)
    data_s = round(time.time() - t0, 1)
    keras.utils.set_random_seed(seed)
    k = settings["classes"]
    encoder = make_encoder(settings["dim"], settings["hidden"], seed)
    if kind == "mach":
        model = MachClassifier(encoder, k, num_buckets=settings.get("buckets"),
                               num_repetitions=settings.get("repetitions"), seed=seed)
        model.compile(metrics=model.merged_metrics(1) if settings.get("merged_metric")
                      else None)
        model.build((None, settings["dim"]))
        head_params = model.head.count_params()
        extra = {"buckets": model.num_buckets, "repetitions": model.num_repetitions}
        targets = y[:, None]
    else:
        head = keras.layers.Dense(k, kernel_initializer=keras.initializers.GlorotUniform(
            seed=seed + 1), name="softmax_head")
        model = keras.Sequential([encoder, head])
        model.compile(optimizer=keras.optimizers.Adam(),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        head_params = head.count_params()
        extra = {}
        targets = y
    lr = float(ops.convert_to_numpy(model.optimizer.learning_rate))
    timer = StepTimer()
    say("dense_head", args, f"{kind}: {head_params:,} head parameters, training")
    t1 = time.time()
    model.fit(x, targets, epochs=settings["epochs"], batch_size=settings["batch_size"],
              shuffle=True, verbose=0, callbacks=[timer])
    train_s = round(time.time() - t1, 1)
    t2 = time.time()
    if kind == "mach":
        topk, _ = model.predict_topk(x_test, k=5)
    else:
        topk = softmax_topk(model, x_test, 5)
    labels = [[int(c)] for c in y_test]
    out = {"p@1": round(precision_at_k(topk, labels, 1), 4),
           "p@5": round(precision_at_k(topk, labels, 5), 4),
           "head_params": int(head_params), "learning_rate": lr, **extra,
           "step_ms": timer.mean_ms(), "timed_steps": len(timer.times),
           "train_s": train_s, "predict_s": round(time.time() - t2, 1),
           "data_s": data_s, "peak_rss_mb": peak_rss_mb()}
    say("dense_head", args, f"{kind}: {out}")
    return out


def in_child(kind: str, settings: dict, seed: int, quiet: bool) -> dict:
    """:func:`run_model` in a fresh ``spawn`` process, so its peak memory is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_model, (kind, settings, seed, quiet))


def run_benchmark(settings: dict, seed: int, quiet: bool, log) -> dict:
    counts = np.bincount(make_data({**settings, "test": 0}, seed)[1],
                         minlength=settings["classes"])
    log(f"K={settings['classes']:,}, {settings['train']:,} training points: "
        f"{int((counts > 0).sum()):,} classes seen, {int((counts >= 8).sum()):,} with >= 8")
    mach = in_child("mach", settings, seed, quiet)
    softmax = in_child("softmax", settings, seed, quiet)
    p1_ratio = mach["p@1"] / softmax["p@1"] if softmax["p@1"] else None
    param_ratio = softmax["head_params"] / mach["head_params"]
    step_ratio = (mach["step_ms"] / softmax["step_ms"]
                  if mach["step_ms"] and softmax["step_ms"] else None)
    return {
        "benchmark": "dense_head", "settings": settings, "seed": seed,
        "classes_seen": int((counts > 0).sum()), "classes_with_8": int((counts >= 8).sum()),
        "mach": mach, "softmax": softmax,
        "p@1_vs_softmax": round(p1_ratio, 3) if p1_ratio is not None else None,
        "head_param_ratio": round(param_ratio, 3),
        "step_time_ratio": round(step_ratio, 3) if step_ratio is not None else None,
        "goals": {"p@1_vs_softmax>=0.9": bool(p1_ratio is not None and p1_ratio >= 0.9),
                  "head_param_ratio>=5": param_ratio >= 5,
                  "at_100000_classes": settings["classes"] >= 100_000},
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--small", action="store_true", help="K = 5,000: a quick check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="override the settings' epochs")
    p.add_argument("--buckets", type=int, help="MACH's B (default: MachClassifier's)")
    p.add_argument("--repetitions", type=int, help="MACH's R (default: MachClassifier's)")
    p.add_argument("--merged-metric", action="store_true",
                   help="compile MACH with the merged P@1 metric (ranks all K every step)")
    args = p.parse_args(argv)
    t0 = time.time()
    settings = dict(SETTINGS["small" if args.small else "default"])
    if args.epochs:
        settings["epochs"] = args.epochs
    for key in ("buckets", "repetitions", "merged_metric"):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    out = run_benchmark(settings, args.seed, args.json, lambda m: say("dense_head", args, m))
    return emit(out, t0)


if __name__ == "__main__":
    main()
