"""Which build runs. The test command runs the whole suite against the compiled build, then
a short smoke against a pure-Python install of the same code (``ROTAPROXY_PURE_PYTHON=1``,
``scripts/dev``): each run checks that it got the build it asked for."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

from proxy.build import (
    COMPILED,
    PURE,
    PURE_PYTHON_ENV,
    SHARED_LIBRARY,
    build,
    hot_modules,
    is_compiled,
    stale_modules,
    why_pure_python,
)


def expected_build() -> str:
    return PURE if os.environ.get(PURE_PYTHON_ENV) == "1" else COMPILED


def test_every_hot_module_is_compiled_in_the_compiled_build_and_none_in_the_pure_one() -> None:
    expected = expected_build()
    names = hot_modules()
    assert "protocols.postgres.pooling" in names and "proxy.core.endpoint" in names
    wrong = [name for name in names if is_compiled(name) != (expected == COMPILED)]
    assert not wrong, f"the {expected} build is running, but these modules are not of it: {wrong}"
    assert build() == expected


def test_rotaproxy_version_says_which_build_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("rotaproxy 0.1.0 (")
    assert f"({expected_build()}, Python " in result.stdout


def test_an_edit_after_the_build_is_stale_until_the_next_build() -> None:
    """Checked at every test run (conftest): a .py newer than what was compiled from it."""
    assert stale_modules() == []
    if expected_build() != COMPILED:
        return  # nothing compiled, nothing stale
    name = "proxy.pool.queue"
    shim = Path(importlib.import_module(name).__file__ or "")
    source = shim.with_name("queue.py")
    shared = Path(sys.modules[SHARED_LIBRARY].__file__ or "")
    times = {path: path.stat().st_mtime for path in (shim, source, shared)}
    built = max(times[shim], times[shared])
    try:
        os.utime(source, (built + 10, built + 10))  # edited after the build
        assert stale_modules() == [name]
        # A rebuild writes the shared library; the module's own shim may stay as it was.
        os.utime(shim, (built - 100, built - 100))
        os.utime(shared, (built + 20, built + 20))
        assert stale_modules() == []
    finally:
        for path, mtime in times.items():
            os.utime(path, (mtime, mtime))


def test_a_build_without_a_compiler_or_headers_or_when_asked_is_pure_and_says_why(tmp_path: Path) -> None:
    """setup.py compiles only where it can: asked not to, with no C compiler (a machine
    without gcc) or with no Python headers, it builds pure Python and prints the reason."""
    assert why_pure_python({PURE_PYTHON_ENV: "1"}) == f"{PURE_PYTHON_ENV}=1"
    missing = str(tmp_path / "no-such-cc")
    assert why_pure_python({"CC": f"{missing} -O2"}) == f"no C compiler ({missing} is not on PATH)"
    if expected_build() == COMPILED:  # this machine compiled the suite's build: it has both
        assert why_pure_python({}) is None
