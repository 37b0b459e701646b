"""Files and folders that appear whole or not at all: write under a temporary name, rename.

Everything one step of the pipeline writes for another to read (shards and manifests,
configs, completion markers, models, checkpoint pointers, claims, exports) goes through
this module, so a reader never meets a half-written file under its final name: a writer
killed at any moment leaves either the previous version or a temporary that every reader
ignores.

Temporary names are ``.tmp-<random>-<name>`` in the destination's own folder, so that
they are

* unique per writer: two processes writing the same file never share a temporary;
* never an extension of the final name: some filesystems (TensorFlow's ``ram://`` among
  them) answer ``exists(path)`` true for a file that only starts with ``path``;
* hidden from readers that list a folder (TensorFlow Serving loads only integer-named
  version folders; a run's ``rep-XXX`` folders are found by name);
* of the final name's extension (``model.save`` picks the Keras format from ``.keras``).

All paths go through ``tf.io.gfile``, so they may be local, on a shared filesystem or in
object storage (``gs://``, ``s3://``, ``ram://``); a rename there is as atomic as the
storage makes it (see docs/scheduling.md for what shared training needs).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid

TEMP_PREFIX = ".tmp-"


def _tf():
    # TensorFlow is imported on first use: parsing text files needs none of it.
    import tensorflow as tf

    return tf


def _gfile():
    return _tf().io.gfile


def temp_path(path: str) -> str:
    """A fresh temporary name for ``path``, in the same folder (module docstring)."""
    path = os.fspath(path)
    parent, name = os.path.split(path)
    return os.path.join(parent, f"{TEMP_PREFIX}{uuid.uuid4().hex[:10]}-{name}")


def is_temporary(name: str) -> bool:
    """True for a name this module made (a leftover of an interrupted writer)."""
    return os.path.basename(name.rstrip("/")).startswith(TEMP_PREFIX)


def publish(tmp: str, path: str, overwrite: bool = True) -> None:
    """Renames a fully written ``tmp`` to ``path``, the step that makes it visible."""
    _gfile().rename(tmp, path, overwrite=overwrite)


def discard(tmp: str) -> None:
    """Removes a temporary file or folder, if it exists."""
    gfile = _gfile()
    if gfile.isdir(tmp):
        gfile.rmtree(tmp)
    elif gfile.exists(tmp):
        gfile.remove(tmp)


@contextlib.contextmanager
def replacing(path: str, overwrite: bool = True):
    """Yields a temporary path to write ``path``'s content to (a file or a whole folder);
    renames it into place when the block ends without an exception, removes it otherwise.

    Args:
        path: The final path. Its parent folder is created.
        overwrite: Replace an existing ``path``; when ``False`` the rename fails if it
            exists (a folder is never merged into another).
    """
    path = os.fspath(path)
    _gfile().makedirs(os.path.dirname(path) or ".")
    tmp = temp_path(path)
    try:
        yield tmp
        publish(tmp, path, overwrite)
    except BaseException:
        discard(tmp)
        raise


@contextlib.contextmanager
def writing(path: str, mode: str = "w"):
    """Yields an open file (``tf.io.gfile.GFile``) that becomes ``path`` when the block
    ends without an exception (see :func:`replacing`)."""
    with replacing(path) as tmp:
        with _gfile().GFile(tmp, mode) as f:
            yield f


def write_bytes(path: str, data: bytes) -> None:
    with writing(path, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    with writing(path, "w") as f:
        f.write(text)


def dumps(obj) -> str:
    """The JSON every writer of the package uses: sorted keys, indented, newline-ended."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(path: str, obj) -> None:
    write_text(path, dumps(obj))


def create_exclusive(path: str, text: str) -> bool:
    """Creates ``path`` holding ``text`` unless it exists; ``True`` when this call made it.

    The content is complete before the name appears: it is written to a temporary, then
    hard-linked to the final name, which fails atomically when the name exists on POSIX
    filesystems and NFS (where hard links are missing, e.g. FUSE mounts of object stores,
    ``O_EXCL`` creation). Other ``tf.io.gfile`` schemes rename without overwriting after
    checking the name is free: a window of milliseconds in which two creators can both
    succeed (docs/scheduling.md says when that matters).
    """
    path = os.fspath(path)
    gfile = _gfile()
    gfile.makedirs(os.path.dirname(path) or ".")
    tmp = temp_path(path)
    with gfile.GFile(tmp, "w") as f:
        f.write(text)
    try:
        if "://" not in path:
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            except OSError:  # no hard links here: create with O_EXCL, then write
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                return True
        if gfile.exists(path):
            return False
        try:
            publish(tmp, path, overwrite=False)
            return True
        except _tf().errors.AlreadyExistsError:
            return False
    finally:
        discard(tmp)
