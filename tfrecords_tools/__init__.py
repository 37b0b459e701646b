"""tfrecords_tools: XMC / libsvm text -> sharded TFRecords, and a fast tf.data reader.

Public API::

    from tfrecords_tools import convert, make_dataset, Manifest, TextReader, DataFormatError
"""

from tfrecords_tools.convert import ShardedWriter, convert, serialize_example, write_examples
from tfrecords_tools.manifest import Manifest, manifest_path
from tfrecords_tools.parse import DataFormatError, Point, TextReader, parse_line, read_points


def make_dataset(*args, **kwargs):
    """See :func:`tfrecords_tools.dataset.make_dataset` (imported lazily: TensorFlow)."""
    from tfrecords_tools.dataset import make_dataset as _make

    return _make(*args, **kwargs)


__all__ = [
    "DataFormatError", "Manifest", "Point", "ShardedWriter", "TextReader", "convert",
    "make_dataset", "manifest_path", "parse_line", "read_points", "serialize_example",
    "write_examples",
]
