"""The ``mach-tf`` command. Each subcommand parses its arguments and calls one library
function; all the work lives in the library.

Exit codes: 0 success, 2 usage error, 1 failure (one line on stderr; the traceback only
with ``--verbose``). With ``--json`` the last line on stdout is one JSON object.
"""

from __future__ import annotations

import json
import os
import sys

from mach_tf.cli.commands import COMMANDS
from mach_tf.cli.parser import UsageError, build_parser, parse_args


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
