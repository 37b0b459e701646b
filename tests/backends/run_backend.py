"""Trains a tiny :class:`mach_tf.MachClassifier` under the Keras backend named by
``KERAS_BACKEND`` and prints one JSON line (``backend``, ``loss``, ``p@1``, ``chance``).

Imports only keras, numpy and the keras.ops modules of mach_tf (no TensorFlow unless it
is the backend), so ``tests/test_classifier.py`` runs it in a subprocess per backend:

    KERAS_BACKEND=jax python tests/backends/run_backend.py
"""

import json
import os
import sys

import numpy as np

# Run as a script: the checkout's root is importable without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402  (after sys.path)

from mach_tf.classifier import MachClassifier  # noqa: E402
from mach_tf.metrics import MergedNDCGAtK, MergedPrecisionAtK  # noqa: E402

NUM_CLASSES, DIM = 50, 16


def clustered(rng, centers, n):
    y = rng.integers(0, len(centers), n)
    x = centers[y] + 0.5 * rng.normal(size=(n, centers.shape[1]))
    return x.astype("float32"), y.reshape(-1, 1).astype("int64")


def main() -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(NUM_CLASSES, DIM))
    x, y = clustered(rng, centers, 1500)
    x_test, y_test = clustered(rng, centers, 300)
    encoder = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(32, activation="relu")])
    model = MachClassifier(encoder, NUM_CLASSES, num_buckets=16, num_repetitions=4, seed=1)
    args = dict(num_classes=NUM_CLASSES, num_buckets=16, num_repetitions=4, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  metrics=[MergedPrecisionAtK(1, **args), MergedNDCGAtK(3, **args)])
    history = model.fit(x, y, epochs=6, batch_size=50, verbose=0)
    ids, scores = model.predict_topk(x_test, k=3)
    print(json.dumps({
        "backend": keras.backend.backend(),
        "loss": float(history.history["loss"][-1]),
        "train_p@1": float(history.history["p@1"][-1]),
        "p@1": float(np.mean(ids[:, 0] == y_test[:, 0])),
        "scores_finite": bool(np.isfinite(scores).all()),
        "chance": 1.0 / NUM_CLASSES,
    }))


if __name__ == "__main__":
    main()
