"""What the throwaway servers share: the error they raise, free ports, the lifetime of a
server process (start, stop, signal, reap), the server tools they run and the secrets they
keep out of what those tools print."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Self

from proxy.local.tls import TlsFiles

logger = logging.getLogger(__name__)

# sun_path is 108 bytes including the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 107
_COMMAND_TIMEOUT = 90.0


class ThrowawayError(RuntimeError):
    """A throwaway server could not be set up, started or used."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def socket_open(path: Path, timeout: float = 0.2) -> bool:
    """True if something accepts connections on the Unix socket at ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            return True
    except OSError:
        return False


class Service(ABC):
    """Something local that is started and stopped; ``with`` stops it however the block ends."""

    @abstractmethod
    def start(self) -> None: ...

    # object, not None: a process's stop() may hand back its exit code.
    @abstractmethod
    def stop(self) -> object: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# Processes: is it alive, is it ours, stop it


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process; a zombie that nobody reaped counts as dead."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    except OSError:
        # No procfs: fall back to signal 0, which cannot tell zombies apart.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return bool(fields) and fields[0] not in ("Z", "X")


def wait_dead(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to end; True if it did."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def terminate(pid: int, first_signal: signal.Signals, grace: float, what: str) -> None:
    """Send ``first_signal``; after ``grace`` seconds SIGKILL the process (and its group if it leads one)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first_signal)
    if wait_dead(pid, grace):
        return
    logger.warning("%s %d ignored %s for %.0fs; killing it", what, pid, first_signal.name, grace)
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    if not wait_dead(pid, 5.0):
        raise ThrowawayError(f"could not stop {what} {pid}")


def runs_on(pid: int, path: Path) -> bool:
    """True if ``pid`` is alive and was started with ``path`` as an argument (or ``--opt=path``).

    A stale pid file may name a recycled pid: only ever signal a process that runs on our
    data dir (never, say, the system server).
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
    except OSError:
        return pid_alive(pid)
    wanted = str(path).encode()
    mentioned = any(arg == wanted or arg.endswith(b"=" + wanted) for arg in argv)
    return mentioned and pid_alive(pid)


def read_pidfile(path: Path) -> int | None:
    """The pid on the first line of ``path``, or None if there is no readable one."""
    try:
        return int(path.read_text(encoding="utf-8").split("\n")[0].strip())
    except (OSError, ValueError):
        return None


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a server log, for error messages ("" if unreadable)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------
# Server tools (initdb, psql, mariadb-install-db, ...) and what they print


def clean_env(prefixes: Sequence[str]) -> dict[str, str]:
    """This process's environment without the variables whose names start with ``prefixes``."""
    return {k: v for k, v in os.environ.items() if not k.startswith(tuple(prefixes))}


def run_tool(
    cmd: Sequence[str], env: Mapping[str, str], stdin_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a server tool to completion, its output captured as text."""
    # cwd: initdb and pg_ctl fail if they cannot resolve their current directory, and the
    # caller's cwd is often not readable by the OS user a server tool runs as.
    return subprocess.run(
        list(cmd),
        input=stdin_text,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=dict(env),
        cwd="/",
        timeout=_COMMAND_TIMEOUT,
        check=False,
    )


def mask(text: str, *secret_values: str) -> str:
    """``text`` with every non-empty secret replaced by ``***`` (longest first)."""
    for value in sorted({v for v in secret_values if v}, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def _inside_quotes(quoted: str) -> str:
    """What stands between a string literal's quotes (``E'a\\\\b'`` gives ``a\\\\b``)."""
    return quoted[quoted.index("'") + 1 : -1]


# ---------------------------------------------------------------------------
# The lifecycle every throwaway database server shares


def unix_socket_dir(base_dir: Path, socket_name: str, prefix: str) -> tuple[Path, bool]:
    """Where a server's unix socket goes; True if it is a directory of our own to remove later.

    Deep workdirs (pytest's tmp_path) can exceed the unix socket path limit; then a short
    directory under the system temp dir is used instead.
    """
    directory = base_dir / "socket"
    if len(str(directory / socket_name)) <= _MAX_UNIX_SOCKET_PATH:
        return directory, False
    return Path(tempfile.gettempdir()) / f"{prefix}{secrets.token_hex(4)}", True


class ThrowawayServer(Service):
    """A database server of our own under ``workdir``, on a loopback port of its own.

    Engines say how to set up and launch it (``_launch``) and how to stop it (``stop``);
    ``start`` is the same for all: nothing if it runs, clean up if launching fails.
    """

    kind: ClassVar[str]  # the engine, for log lines
    short_name: ClassVar[str]  # names its directory and its log file
    pid_file_name: ClassVar[str]  # where under its directory the server writes its pid
    # Inherited variables with these prefixes (PGDATA, PGSSLMODE, MYSQL_PWD, MYSQL_UNIX_PORT,
    # ...) would silently redirect the engine's tools to some other server or change how
    # they connect.
    env_prefixes: ClassVar[tuple[str, ...]]
    host: str
    port: int
    tls: TlsFiles | None
    pid: int | None
    base_dir: Path
    data_dir: Path
    log_file: Path
    pid_file: Path

    def __init__(self, workdir: Path, *, tls: TlsFiles | None = None, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port(self.host)
        self.tls = tls
        self.pid = None
        workdir.mkdir(parents=True, exist_ok=True)
        # A fresh subdirectory per instance: several servers may share one workdir.
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"{self.short_name}-", dir=workdir)).resolve()
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / f"{self.short_name}.log"
        self.pid_file = self.base_dir / self.pid_file_name

    @abstractmethod
    def _launch(self) -> None:
        """Set up on first use, launch the server, set ``pid`` and wait until it serves."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server; idempotent, and also cleans up after a half-finished start()."""

    def start(self) -> None:
        """Set up on first use, then start the server and wait until it serves."""
        if self.is_running():
            return
        began = time.monotonic()
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        logger.info(
            "%s started on %s:%d (pid %d, data %s) in %.2fs",
            self.kind,
            self.host,
            self.port,
            self.pid,
            self.data_dir,
            time.monotonic() - began,
        )

    def restart(self) -> None:
        """Stop and start again on the same port, keeping the data (for outage tests)."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self.pid is not None and pid_alive(self.pid)

    def _log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_file, lines)

    def _server_pid(self) -> int | None:
        """The server's pid: the one we started, else the pid file's if that process runs on
        our data dir (after a crash of ours; never someone else's process)."""
        pid = self.pid if self.pid is not None else read_pidfile(self.pid_file)
        return pid if pid is not None and runs_on(pid, self.data_dir) else None

    # -- the engine's tools ------------------------------------------------

    def _tool_env(self) -> dict[str, str]:
        return clean_env(self.env_prefixes)

    def _run_tool(
        self, cmd: Sequence[str], stdin_text: str | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_tool(cmd, self._tool_env() if env is None else env, stdin_text)

    @staticmethod
    @abstractmethod
    def _sql_literal(value: str) -> str:
        """``value`` as a string literal in the engine's SQL."""

    def _mask(self, text: str, *secret_values: str) -> str:
        """``text`` with every secret hidden, as is and as it stands inside its literal: a
        client that fails on a statement may echo it."""
        quoted = [_inside_quotes(self._sql_literal(value)) for value in secret_values if value]
        return mask(text, *secret_values, *quoted)
