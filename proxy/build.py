"""Which build is running: the hot path compiled to C by mypyc, or pure Python.

``setup.py`` compiles the modules named here whenever a C compiler and the Python headers
exist, unless ``ROTAPROXY_PURE_PYTHON=1`` is set at build time. A compiled module is an
extension module (``.so``) beside its ``.py``, and Python imports the extension first; the
pure-Python build has only the ``.py`` files and behaves the same, slower.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import pkgutil
import shlex
import shutil
import sys
import sysconfig
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Final

PURE_PYTHON_ENV: Final = "ROTAPROXY_PURE_PYTHON"

# Compiled: every module of these packages (the sans-IO protocols) ...
COMPILED_PACKAGES: Final = ("protocols",)
# ... and the I/O modules every login, relayed byte or pooled query goes through. (A class
# compiled here is subclassed only here: an interpreted module may not subclass it.)
COMPILED_MODULES: Final = (
    "proxy.core.counters",
    "proxy.core.endpoint",
    "proxy.core.relay",
    "proxy.listener",
    "proxy.mysql.client",
    "proxy.mysql.transaction",
    "proxy.pool.keep",
    "proxy.pool.known_logins",
    "proxy.pool.pool",
    "proxy.pool.queue",
    "proxy.pool.states",
    "proxy.postgres.attachment",
    "proxy.postgres.client",
    "proxy.postgres.transaction",
    "proxy.session_mode",
    "proxy.transaction_mode",
)

COMPILED: Final = "compiled"
PURE: Final = "pure Python"
MIXED: Final = "mixed"  # some compiled, some not: a stale or partial build

_EXTENSION_SUFFIXES: Final = tuple(importlib.machinery.EXTENSION_SUFFIXES)
# mypyc compiles every module into one shared library, GROUP's; each module's own .so is a
# small shim that loads it, and a rebuild may leave the shims alone.
GROUP: Final = "rotaproxy"
SHARED_LIBRARY: Final = f"{GROUP}__mypyc"


def why_pure_python(environ: Mapping[str, str]) -> str | None:
    """Why a build in this environment cannot or may not compile, or None (setup.py asks)."""
    if environ.get(PURE_PYTHON_ENV) == "1":
        return f"{PURE_PYTHON_ENV}=1"
    compiler = shlex.split(environ.get("CC") or sysconfig.get_config_var("CC") or "cc")[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler} is not on PATH)"
    include = sysconfig.get_paths()["include"]
    if not Path(include, "Python.h").is_file():
        return f"no Python headers (Python.h is not in {include})"
    return None


def hot_modules() -> list[str]:
    """Every module a compiled build compiles, by name."""
    names: list[str] = []
    # A top-level package's own __init__ stays Python: an editable install imports it as .py.
    for package in COMPILED_PACKAGES:
        path = importlib.import_module(package).__path__
        names.extend(info.name for info in pkgutil.walk_packages(path, prefix=f"{package}."))
    names.extend(COMPILED_MODULES)
    return names


def is_compiled(name: str) -> bool:
    """Whether module ``name`` was imported from an extension module."""
    origin = getattr(importlib.import_module(name), "__file__", None) or ""
    return origin.endswith(_EXTENSION_SUFFIXES)


def stale_modules() -> list[str]:
    """Compiled modules whose ``.py`` was edited after they were compiled (the old code runs)."""
    stale = []
    for name in hot_modules():
        origin = getattr(importlib.import_module(name), "__file__", None) or ""
        if origin.endswith(_EXTENSION_SUFFIXES):
            shim = Path(origin)
            source = shim.with_name(shim.name.split(".", 1)[0] + ".py")
            if source.is_file() and source.stat().st_mtime > _compiled_at(shim):
                stale.append(name)
    return stale


def _compiled_at(shim: Path) -> float:
    """When the code behind a compiled module's shim was built: the newer of the two files."""
    shared = getattr(sys.modules.get(SHARED_LIBRARY), "__file__", None)
    built = shim.stat().st_mtime
    return max(built, Path(shared).stat().st_mtime) if shared else built


@cache
def build() -> str:
    """COMPILED, PURE or MIXED: what this process runs."""
    compiled = {is_compiled(name) for name in hot_modules()}
    if compiled == {True}:
        return COMPILED
    return PURE if compiled == {False} else MIXED
