"""Raw text -> hashed tf-idf sparse features, in the graph, for training and serving alike.

Modules: :mod:`~mach_tf.text.featurizer` (the :class:`TextFeaturizer` Keras layer),
:mod:`~mach_tf.text.normalization` (the Unicode fold table it carries),
:mod:`~mach_tf.text.statistics` (a run's adapted featuriser: document frequencies in the
run directory), :mod:`~mach_tf.text.reference` and :mod:`~mach_tf.text.farmhash` (the same
featurisation in plain Python, which export verification checks the graph against). The
settings recorded in a run's config are :class:`mach_tf.config.TextSettings`.
"""

from mach_tf.text.featurizer import TextFeaturizer
from mach_tf.text.normalization import fold_table, fold_text
from mach_tf.text.reference import featurize, featurize_like
from mach_tf.text.statistics import adapt_run, build_featurizer, load_featurizer

__all__ = ["TextFeaturizer", "adapt_run", "build_featurizer", "featurize", "featurize_like",
           "fold_table", "fold_text", "load_featurizer"]
