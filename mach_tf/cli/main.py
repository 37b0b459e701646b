"""The ``mach-tf`` command. Each subcommand parses its arguments and calls one library
function; all the work lives in the library.

Exit codes: 0 success, 2 usage error, 1 failure (one line on stderr; the traceback only
with ``--verbose``). With ``--json`` the last line on stdout is one JSON object.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

from mach_tf.cli.commands import COMMANDS
from mach_tf.cli.parser import UsageError, build_parser, parse_args

# What TensorFlow's native code prints to stderr when it loads, before its logging is set
# up (so TF_CPP_MIN_LOG_LEVEL cannot hold it back): notes, not faults.
_STARTUP_NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is "
                            r"called are written to STDERR|"
                            r"I0000 \S+ +\d+ \w+\.cc:\d+\] oneDNN custom operations are on.*")


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its native start-up notes held back from stderr (anything
    else it prints there still gets through)."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode("utf-8", "replace").splitlines():
                if not _STARTUP_NOISE.fullmatch(line):
                    print(line, file=sys.stderr)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        a = parse_args(parser, argv)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    except SystemExit as e:  # --help / --version
        return int(e.code or 0)
    if not a.command:
        parser.print_help(sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not getattr(a, "verbose", False):
        import_tensorflow_quietly()
    try:
        result = COMMANDS[a.command](a)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mach-tf: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's edge: one line unless --verbose
        if getattr(a, "verbose", False):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if type(e).__module__.startswith("tensorflow"):  # "Graph execution error:" says nothing
            from tfrecords_tools.verification import tf_reason

            msg = f"{type(e).__name__}: {tf_reason(e)}"
        print(f"mach-tf {a.command}: error: {msg}", file=sys.stderr)
        return 1
    if getattr(a, "json", False) or getattr(a, "report_json", False):
        print(json.dumps(result, default=str))
    elif a.command not in ("evaluate", "predict"):
        print(json.dumps(result, default=str, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
