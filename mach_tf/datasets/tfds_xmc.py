"""A TensorFlow Datasets builder for datasets in the XMC repository text format.

One config per known dataset (``bibtex``, ``delicious``, ``corel5k``, ``seq_go``) and a
``generic`` one for any pair of files. Nothing is downloaded: TFDS reads the files from its
``manual_dir``, laid out as ``MANUAL_DIR/<config>/train.txt`` and ``.../test.txt`` (the
layout of the XMC repository and of ``../shared/data``). Every line goes through
:class:`tfrecords_tools.parse.SparseReader`, so a malformed file fails with its path and line.

Usage::

    import tensorflow_datasets as tfds
    import mach_tf.datasets.tfds_xmc  # registers "xmc"

    ds = tfds.load("xmc/bibtex", split="train", data_dir="~/tfds",
                   download_and_prepare_kwargs={"download_config":
                       tfds.download.DownloadConfig(manual_dir="/data/xmc")})

Each example has ``feature_ids`` (int64 ``[None]``), ``feature_values`` (float32
``[None]``) and ``labels`` (int64 ``[None]``); :func:`to_prefix` writes a
prepared split as a mach-tf training prefix, so it trains with ``mach-tf train`` directly.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from tfrecords_tools import atomic
from tfrecords_tools.convert import write_examples
from tfrecords_tools.manifest import Manifest, manifest_path
from tfrecords_tools.parse import SparseReader
from tfrecords_tools.paths import expand_path

_CITATION = """Bhatia, K., Dahiya, K., Jain, H., Kar, P., Mittal, A., Prabhu, Y., Varma, M.:
The Extreme Classification Repository: multi-label datasets and code (2016).
http://manikvarma.org/downloads/XC/XMLRepository.html"""


@dataclasses.dataclass
class XmcConfig(tfds.core.BuilderConfig):
    """A dataset of the XMC format: where its files sit under ``manual_dir``, and its
    dimensions (0 = taken from the file header)."""

    subdir: str = ""
    num_features: int = 0
    num_labels: int = 0


KNOWN = [
    XmcConfig(name="bibtex", description="BibSonomy BibTeX tags: 159 labels, 1836 features, "
              "4880/2515 points (Mulan split).", subdir="bibtex", num_features=1836,
              num_labels=159),
    XmcConfig(name="delicious", description="del.icio.us tags: 983 labels, 500 features, "
              "12920/3185 points (Mulan split).", subdir="delicious", num_features=500,
              num_labels=983),
    XmcConfig(name="corel5k", description="Corel5k image annotation: 374 labels, 499 "
              "features, 4500/500 points.", subdir="corel5k", num_features=499,
              num_labels=374),
    XmcConfig(name="seq_go", description="Yeast genes -> GO terms: 4130 labels, 529 "
              "features, 2568/1332 points.", subdir="seq_GO", num_features=529,
              num_labels=4130),
    XmcConfig(name="generic", description="Any XMC-format dataset: MANUAL_DIR/generic/"
              "{train,test}.txt (dimensions from the headers).", subdir="generic"),
]


