"""What a run's networks read: the input sections of the config.

A run reads one of three kinds of input, recorded in its config (:mod:`mach_tf.config`):
sparse features (the default), raw text that a featuriser turns into sparse features
(:class:`TextSettings`, the config's ``text`` section), or dense vectors
(``input_format="dense"``), optionally through the user's own Keras encoder
(:class:`EncoderSettings`, the config's ``encoder`` section). Free of TensorFlow, like the
config itself.
"""

from __future__ import annotations

import dataclasses


def _section(cls, d, name: str):
    """``cls(**d)`` for the config's section ``name``, refusing a non-object or unknown
    fields by name."""
    if not isinstance(d, dict):
        raise ValueError(f"MachConfig.{name}: expected an object, got {d!r}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"MachConfig.{name}: unknown field(s) {unknown}")
    return cls(**d)


#: What a run's networks read: padded sparse features (or text featurised into them), or a
#: dense float vector ``embedding`` of ``num_features`` values per example.
INPUT_FORMATS = ("sparse", "dense")

# -- the text section ------------------------------------------------------------------
TEXT_FORMAT_VERSION = 1
#: D, the hash space of text features unless ``--text-features`` says otherwise. The input
#: layer holds a ``[D, H]`` kernel per repetition; 2^16 keeps it at 64 MB for H = 256
#: (float32) while colliding few of the words and bigrams of a query log.
DEFAULT_TEXT_FEATURES = 1 << 16
TEXT_WEIGHTINGS = ("tfidf", "tf")
TEXT_STATISTICS_FILE = "text_statistics.npy"
#: The keys of ``train --text-features/--word-ngrams/--char-ngrams`` among config overrides.
TEXT_OVERRIDES = ("text_features", "word_ngrams", "char_ngrams")


@dataclasses.dataclass
class TextSettings:
    """How text becomes sparse features: the ``text`` section of a text run's config
    (the featuriser itself is :class:`mach_tf.text.TextFeaturizer`).

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
            (:func:`mach_tf.text.normalization.table_sha256`).
        format_version: Version of these settings.
    """

    word_ngrams: int = 2
    char_ngrams: int = 0
    weighting: str = "tfidf"
    sublinear_tf: bool = True
    statistics: str = TEXT_STATISTICS_FILE
    statistics_sha256: str | None = None
    num_documents: int | None = None
    fold_table_sha256: str | None = None
    format_version: int = TEXT_FORMAT_VERSION

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
        if self.weighting not in TEXT_WEIGHTINGS:
            bad("weighting", f"must be one of {TEXT_WEIGHTINGS}, got {self.weighting!r}")
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
        if self.format_version != TEXT_FORMAT_VERSION:
            bad("format_version", f"this mach-tf reads version {TEXT_FORMAT_VERSION}, got "
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
        return _section(cls, d, "text")


# -- the encoder section -----------------------------------------------------------------
#: The encoder file's name inside the run directory (a copy of the user's ``.keras`` file).
ENCODER_FILE = "encoder.keras"
ENCODER_SOURCES = ("file", "function")


@dataclasses.dataclass
class EncoderSettings:
    """The user's Keras encoder that a dense run's repetitions start from: the ``encoder``
    section of its config (the encoder itself is built by :mod:`mach_tf.model.encoders`).

    Each repetition's network is ``encoder -> its own hidden layers -> its B bucket
    logits``. A frozen encoder is one network shared by the repetitions of a group; a
    trainable one is a separate copy per repetition, trained with it (and each repetition
    is then trained alone, ``group_size=1``).

    Attributes:
        source: ``"file"``: a saved ``.keras`` model, copied into the run directory as
            :data:`ENCODER_FILE` so every worker and rerun loads the same one;
            ``"function"``: ``module:function`` returning a fresh Keras model per
            repetition, called as ``function(input_dim=d, seed=s)`` (either argument may
            be left out of its signature).
        file: The copy's file name inside the run directory (``source="file"``).
        origin: The path the file was copied from (the first worker copies it).
        file_sha256: SHA-256 of that copy: a changed file is refused.
        function: ``"module:function"`` (``source="function"``).
        trainable: Whether the encoder trains with its repetition (``False``: frozen).
        input_dim: d, the width of the vectors the encoder reads.
        output_dim: The width of the encoder's output.
        architecture_sha256: Fingerprint of the network (its layers' classes and weight
            shapes, in order): a worker or rerun whose encoder differs is refused.
        num_params: The encoder's weights (trainable or not).
    """

    source: str
    file: str | None = None
    origin: str | None = None
    file_sha256: str | None = None
    function: str | None = None
    trainable: bool = True
    input_dim: int | None = None
    output_dim: int | None = None
    architecture_sha256: str | None = None
    num_params: int | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first field that is out of range."""
        def bad(field, why):
            raise ValueError(f"MachConfig.encoder.{field}: {why}")

        if self.source not in ENCODER_SOURCES:
            bad("source", f"must be one of {ENCODER_SOURCES}, got {self.source!r}")
        if self.source == "file" and (not isinstance(self.file, str) or not self.file
                                      or "/" in self.file or "\\" in self.file):
            bad("file", f"must be a file name inside the run directory, got {self.file!r}")
        if self.source == "function":
            fn = self.function
            if not isinstance(fn, str) or fn.count(":") != 1 or not all(fn.split(":")):
                bad("function", f"must be 'module:function', got {fn!r}")
            if not self.trainable:
                bad("trainable", "a function's encoder is built fresh (untrained): it "
                                 "trains with its repetition")
        if not isinstance(self.trainable, bool):
            bad("trainable", f"must be true or false, got {self.trainable!r}")
        for field in ("input_dim", "output_dim", "num_params"):
            v = getattr(self, field)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                bad(field, f"must be a positive integer, got {v!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "EncoderSettings":
        return _section(cls, d, "encoder")
