"""What the benchmark scripts share: progress lines, a working folder, the JSON line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time


def say(name: str, args, msg: str) -> None:
    """A progress line ``[name] msg``: on stderr with ``--json`` (stdout keeps only the JSON
    line), else on stdout."""
    print(f"[{name}] {msg}", file=sys.stderr if args.json else sys.stdout, flush=True)


@contextlib.contextmanager
def workdir(given: str | None, prefix: str):
    """Yields ``given`` (created if missing, kept afterwards), or a new temporary folder
    removed at the end."""
    if given:
        os.makedirs(given, exist_ok=True)
        yield given
        return
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages: how shared the cores were."""
    return [round(x, 2) for x in os.getloadavg()]


def emit(out: dict, t0: float) -> dict:
    """Adds ``load_average`` and ``seconds`` (since ``t0``) to ``out``, prints it as the last
    stdout line and returns it."""
    out["load_average"] = load_average()
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return out