class Xmc(tfds.core.GeneratorBasedBuilder):
    """Extreme multi-label datasets in the XMC repository text format (manual files)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = KNOWN
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Place the dataset's files as MANUAL_DIR/<subdir>/train.txt and MANUAL_DIR/<subdir>/test.txt
    in the XMC repository format (header "num_points num_features num_labels", then
    "l1,l2 f:v f:v ..." per point). <subdir> is the config's: bibtex, delicious, corel5k,
    seq_GO, or generic for your own files. Pass MANUAL_DIR with
    download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
    manual_dir=MANUAL_DIR)}.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "feature_ids": tfds.features.Sequence(tfds.features.Scalar(np.int64)),
                "feature_values": tfds.features.Sequence(tfds.features.Scalar(np.float32)),
                "labels": tfds.features.Sequence(tfds.features.Scalar(np.int64)),
            }),
            metadata=tfds.core.MetadataDict(num_features=c.num_features,
                                            num_labels=c.num_labels),
            homepage="http://manikvarma.org/downloads/XC/XMLRepository.html",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        root = os.path.join(dl_manager.manual_dir, self.builder_config.subdir)
        splits = {}
        for split in ("train", "test"):
            path = os.path.join(root, f"{split}.txt")
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"{path}: missing; {self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
            splits[split] = self._generate_examples(path)
        if not self.builder_config.num_features:
            # generic: the dimensions come from the training file's header
            header = SparseReader(os.path.join(root, "train.txt"), "xmc")
            next(iter(header), None)
            self.info.metadata["num_features"] = header.header.num_features
            self.info.metadata["num_labels"] = header.header.num_labels
        return splits

    def _generate_examples(self, path):
        c = self.builder_config
        reader = SparseReader(path, "xmc")
        for point in reader:
            yield point.line, {"feature_ids": point.feature_ids,
                               "feature_values": point.feature_values,
                               "labels": point.labels}
        nf, nl = reader.dimensions()
        if (c.num_features and nf != c.num_features) or (c.num_labels and nl != c.num_labels):
            raise ValueError(f"{path}: header declares {nf} features / {nl} labels, the "
                             f"{c.name} config expects {c.num_features} / {c.num_labels}")


def prepare(name: str = "xmc/generic", data_dir: str | None = None,
            manual_dir: str | None = None) -> dict:
    """Prepares a TFDS XMC dataset and returns mach-tf data prefixes of its splits.

    TFDS writes its splits as TFRecord files of ``tf.train.Example`` with exactly mach-tf's
    schema (``feature_ids``, ``feature_values``, ``labels``), so this only adds a manifest
    beside them (``DATA_DIR/xmc/<config>/<version>/<split>.manifest.json``): no copy.

    Args:
        name: ``"xmc/<config>"``.
        data_dir: TFDS data directory.
        manual_dir: Where the text files are (see ``Xmc.MANUAL_DOWNLOAD_INSTRUCTIONS``).

    Returns:
        ``{"train": prefix, "test": prefix}`` for ``mach-tf train/evaluate``.
    """
    data_dir, manual_dir = expand_path(data_dir), expand_path(manual_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    meta = builder.info.metadata
    out = {}
    for split, info in builder.info.splits.items():
        files = [os.path.basename(f) for f in info.filenames]
        prefix = os.path.join(builder.data_dir, split)
        m = Manifest(num_examples=info.num_examples, num_features=int(meta["num_features"]),
                     num_labels=int(meta["num_labels"]), shards=files,
                     shard_counts=[int(n) for n in info.shard_lengths],
                     source={"format": "tfds", "name": name, "split": split},
                     lines_read=info.num_examples)
        atomic.write_json(manifest_path(prefix), m.to_dict())
        out[split] = prefix
    return out


def to_prefix(dataset, prefix: str, num_features: int, num_labels: int,
              num_shards: int = 1):
    """Writes a (TFDS) ``tf.data.Dataset`` of XMC examples as a mach-tf data prefix.

    Args:
        dataset: Unbatched examples with ``feature_ids``, ``feature_values``, ``labels``.
        prefix: Output prefix (``PREFIX-*.tfrecord`` + ``PREFIX.manifest.json``).
        num_features, num_labels: The dimensions (e.g. from ``info.metadata``).
        num_shards: Output shards.

    Returns:
        The written :class:`tfrecords_tools.manifest.Manifest`.
    """
    prefix = expand_path(prefix)

    def points():
        for ex in dataset.as_numpy_iterator():
            yield (ex["labels"].tolist(), ex["feature_ids"].tolist(),
                   ex["feature_values"].tolist())

    return write_examples(prefix, points(), num_features, num_labels, num_shards,
                          source={"format": "tfds"})
