"""Which build runs. The test command runs the whole suite against the compiled build, then
a short smoke against a pure-Python install of the same code (``ROTAPROXY_PURE_PYTHON=1``,
``scripts/dev``): each run checks that it got the build it asked for."""

from __future__ import annotations

import os
import subprocess
import sys

from proxy.build import COMPILED, PURE, PURE_PYTHON_ENV, build, hot_modules, is_compiled


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
