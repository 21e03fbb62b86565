"""The package build (everything else is in pyproject.toml): the hot path (``proxy/build.py``
names it) is compiled to C with mypyc wherever a C compiler and the Python headers exist;
``ROTAPROXY_PURE_PYTHON=1``, or no compiler, builds pure Python, which behaves the same.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from proxy.build import COMPILED_MODULES, COMPILED_PACKAGES, GROUP, why_pure_python  # noqa: E402


def hot_sources() -> list[str]:
    """The files to compile, relative to the project root."""
    paths = [
        path
        for package in COMPILED_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / package / "__init__.py"  # (see proxy.build.hot_modules)
    ]
    paths.extend(ROOT / (name.replace(".", "/") + ".py") for name in COMPILED_MODULES)
    return [str(path.relative_to(ROOT)) for path in paths]


def compiled_extensions() -> list[Extension]:
    reason = why_pure_python(os.environ)
    if reason is not None:
        print(f"rotaproxy: building pure Python: {reason}", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    # mypy's own settings here, not pyproject's (which check the whole tree, strictly):
    # the compiled modules and what they import, third-party packages absent from an
    # isolated build environment typed as Any.
    os.chdir(ROOT)
    return mypycify(
        ["--config-file=", "--ignore-missing-imports", *hot_sources()], opt_level="3", group_name=GROUP
    )


setup(ext_modules=compiled_extensions())
