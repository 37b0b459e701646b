"""The ``mach-tf`` command line (console script ``mach-tf = mach_tf.cli:main``, also
``python -m mach_tf``): :mod:`~mach_tf.cli.parser` (arguments), :mod:`~mach_tf.cli.commands`
(one library call each), :mod:`~mach_tf.cli.main` (exit codes, one-line errors, ``--json``)
and :mod:`~mach_tf.cli.demo` (``mach-tf demo``). It imports the library inside each
command, so ``mach-tf --help`` answers without loading TensorFlow.
"""

from mach_tf.cli.main import main
from mach_tf.cli.parser import UsageError, build_parser

__all__ = ["UsageError", "build_parser", "main"]
