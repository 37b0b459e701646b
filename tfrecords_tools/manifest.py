"""The manifest that describes a converted dataset (``PREFIX.manifest.json``).

:meth:`Manifest.load` runs the cheap checks eagerly, before any record is read: the
manifest parses and is self-consistent, every shard it lists exists and has the size
recorded at conversion, and no shard of the ``-i-of-N`` series is missing from it. Faults
inside a shard (corrupt or truncated records, counts that disagree) are found by reading:
:func:`tfrecords_tools.verification.verify` reads every record, and
:func:`tfrecords_tools.verification.located_read_errors` names the shard when a read fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from tfrecords_tools.paths import expand_path

FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
_SHARD_NAME = re.compile(r"(?P<base>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.tfrecord(?P<gz>\.gz)?")


class ManifestError(ValueError):
    """A manifest that is missing fields, malformed or inconsistent (names the manifest)."""


class ShardError(ValueError):
    """A shard that is corrupt, truncated or disagrees with its manifest.

    Attributes:
        shard: The shard's path (or the dataset prefix when the shard is unknown).
        record: 0-based index of the first record at fault, when known.
        reason: What was wrong.
    """

    def __init__(self, shard: str, reason: str, record: int | None = None):
        self.shard = os.fspath(shard)
        self.record = record
        self.reason = reason
        where = f"{self.shard}: record {record}" if record is not None else self.shard
        super().__init__(f"{where}: {reason}")


def manifest_path(prefix: str) -> str:
    return os.fspath(prefix) + MANIFEST_SUFFIX


def shard_names(prefix: str, num_shards: int, compression: str) -> list[str]:
    """Basenames ``PREFIX-0000i-of-0000N.tfrecord[.gz]``."""
    base = os.path.basename(os.fspath(prefix))
    ext = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    return [f"{base}-{i:05d}-of-{num_shards:05d}{ext}" for i in range(num_shards)]


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


@dataclasses.dataclass
class Manifest:
    """What a conversion wrote.

    Attributes:
        num_examples: Examples in all shards together.
        num_features: Feature dimension D (ids in ``[0, D)``).
        num_labels: Label dimension K (ids in ``[0, K)``).
        shards: Shard basenames, relative to the manifest's directory.
        shard_counts: Examples per shard.
        shard_bytes: Size of each shard file in bytes (checked when the manifest is
            loaded; absent in manifests written before it was recorded).
        compression: ``"NONE"`` or ``"GZIP"``.
        format_version: Version of this schema.
        source: Where the data came from (path, format).
        lines_read: Data lines read from the source (``num_examples + len(skipped)``).
        skipped: ``[{"line": n, "reason": "..."}]`` for every line not converted.
        stats: Averages (features and labels per point; characters and words per text).
        text: The records hold raw text in ``text`` and no sparse features (converted with
            ``--format text``; models featurise the text themselves).
        embedding_dim: The records hold a dense float32 ``embedding`` of this length and no
            sparse features (converted with ``--format dense``); ``None`` otherwise (and in
            manifests written before dense data existed).
        prefix: The prefix this manifest was read from (not stored).
    """

    num_examples: int
    num_features: int
    num_labels: int
    shards: list[str]
    compression: str = "NONE"
    format_version: int = FORMAT_VERSION
    shard_counts: list[int] = dataclasses.field(default_factory=list)
    shard_bytes: list[int] = dataclasses.field(default_factory=list)
    source: dict = dataclasses.field(default_factory=dict)
    lines_read: int = 0
    skipped: list[dict] = dataclasses.field(default_factory=list)
    stats: dict = dataclasses.field(default_factory=dict)
    text: bool = False
    embedding_dim: int | None = None
    prefix: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("prefix")
        if d["embedding_dim"] is None:  # sparse and text manifests stay as they were
            d.pop("embedding_dim")
        return d

    @property
    def path(self) -> str:
        return manifest_path(self.prefix or "")

    @property
    def shard_paths(self) -> list[str]:
        prefix = self.prefix or "."
        # abspath would turn gs://b/x into CWD/gs:/b/x: remote prefixes stay as they are
        parent = os.path.dirname(prefix if "://" in prefix else os.path.abspath(prefix))
        return [os.path.join(parent, s) for s in self.shards]

    @classmethod
    def load(cls, prefix: str) -> "Manifest":
        """Reads ``PREFIX.manifest.json`` and runs the cheap checks (module docstring).

        Raises:
            FileNotFoundError: naming the missing manifest or shard.
            ManifestError: naming the manifest, for a malformed or inconsistent manifest.
            ShardError: naming a shard whose size differs from the one recorded, or a
                shard missing from the manifest.
        """
        import tensorflow as tf

        prefix = expand_path(prefix)
        if prefix.endswith(MANIFEST_SUFFIX):
            prefix = prefix[: -len(MANIFEST_SUFFIX)]
        path = manifest_path(prefix)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{path}: no manifest (convert the data first with "
                                    f"'mach-tf convert INPUT {prefix}')")
        try:
            with tf.io.gfile.GFile(path) as f:
                d = json.load(f)
            if not isinstance(d, dict):
                raise ValueError("expected a JSON object")
            known = {f.name for f in dataclasses.fields(cls)} - {"prefix"}
            m = cls(**{k: v for k, v in d.items() if k in known}, prefix=prefix)
        except (ValueError, TypeError) as e:
            raise ManifestError(f"{path}: malformed manifest: {e}") from None
        m._check(path)
        for s, size in zip(m.shard_paths, m.shard_bytes or [None] * len(m.shards)):
            if not tf.io.gfile.exists(s):
                raise FileNotFoundError(f"{s}: shard listed in {path} is missing")
            if size is not None:
                actual = tf.io.gfile.stat(s).length
                if actual != size:
                    raise ShardError(s, f"is {actual} bytes, {path} recorded {size}: the "
                                        f"shard was truncated or changed after conversion "
                                        f"(convert the data again)")
        return m

    def _check(self, path: str) -> None:
        """The manifest's own consistency (no file access)."""
        def bad(why):
            raise ManifestError(f"{path}: {why}")

        if self.format_version != FORMAT_VERSION:
            bad(f"manifest format_version {self.format_version}, this version reads "
                f"{FORMAT_VERSION}")
        for name in ("num_examples", "num_features", "num_labels", "lines_read"):
            if not _is_count(getattr(self, name)):
                bad(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if not isinstance(self.text, bool):
            bad(f"text must be true or false, got {self.text!r}")
        if self.embedding_dim is not None:
            if not _is_count(self.embedding_dim) or self.embedding_dim < 1:
                bad(f"embedding_dim must be a positive integer, got {self.embedding_dim!r}")
            if self.text:
                bad("a dataset holds either text or dense embeddings, not both")
        if self.compression not in ("NONE", "GZIP"):
            bad(f"unknown compression {self.compression!r}")
        if not isinstance(self.shards, list) or not self.shards or not all(
                isinstance(s, str) and s and os.path.basename(s) == s and s not in (".", "..")
                for s in self.shards):
            bad(f"shards must be a non-empty list of file names, got {self.shards!r}")
        for name in ("shard_counts", "shard_bytes"):
            value = getattr(self, name)
            if value and (not isinstance(value, list) or len(value) != len(self.shards)
                          or not all(_is_count(x) for x in value)):
                bad(f"{name} {value!r} must list one non-negative integer per shard "
                    f"({len(self.shards)} shards)")
        if self.shard_counts and sum(self.shard_counts) != self.num_examples:
            bad(f"shard_counts {self.shard_counts} sum to {sum(self.shard_counts)}, "
                f"disagreeing with num_examples={self.num_examples}")
        if self.lines_read and self.num_examples + len(self.skipped) != self.lines_read:
            bad(f"num_examples={self.num_examples} + {len(self.skipped)} skipped lines "
                f"disagree with lines_read={self.lines_read}")
        ext = ".tfrecord.gz" if self.compression == "GZIP" else ".tfrecord"
        series = {}
        for s in self.shards:
            m = _SHARD_NAME.fullmatch(s)
            if m is None:
                continue  # a hand-made list: nothing to cross-check
            if not s.endswith(ext):
                bad(f"shard {s} does not match compression {self.compression}")
            series.setdefault((m["base"], int(m["n"]), m["gz"] or ""), set()).add(int(m["i"]))
        parent = os.path.dirname(os.path.abspath(self.prefix or "."))
        for (base, n, gz), have in series.items():
            missing = sorted(set(range(n)) - have)
            if missing:
                name = f"{base}-{missing[0]:05d}-of-{n:05d}.tfrecord{gz}"
                raise ShardError(os.path.join(parent, name),
                                 f"is missing from {path}, which lists {len(have)} of the "
                                 f"{n} shards of the series (convert the data again)")
