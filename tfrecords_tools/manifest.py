"""The manifest that describes a converted dataset (``PREFIX.manifest.json``)."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid

FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"


def manifest_path(prefix: str) -> str:
    return os.fspath(prefix) + MANIFEST_SUFFIX


def shard_names(prefix: str, num_shards: int, compression: str) -> list[str]:
    """Basenames ``PREFIX-0000i-of-0000N.tfrecord[.gz]``."""
    base = os.path.basename(os.fspath(prefix))
    ext = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    return [f"{base}-{i:05d}-of-{num_shards:05d}{ext}" for i in range(num_shards)]


def write_json_atomic(path: str, obj) -> None:
    """Writes JSON to a temporary file beside ``path`` and renames it into place."""
    import tensorflow as tf

    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)


@dataclasses.dataclass
class Manifest:
    """What a conversion wrote.

    Attributes:
        num_examples: Examples in all shards together.
        num_features: Feature dimension D (ids in ``[0, D)``).
        num_labels: Label dimension K (ids in ``[0, K)``).
        shards: Shard basenames, relative to the manifest's directory.
        shard_counts: Examples per shard.
        compression: ``"NONE"`` or ``"GZIP"``.
        format_version: Version of this schema.
        source: Where the data came from (path, format).
        lines_read: Data lines read from the source.
        skipped: ``[{"line": n, "reason": "..."}]`` for every line not converted.
        stats: Averages (features and labels per point).
        prefix: The prefix this manifest was read from (not stored).
    """

    num_examples: int
    num_features: int
    num_labels: int
    shards: list[str]
    compression: str = "NONE"
    format_version: int = FORMAT_VERSION
    shard_counts: list[int] = dataclasses.field(default_factory=list)
    source: dict = dataclasses.field(default_factory=dict)
    lines_read: int = 0
    skipped: list[dict] = dataclasses.field(default_factory=list)
    stats: dict = dataclasses.field(default_factory=dict)
    prefix: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("prefix")
        return d

    @property
    def shard_paths(self) -> list[str]:
        prefix = self.prefix or "."
        # abspath would turn gs://b/x into CWD/gs:/b/x: remote prefixes stay as they are
        parent = os.path.dirname(prefix if "://" in prefix else os.path.abspath(prefix))
        return [os.path.join(parent, s) for s in self.shards]

    @classmethod
    def load(cls, prefix: str) -> "Manifest":
        """Reads ``PREFIX.manifest.json`` and checks that every shard it names exists.

        Raises:
            FileNotFoundError: naming the missing manifest or shard.
            ValueError: naming the manifest, for a malformed or inconsistent manifest.
        """
        import tensorflow as tf

        prefix = os.fspath(prefix)
        if prefix.endswith(MANIFEST_SUFFIX):
            prefix = prefix[: -len(MANIFEST_SUFFIX)]
        path = manifest_path(prefix)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{path}: no manifest (convert the data first with "
                                    f"'mach-tf convert INPUT {prefix}')")
        try:
            with tf.io.gfile.GFile(path) as f:
                d = json.load(f)
            known = {f.name for f in dataclasses.fields(cls)} - {"prefix"}
            m = cls(**{k: v for k, v in d.items() if k in known}, prefix=prefix)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: malformed manifest: {e}") from None
        if m.format_version != FORMAT_VERSION:
            raise ValueError(f"{path}: manifest format_version {m.format_version}, "
                             f"this version reads {FORMAT_VERSION}")
        if m.compression not in ("NONE", "GZIP"):
            raise ValueError(f"{path}: unknown compression {m.compression!r}")
        if m.shard_counts and (len(m.shard_counts) != len(m.shards)
                               or sum(m.shard_counts) != m.num_examples):
            raise ValueError(f"{path}: shard_counts {m.shard_counts} disagree with "
                             f"num_examples={m.num_examples} over {len(m.shards)} shards")
        for s in m.shard_paths:
            if not tf.io.gfile.exists(s):
                raise FileNotFoundError(f"{s}: shard listed in {path} is missing")
        return m
