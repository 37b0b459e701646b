"""The structure the package promises its readers: one room per pipeline stage, imports
that show it, and a small public API.

The layering (``tfrecords_tools`` <- ``mach_tf`` <- ``export``, the stages of ``mach_tf``
in order, no cycles) is import-linter's contracts in ``setup.cfg``, which ``make test``
checks with ``lint-imports`` before it runs these tests, which check what import-linter
does not.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

import mach_tf
from tests.helpers import ROOT

PACKAGES = ("tfrecords_tools", "mach_tf", "export")
#: Only the command line defers the project's imports (``mach-tf --help`` loads no
#: TensorFlow).
LAZY_ALLOWED = (os.path.join("mach_tf", "cli") + os.sep,)


def _sources():
    for pkg in PACKAGES:
        for d, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in sorted(files):
                if f.endswith(".py"):
                    yield os.path.relpath(os.path.join(d, f), ROOT)


def _function_local_own_imports(path: str) -> list[str]:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        if id(node) not in top and any(n.split(".")[0] in PACKAGES for n in names):
            found.append(f"{path}:{node.lineno}")
    return found


def test_own_modules_are_imported_at_module_level():
    local = [hit for path in _sources() if not path.startswith(LAZY_ALLOWED)
             for hit in _function_local_own_imports(path)]
    assert local == []


def test_few_flat_modules_and_none_large():
    flat = [f for f in os.listdir(os.path.join(ROOT, "mach_tf"))
            if f.endswith(".py") and f not in ("__init__.py", "__main__.py")]
    assert len(flat) <= 12, flat
    sizes = {}
    for path in _sources():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            sizes[path] = sum(1 for _ in f)
    assert max(sizes.values()) <= 500, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_every_package_lists_its_api():
    for path in _sources():
        if path.endswith("__init__.py"):
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            names = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                     if isinstance(t, ast.Name)]
            assert "__all__" in names, path


def test_public_api_functions_and_lazy_names():
    assert callable(mach_tf.train) and callable(mach_tf.evaluate)
    assert mach_tf.train.__module__ == "mach_tf.launch.local"
    assert mach_tf.evaluate.__module__ == "mach_tf.inference.evaluation"
    listed = dir(mach_tf)
    for name in mach_tf.__all__:
        assert name in listed and getattr(mach_tf, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mach_tf.nope  # noqa: B018


def test_command_line_help_loads_no_tensorflow():
    code = ("import sys; from mach_tf.cli import build_parser; build_parser(); "
            "import mach_tf; assert 'tensorflow' not in sys.modules, 'tensorflow loaded'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
