"""tfrecords_tools: XMC / libsvm / labelled text -> sharded TFRecords, and a fast tf.data
reader.

Public API::

    from tfrecords_tools import convert, make_dataset, verify, Manifest, TextReader
    from tfrecords_tools import DataFormatError, ManifestError, ShardError
"""

from tfrecords_tools.convert import ShardedWriter, convert, serialize_example, write_examples
from tfrecords_tools.manifest import Manifest, ManifestError, ShardError, manifest_path
from tfrecords_tools.parse import DataFormatError, Point, TextReader, parse_line, read_points
from tfrecords_tools.text_format import TextPoint, TextQueryReader, parse_text_line


def make_dataset(*args, **kwargs):
    """See :func:`tfrecords_tools.dataset.make_dataset` (imported lazily: TensorFlow)."""
    from tfrecords_tools.dataset import make_dataset as _make

    return _make(*args, **kwargs)


def verify(*args, **kwargs):
    """See :func:`tfrecords_tools.verification.verify` (imported lazily: TensorFlow)."""
    from tfrecords_tools.verification import verify as _verify

    return _verify(*args, **kwargs)


__all__ = [
    "DataFormatError", "Manifest", "ManifestError", "Point", "ShardError", "ShardedWriter",
    "TextPoint", "TextQueryReader", "TextReader", "convert", "make_dataset", "manifest_path",
    "parse_line", "parse_text_line", "read_points", "serialize_example", "verify",
    "write_examples",
]
