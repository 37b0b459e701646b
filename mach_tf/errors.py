"""The exceptions mach-tf raises for conditions a user or a launcher acts on.

Each names what is at fault (a file, a repetition, a worker) and what to do; the command
line prints the message as its one line of failure. Faults of input data files are
:mod:`tfrecords_tools`' own (``DataFormatError``, ``ManifestError``, ``ShardError``); a
refused export is ``export.ExportError``.
"""

from __future__ import annotations


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (and why): a different config, a
    missing, unfinished or foreign repetition, a damaged file, data it cannot take."""


class NonFiniteLossError(RuntimeError):
    """Training of a group diverged (its loss became NaN or infinite); the group gets no
    completion marker and the worker's other groups go on."""


class ClaimLost(RuntimeError):
    """This worker's claim on a repetition was taken over by another worker, so it stops
    without writing (see :mod:`mach_tf.launch.claims`)."""


class UnreadableCheckpointError(OSError):
    """Neither the latest nor the previous step checkpoint of a group can be loaded; the
    group is trained again from its start."""


class EncoderError(ValueError):
    """A user's encoder (``--encoder-file`` or ``--encoder``) that cannot be loaded, built or
    used on the data, naming where it came from."""
