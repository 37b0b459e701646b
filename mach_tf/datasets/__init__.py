"""Data the project makes or reads for its users: synthetic catalogues and the TFDS
builder of the XMC format.

Modules: :mod:`~mach_tf.datasets.synthetic` (power-law sparse data with learnable
structure), :mod:`~mach_tf.datasets.synthetic_text` (labelled queries),
:mod:`~mach_tf.datasets.tfds_xmc` (the ``xmc`` TensorFlow Datasets builder; needs the
``datasets`` extra, so it is imported only by name: ``import mach_tf.datasets.tfds_xmc``
registers it).
"""

from mach_tf.datasets.synthetic import SyntheticSpec, generate, write_split, write_xmc
from mach_tf.datasets.synthetic_text import generate_text, text_spec, write_text_split

__all__ = ["SyntheticSpec", "generate", "generate_text", "text_spec", "write_split",
           "write_text_split", "write_xmc"]
