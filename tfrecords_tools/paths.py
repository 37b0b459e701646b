"""Path arguments as users write them: ``~`` and environment variables expanded.

Every public function of the project that takes a file or directory passes it through
:func:`expand_path` first, so ``data_dir="~/tfds"`` or ``"$SCRATCH/runs/r1"`` mean what a
shell would make of them instead of a folder literally named ``~`` or ``$SCRATCH``. URLs
such as ``gs://bucket/path`` are left as they are.
"""

from __future__ import annotations

import os


def expand_path(path):
    """``path`` with a leading ``~`` (or ``~user``) and ``$VAR`` / ``${VAR}`` expanded.

    ``None`` stays ``None``; an ``os.PathLike`` becomes a ``str``. A variable that is not
    set is left as written, as ``os.path.expandvars`` does.
    """
    if path is None:
        return None
    text = os.fspath(path)
    if isinstance(text, bytes):
        return os.path.expanduser(os.path.expandvars(text))
    if "://" in text:
        return text
    return os.path.expanduser(os.path.expandvars(text))
