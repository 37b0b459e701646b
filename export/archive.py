"""The serving SavedModel's root object: its signatures and what they read, nothing else.

TensorFlow Serving, ``saved_model_cli`` and ``tf.saved_model.load(...).signatures`` read a
SavedModel through its signature defs, the variables and the resources (lookup tables)
those capture. :class:`SignatureArchive` traces each signature once and saves exactly
that: a plain ``tf.Module`` holding the captured variables and the tracked resources, and
the traced functions as signatures only.

It replaces ``keras.export.ExportArchive`` for the stitched run, whose contents mach-tf
owns (the stacked model, the decoder, the label table, the featuriser). Keras' archive
also attaches every endpoint to the saved object as a ``tf.function`` attribute, and
``tf.saved_model.save`` traces each such attribute again inside its save context (the
save options are part of the function cache's key): every serving signature was traced
twice, about a fifth of an export (a text run's six signatures, 2 CPU cores: the
SavedModel written in 6 to 8 s against 11 to 14 s). A user's encoder, which may hold lookup
tables only Keras' archive knows how to find, keeps Keras' archive
(:mod:`export.classifier_export`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf


class SignatureArchive:
    """Signatures traced once, saved as a SavedModel with what they capture.

    A resource a signature reads other than a variable (a ``tf.lookup`` table) must be
    passed to :meth:`track`; ``tf.saved_model.save`` refuses a function that captures an
    untracked one, naming it.
    """

    def __init__(self):
        self._functions: dict[str, tf.types.experimental.ConcreteFunction] = {}
        self._resources: list = []

    def track(self, resource) -> None:
        """Saves ``resource`` (a lookup table the signatures read) with the model."""
        self._resources.append(resource)

    def add_signature(self, name: str, fn: Callable,
                      input_signature: Sequence[tf.TensorSpec]) -> None:
        """Traces ``fn`` for ``input_signature`` (tensor specs named as the signature's
        inputs) and serves it as the signature ``name``."""
        if name in self._functions:
            raise ValueError(f"signature {name!r} is already in the archive")
        traced = tf.function(fn, input_signature=list(input_signature), autograph=False)
        self._functions[name] = traced.get_concrete_function()

    @property
    def signature_names(self) -> list[str]:
        return list(self._functions)

    def write_out(self, path: str) -> None:
        """Writes the SavedModel to ``path`` (a directory that must not hold one)."""
        if not self._functions:
            raise ValueError("an archive without signatures; call add_signature first")
        variables = {}
        for function in self._functions.values():
            for variable in function.variables:
                variables.setdefault(id(variable), variable)
        root = tf.Module()
        root.served_variables = list(variables.values())
        root.served_resources = list(self._resources)
        tf.saved_model.save(root, path, signatures=dict(self._functions))
