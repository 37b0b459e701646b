"""The text featuriser's settings as recorded in a run's ``config.json`` (``"text"``).

Kept free of TensorFlow so that the config can be read and validated cheaply; the layer
itself is :class:`mach_tf.text.TextFeaturizer`.

Where the adapted statistics live: the document frequencies are ``D`` integers (65,536 by
default, millions for large hash spaces), too many for ``config.json``, which is read,
compared field by field on every rerun and copied into every completion marker and export
info file. They are written once, beside it, as ``RUN/text_statistics.npy`` (int64
``[D]``, loaded with ``allow_pickle=False``); the config records the file's name, the
number of documents and a SHA-256 of the counts, so a changed or swapped file is refused
and two runs adapted on different data never pass for the same config.
"""

from __future__ import annotations

import dataclasses

FORMAT_VERSION = 1
#: D, the hash space of text features unless ``--text-features`` says otherwise. The input
#: layer holds a ``[D, H]`` kernel per repetition; 2^16 keeps it at 64 MB for H = 256
#: (float32) while colliding few of the words and bigrams of a query log.
DEFAULT_TEXT_FEATURES = 1 << 16
WEIGHTINGS = ("tfidf", "tf")
STATISTICS_FILE = "text_statistics.npy"
#: The keys of ``train --text-features/--word-ngrams/--char-ngrams`` among config overrides.
TEXT_OVERRIDES = ("text_features", "word_ngrams", "char_ngrams")


@dataclasses.dataclass
class TextSettings:
    """How text becomes sparse features (see :mod:`mach_tf.text`).

    Attributes:
        word_ngrams: Word n-grams of widths 1..n (2: unigrams and bigrams).
        char_ngrams: Character n-grams of this width inside each word, with ``<`` and ``>``
            marking the word's ends (0: none). Trigrams match misspelt words to their
            correct form by their shared pieces.
        weighting: ``"tfidf"``: term frequency times smoothed inverse document frequency
            ``ln((1 + N) / (1 + df)) + 1`` learned by ``adapt``; ``"tf"``: term frequency
            only.
        sublinear_tf: Use ``1 + ln(tf)`` instead of the raw count.
        statistics: File in the run directory holding the document frequencies.
        statistics_sha256: SHA-256 of the document frequencies (int64, little-endian);
            ``None`` until adapted.
        num_documents: N, the documents the frequencies were counted over.
        fold_table_sha256: SHA-256 of the normalisation table the run was trained with
            (:func:`mach_tf.text_fold.table_sha256`).
        format_version: Version of these settings.
    """

    word_ngrams: int = 2
    char_ngrams: int = 0
    weighting: str = "tfidf"
    sublinear_tf: bool = True
    statistics: str = STATISTICS_FILE
    statistics_sha256: str | None = None
    num_documents: int | None = None
    fold_table_sha256: str | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first field that is out of range."""
        def bad(field, why):
            raise ValueError(f"MachConfig.text.{field}: {why}")

        for field, low in (("word_ngrams", 1), ("char_ngrams", 0)):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= 8:
                bad(field, f"must be an integer in [{low}, 8], got {v!r}")
        if self.char_ngrams == 1:
            bad("char_ngrams", "1 would only count letters; use 0 (off) or 2..8")
        if self.weighting not in WEIGHTINGS:
            bad("weighting", f"must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not isinstance(self.sublinear_tf, bool):
            bad("sublinear_tf", f"must be true or false, got {self.sublinear_tf!r}")
        if (not isinstance(self.statistics, str) or not self.statistics
                or "/" in self.statistics or "\\" in self.statistics
                or self.statistics in (".", "..")):
            bad("statistics", f"must be a file name inside the run directory, got "
                              f"{self.statistics!r}")
        if self.num_documents is not None and (isinstance(self.num_documents, bool) or not
                                               isinstance(self.num_documents, int)
                                               or self.num_documents < 0):
            bad("num_documents", f"must be a non-negative integer, got "
                                 f"{self.num_documents!r}")
        if (self.statistics_sha256 is None) != (self.num_documents is None):
            bad("statistics_sha256", "and num_documents are set together (by adapting)")
        if self.format_version != FORMAT_VERSION:
            bad("format_version", f"this mach-tf reads version {FORMAT_VERSION}, got "
                                  f"{self.format_version}")

    @property
    def adapted(self) -> bool:
        return self.statistics_sha256 is not None

    def layer_kwargs(self) -> dict:
        """The featuriser layer's arguments (besides ``num_features``)."""
        return {"word_ngrams": self.word_ngrams, "char_ngrams": self.char_ngrams,
                "weighting": self.weighting, "sublinear_tf": self.sublinear_tf}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "TextSettings":
        if not isinstance(d, dict):
            raise ValueError(f"MachConfig.text: expected an object, got {d!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"MachConfig.text: unknown field(s) {unknown}")
        return cls(**d)


def data_config_overrides(manifest, overrides: dict) -> tuple[int, dict]:
    """``(num_features, overrides)`` of a config sized to a dataset.

    For text data, D is the featuriser's hash space (``text_features`` in ``overrides``,
    default :data:`DEFAULT_TEXT_FEATURES`) and ``word_ngrams`` / ``char_ngrams`` become the
    config's ``text`` settings; for sparse data, D is the manifest's.

    Raises:
        ValueError: text settings asked for sparse data.
    """
    out = {k: v for k, v in overrides.items() if k not in TEXT_OVERRIDES}
    given = [k for k in TEXT_OVERRIDES if overrides.get(k) is not None]
    if not manifest.text:
        if given:
            raise ValueError(f"{manifest.path}: holds sparse features; "
                             f"{', '.join('--' + k.replace('_', '-') for k in given)} apply to "
                             f"text data (convert it with --format text)")
        return manifest.num_features, out
    if overrides.get("text_features") is not None and int(overrides["text_features"]) < 1:
        raise ValueError(f"text_features must be >= 1, got {overrides['text_features']}")
    num_features = int(overrides.get("text_features") or DEFAULT_TEXT_FEATURES)
    out["text"] = TextSettings(**{k: overrides[k] for k in ("word_ngrams", "char_ngrams")
                                  if overrides.get(k) is not None}).to_dict()
    return num_features, out


def check_data_kind(config, manifest, role: str) -> None:
    """Refuses text data for a model of sparse features, and the other way round.

    Raises:
        mach_tf.rundir.RunDirError: naming the manifest and what the run expects.
    """
    from mach_tf.rundir import RunDirError

    if manifest.text and config.text is None:
        raise RunDirError(
            f"{manifest.path}: {role} data holds raw text (converted with --format text) "
            f"but the run's model reads sparse features; train a new run on text data (its "
            f"config then records the text featuriser)")
    if not manifest.text and config.text is not None:
        raise RunDirError(
            f"{manifest.path}: {role} data holds sparse features but the run's model reads "
            f"raw text; convert the data with 'mach-tf convert --format text' "
            f"(lines 'labels<TAB>text')")
