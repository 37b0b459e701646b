"""tfrecords_tools: XMC / libsvm / labelled text / dense vectors -> sharded TFRecords, and
a fast tf.data reader. The lowest layer of the project: it imports neither ``mach_tf`` nor
``export``.

Public API::

    from tfrecords_tools import convert, make_dataset, verify, Manifest
    from tfrecords_tools import SparseReader, QueryReader, DenseReader, read_points
    from tfrecords_tools import DataFormatError, ManifestError, ShardError

Modules, in data-flow order: :mod:`~tfrecords_tools.parse` (XMC / libsvm lines),
:mod:`~tfrecords_tools.text_format` (``labels<TAB>text`` lines),
:mod:`~tfrecords_tools.dense` (a ``.npy`` matrix and its label lines),
:mod:`~tfrecords_tools.convert` (the sharded writer), :mod:`~tfrecords_tools.manifest`,
:mod:`~tfrecords_tools.dataset` (the tf.data reader), :mod:`~tfrecords_tools.verification`
(full read-back), and :mod:`~tfrecords_tools.atomic`, the write-then-rename helper every
writer of the project uses.
"""

import importlib

from tfrecords_tools.convert import (ShardedWriter, convert, serialize_dense_example,
                                     serialize_example, write_examples)
from tfrecords_tools.dense import DensePoint, DenseReader
from tfrecords_tools.manifest import Manifest, ManifestError, ShardError, manifest_path
from tfrecords_tools.parse import DataFormatError, Point, SparseReader, parse_line, read_points
from tfrecords_tools.text_format import QueryReader, TextPoint, parse_text_line

# The tf.data reader and the read-back load TensorFlow: imported on first use, so that
# parsing (and ``import tfrecords_tools``) does not.
_LAZY = {"make_dataset": "tfrecords_tools.dataset", "verify": "tfrecords_tools.verification",
         "VerifyReport": "tfrecords_tools.verification"}

__all__ = [
    "DataFormatError", "DensePoint", "DenseReader", "Manifest", "ManifestError", "Point",
    "QueryReader", "ShardError", "ShardedWriter", "SparseReader", "TextPoint", "VerifyReport",
    "convert", "make_dataset", "manifest_path", "parse_line", "parse_text_line", "read_points",
    "serialize_dense_example", "serialize_example", "verify", "write_examples",
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfrecords_tools' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
