"""Throwaway PostgreSQL and MariaDB servers, TLS files and a local Secrets Manager (moto).

One implementation shared by the tests, ``rotaproxy demo`` and ``rotaproxy bench``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler

logger = logging.getLogger(__name__)

__all__ = [
    "LocalSecretsManager",
    "ProxyProcess",
    "ThrowawayError",
    "ThrowawayMariaDB",
    "ThrowawayPostgres",
    "TlsFiles",
    "create_secret",
    "find_mariadb_binaries",
    "find_postgres_bindir",
    "free_port",
    "make_tls_files",
    "put_secret_json",
]

# postgres and initdb refuse to run as root, so as root everything runs as this OS user.
_PG_OS_USER = "postgres"
# sun_path is 108 bytes including the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 107
_PG_START_TIMEOUT = 30
_MARIADB_START_TIMEOUT = 30.0
# SIGTERM makes mariadbd flush InnoDB and exit; past this, SIGKILL.
_MARIADB_STOP_GRACE = 20.0
_COMMAND_TIMEOUT = 90.0
# Inherited variables with these prefixes (PGDATA, PGSSLMODE, MYSQL_PWD, MYSQL_UNIX_PORT, ...)
# would silently redirect our commands to some other server or change how they connect.
_PG_ENV_PREFIXES = ("PG",)
_MARIADB_ENV_PREFIXES = ("MYSQL", "MARIADB", "LIBMYSQL")


class ThrowawayError(RuntimeError):
    """A throwaway server could not be set up, started or used."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a server certificate signed by a throwaway CA."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls_files(directory: Path, name: str = "test") -> TlsFiles:
    """Create a new CA and a server cert for localhost, 127.0.0.1 and ::1 under ``directory``.

    Every call makes a different CA, so a second call gives a "wrong CA" for tests.
    """
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    files = TlsFiles(
        ca_file=directory / f"{name}-ca.pem",
        cert_file=directory / f"{name}-cert.pem",
        key_file=directory / f"{name}-key.pem",
    )
    files.ca_file.write_bytes(ca.cert_pem.bytes())
    files.cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    # Created 0600 from the start so the key is never readable by others, not even briefly.
    with contextlib.suppress(FileNotFoundError):
        files.key_file.unlink()
    fd = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as key_out:
        key_out.write(leaf.private_key_pem.bytes())
    return files


def _copy_tls_files(tls: TlsFiles, directory: Path, owner: tuple[int, int] | None) -> TlsFiles:
    """Copies of ``tls`` in ``directory`` (ca.pem, server.crt, server.key), the key mode 0600.

    Servers refuse a key readable by group/others, and the caller's files may sit where the
    server's OS user cannot reach them (or be deleted while the server still runs).
    """
    copies = TlsFiles(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.crt",
        key_file=directory / "server.key",
    )
    for source, target, mode in (
        (tls.ca_file, copies.ca_file, 0o644),
        (tls.cert_file, copies.cert_file, 0o644),
        (tls.key_file, copies.key_file, 0o600),
    ):
        shutil.copyfile(source, target)
        target.chmod(mode)
        if owner is not None:
            os.chown(target, *owner)
    return copies


# ---------------------------------------------------------------------------
# Server processes: what the throwaway PostgreSQL and MariaDB share


def _pid_alive(pid: int) -> bool:
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


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _terminate(pid: int, first_signal: signal.Signals, grace: float, what: str) -> None:
    """Send ``first_signal``; after ``grace`` seconds SIGKILL the process (and its group if it leads one)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first_signal)
    if _wait_dead(pid, grace):
        return
    logger.warning("%s %d ignored %s for %.0fs; killing it", what, pid, first_signal.name, grace)
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    if not _wait_dead(pid, 5.0):
        raise ThrowawayError(f"could not stop {what} {pid}")


def _runs_on(pid: int, path: Path) -> bool:
    """True if ``pid`` is alive and was started with ``path`` as an argument (or ``--opt=path``).

    A stale pid file may name a recycled pid: only ever signal a process that runs on our
    data dir (never, say, the system server).
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
    except OSError:
        return _pid_alive(pid)
    wanted = str(path).encode()
    mentioned = any(arg == wanted or arg.endswith(b"=" + wanted) for arg in argv)
    return mentioned and _pid_alive(pid)


def _read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").split("\n")[0].strip())
    except (OSError, ValueError):
        return None


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _clean_env(prefixes: Sequence[str]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(tuple(prefixes))}


def _run_tool(
    cmd: Sequence[str], env: Mapping[str, str], stdin_text: str | None = None
) -> subprocess.CompletedProcess[str]:
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


def _mask(text: str, *secret_values: str) -> str:
    """``text`` with every non-empty secret replaced by ``***`` (longest first)."""
    for value in sorted({v for v in secret_values if v}, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def _socket_dir(base_dir: Path, socket_name: str, prefix: str) -> tuple[Path, bool]:
    """Where a server's unix socket goes; True if it is a directory of our own to remove later.

    Deep workdirs (pytest's tmp_path) can exceed the unix socket path limit; then a short
    directory under the system temp dir is used instead.
    """
    socket_dir = base_dir / "socket"
    if len(str(socket_dir / socket_name)) <= _MAX_UNIX_SOCKET_PATH:
        return socket_dir, False
    return Path(tempfile.gettempdir()) / f"{prefix}{secrets.token_hex(4)}", True


class _ThrowawayServer:
    """The lifecycle every throwaway database server shares; subclasses do start() and stop()."""

    pid: int | None
    log_file: Path

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop and start again on the same port, keeping the data (for outage tests)."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid)

    def _log_tail(self, lines: int = 30) -> str:
        return _log_tail(self.log_file, lines)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# PostgreSQL


def find_postgres_bindir() -> Path:
    """Directory holding initdb, pg_ctl, postgres and psql."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        # pg_config may come from libpq-dev alone, whose bindir has no server.
        if out and (Path(out) / "initdb").is_file():
            return Path(out)
    candidates: list[tuple[tuple[int, ...], Path]] = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        if not (bindir / "initdb").is_file():
            continue
        try:
            version = tuple(int(part) for part in bindir.parent.name.split("."))
        except ValueError:
            continue
        candidates.append((version, bindir))
    if candidates:
        return max(candidates)[1]
    raise ThrowawayError(
        "PostgreSQL server binaries not found: install postgresql (apt-get install postgresql)"
    )


def _quote_ident(name: str) -> str:
    if not name or "\x00" in name:
        raise ValueError(f"invalid SQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    # standard_conforming_strings is on (the default), so backslashes need no escaping.
    if "\x00" in value:
        raise ValueError("SQL string literal cannot contain NUL")
    return "'" + value.replace("'", "''") + "'"


def _hba_name(name: str) -> str:
    # pg_hba.conf has no escape for '"' inside a quoted name; quoting also stops a role
    # called e.g. "all" from being read as a keyword.
    if not name or '"' in name or any(ord(ch) < 32 for ch in name):
        raise ValueError(f"role name cannot be used in pg_hba.conf: {name!r}")
    return f'"{name}"'


def _conf_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class ThrowawayPostgres(_ThrowawayServer):
    """A private PostgreSQL cluster under ``workdir``, on its own loopback port and socket."""

    host: str
    port: int
    superuser: str
    socket_dir: Path
    data_dir: Path
    log_file: Path
    pid: int | None

    def __init__(self, workdir: Path, *, tls: TlsFiles | None = None, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port(self.host)
        self.superuser = "postgres"
        self.tls = tls
        self.pid = None
        workdir.mkdir(parents=True, exist_ok=True)
        # A fresh subdirectory per instance: several servers may share one workdir, and it
        # is the directory handed to the postgres OS user.
        self.base_dir = Path(tempfile.mkdtemp(prefix="postgres-", dir=workdir)).resolve()
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"
        self.socket_dir, self._own_socket_dir = _socket_dir(self.base_dir, f".s.PGSQL.{self.port}", "rp-pg-")
        self._hba_user_lines: list[str] = []
        self._bindir: Path | None = None

    # -- helpers -----------------------------------------------------------

    def _bin(self, name: str) -> str:
        if self._bindir is None:
            self._bindir = find_postgres_bindir()
        return str(self._bindir / name)

    @staticmethod
    def _as_root() -> bool:
        return os.geteuid() == 0

    def _pg_owner(self) -> tuple[int, int] | None:
        if not self._as_root():
            return None
        try:
            entry = pwd.getpwnam(_PG_OS_USER)
        except KeyError as exc:
            raise ThrowawayError(
                f"running as root needs an OS user {_PG_OS_USER!r} to run PostgreSQL as"
            ) from exc
        return entry.pw_uid, entry.pw_gid

    def _run_server_tool(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        cmd = args
        if self._as_root():
            cmd = ["runuser", "-u", _PG_OS_USER, "--", *args]
        # _run_tool runs in "/": pytest may also take the o+x bit off its temp directories
        # again by the time a session-scoped server stops.
        return _run_tool(cmd, _clean_env(_PG_ENV_PREFIXES))

    def _make_traversable(self, owner: tuple[int, int]) -> None:
        # The caller's workdir is often a 0700 root-owned temp dir; the postgres user needs
        # to pass through it (and its parents) to reach its own directories.
        for directory in [self.base_dir.parent, *self.base_dir.parent.parents]:
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                logger.debug("adding o+x to %s so the postgres user can reach its dirs", directory)
                directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
        os.chown(self.base_dir, *owner)
        self.base_dir.chmod(0o755)

    def _prepare_socket_dir(self, owner: tuple[int, int] | None) -> None:
        self.socket_dir.mkdir(mode=0o755, exist_ok=True)
        if owner is not None:
            os.chown(self.socket_dir, *owner)

    def _initdb(self, owner: tuple[int, int] | None) -> None:
        result = self._run_server_tool(
            [
                self._bin("initdb"),
                "-D",
                str(self.data_dir),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-U",
                self.superuser,
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )
        if result.returncode != 0:
            raise ThrowawayError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")
        settings: dict[str, str] = {
            "listen_addresses": _conf_literal(self.host),
            "port": str(self.port),
            "unix_socket_directories": _conf_literal(str(self.socket_dir)),
            # Durability buys nothing for a throwaway cluster and costs start/commit time.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "password_encryption": "'scram-sha-256'",
            "logging_collector": "off",
        }
        if self.tls is not None:
            tls = _copy_tls_files(self.tls, self.data_dir, owner)
            settings["ssl"] = "on"
            settings["ssl_cert_file"] = _conf_literal(str(tls.cert_file))
            settings["ssl_key_file"] = _conf_literal(str(tls.key_file))
        # Appending keeps the file's owner (postgres); later lines override initdb's.
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# added by proxy.local.throwaway\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._write_hba()

    def _write_hba(self) -> None:
        lines = [
            "# written by proxy.local.throwaway",
            "local all all trust",
            *self._hba_user_lines,
            # Plain "host" rather than "hostssl" so tests can connect with and without TLS.
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
        ]
        # Rewritten in place, which keeps the owner and mode initdb gave the file.
        (self.data_dir / "pg_hba.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _read_pidfile(self) -> int | None:
        return _read_pidfile(self.data_dir / "postmaster.pid")

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Create the cluster on first use, then start it and wait until it accepts connections."""
        if self.is_running():
            return
        began = time.monotonic()
        try:
            owner = self._pg_owner()
            if owner is not None:
                self._make_traversable(owner)
            self._prepare_socket_dir(owner)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(owner)
            result = self._run_server_tool(
                [
                    self._bin("pg_ctl"),
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(_PG_START_TIMEOUT),
                    "-s",
                ]
            )
            if result.returncode != 0:
                raise ThrowawayError(
                    f"PostgreSQL failed to start on port {self.port}: "
                    f"{result.stderr.strip() or result.stdout.strip()}\n{self._log_tail()}"
                )
            self.pid = self._read_pidfile()
            if self.pid is None:
                raise ThrowawayError(f"PostgreSQL started but {self.data_dir}/postmaster.pid is unreadable")
        except BaseException:
            self.stop()
            raise
        logger.info(
            "PostgreSQL started on %s:%d (pid %d, data %s) in %.2fs",
            self.host,
            self.port,
            self.pid,
            self.data_dir,
            time.monotonic() - began,
        )

    def stop(self) -> None:
        """Fast shutdown; idempotent, and also cleans up after a half-finished start()."""
        pid = self.pid if self.pid is not None else self._read_pidfile()
        if pid is not None and _runs_on(pid, self.data_dir):
            result = self._run_server_tool(
                [self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-s"]
            )
            if result.returncode != 0 or not _wait_dead(pid, 5.0):
                logger.warning(
                    "pg_ctl stop failed (%s); killing postmaster %d",
                    result.stderr.strip(),
                    pid,
                )
                # SIGQUIT is an immediate shutdown in which the postmaster takes its
                # children down too; SIGKILL to the whole group is the last resort.
                _terminate(pid, signal.SIGQUIT, 5.0, "PostgreSQL postmaster")
        self.pid = None
        if self._own_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- administration ----------------------------------------------------

    def sql(self, query: str, database: str = "postgres") -> str:
        """Run ``query`` with psql as the superuser over the unix socket; return its output."""
        return self._psql(query, database)

    def _psql(self, query: str, database: str, secret: str | None = None) -> str:
        env = _clean_env(_PG_ENV_PREFIXES)
        # Via the environment, not -d/-h, so no name is ever parsed as a connection string.
        env.update(
            PGHOST=str(self.socket_dir),
            PGPORT=str(self.port),
            PGUSER=self.superuser,
            PGDATABASE=database,
            PGCLIENTENCODING="UTF8",
        )
        # The query goes through stdin so passwords never show up in the process list.
        result = _run_tool([self._bin("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"], env, query)
        if result.returncode != 0:
            message = result.stderr.strip()
            if secret:
                message = _mask(message, secret, secret.replace("'", "''"))
            raise ThrowawayError(f"psql failed: {message}")
        return result.stdout.strip()

    def create_user(
        self,
        name: str,
        password: str,
        *,
        auth: Literal["scram-sha-256", "md5", "password"] = "scram-sha-256",
        superuser: bool = False,
        createrole: bool = False,
    ) -> None:
        """Create a login role; md5 and cleartext-password roles get their own pg_hba lines."""
        if auth not in ("scram-sha-256", "md5", "password"):
            raise ValueError(f"unsupported auth method: {auth!r}")
        hba_lines: list[str] = []
        if auth != "scram-sha-256":
            hba_name = _hba_name(name)
            hba_lines = [
                f"host all {hba_name} 127.0.0.1/32 {auth}",
                f"host all {hba_name} ::1/128 {auth}",
            ]
        options = " SUPERUSER" if superuser else ""
        options += " CREATEROLE" if createrole else ""
        statements = []
        if auth == "md5":
            statements.append("SET password_encryption = 'md5';")
        statements.append(
            f"CREATE ROLE {_quote_ident(name)} LOGIN PASSWORD {_quote_literal(password)}{options};"
        )
        self._psql("\n".join(statements), "postgres", secret=password)
        if hba_lines:
            self._hba_user_lines.extend(hba_lines)
            self._reload_hba()
        logger.debug("created role %s (auth %s)", name, auth)

    def _reload_hba(self) -> None:
        # pg_reload_conf() only signals the postmaster. A new session reports the
        # postmaster's config load time, so once it moves the new pg_hba.conf is live.
        before = self.sql("SELECT pg_conf_load_time()")
        self._write_hba()
        self.sql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10.0
        while self.sql("SELECT pg_conf_load_time()") == before:
            if time.monotonic() >= deadline:
                raise ThrowawayError("PostgreSQL did not reload pg_hba.conf within 10s")
            time.sleep(0.01)

    def create_database(self, name: str, owner: str) -> None:
        self.sql(f"CREATE DATABASE {_quote_ident(name)} OWNER {_quote_ident(owner)};")


# ---------------------------------------------------------------------------
# MariaDB

# Tried in addition to $PATH: as a non-root user /usr/sbin is often not on it.
_MARIADB_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/mysql/bin")
# The hosts root can log in from: the unix socket, and TCP over IPv4 and IPv6 loopback.
_MARIADB_ROOT_HOSTS = ("localhost", "127.0.0.1", "::1")


def _find_program(name: str) -> Path | None:
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_MARIADB_EXTRA_DIRS])
    found = shutil.which(name, path=search)
    return Path(found) if found is not None else None


def find_mariadb_binaries() -> tuple[Path, Path]:
    """Paths of ``mariadbd`` and ``mariadb-install-db``."""
    server = _find_program("mariadbd")
    install_db = _find_program("mariadb-install-db")
    if server is None or install_db is None:
        raise ThrowawayError(
            "MariaDB server binaries not found: install mariadb-server (apt-get install mariadb-server)"
        )
    return server, install_db


def _find_mariadb_client() -> Path:
    client = _find_program("mariadb")
    if client is None:
        raise ThrowawayError(
            "MariaDB client not found: install mariadb-client (apt-get install mariadb-client)"
        )
    return client


def _my_literal(value: str) -> str:
    # Our servers run without NO_BACKSLASH_ESCAPES, so a backslash escapes inside literals.
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\x00", "\\0")
    return f"'{escaped}'"


def _my_ident(name: str) -> str:
    if not name or "\x00" in name:
        raise ValueError(f"invalid SQL identifier: {name!r}")
    return "`" + name.replace("`", "``") + "`"


def _my_grant_db(name: str) -> str:
    # In GRANT ... ON db.*, '_' and '%' in the database name are wildcards: escape them so
    # "app_db" grants app_db and not also "appXdb".
    return _my_ident(name.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%"))


def _my_account(name: str, host: str) -> str:
    return f"{_my_literal(name)}@{_my_literal(host)}"


class ThrowawayMariaDB(_ThrowawayServer):
    """A private MariaDB server under ``workdir``, on its own loopback port and socket.

    Root logs in with ``root_password`` over the socket and over TCP from 127.0.0.1/::1.
    """

    host: str
    port: int
    socket_path: Path
    data_dir: Path
    log_file: Path
    root_password: str
    pid: int | None

    def __init__(self, workdir: Path, *, tls: TlsFiles | None = None, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port(self.host)
        self.tls = tls
        self.pid = None
        # URL-safe characters: nothing to escape in SQL or in the client option file.
        self.root_password = secrets.token_urlsafe(24)
        workdir.mkdir(parents=True, exist_ok=True)
        # A fresh subdirectory per instance: several servers may share one workdir.
        self.base_dir = Path(tempfile.mkdtemp(prefix="mariadb-", dir=workdir)).resolve()
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "mariadbd.log"
        self._pid_file = self.base_dir / "mariadbd.pid"
        # Written once mariadb-install-db has succeeded: a data dir without it is half made.
        self._installed_marker = self.base_dir / "installed"
        self._client_options = self.base_dir / "client.cnf"
        self._socket_dir, self._own_socket_dir = _socket_dir(self.base_dir, "mysqld.sock", "rp-my-")
        self.socket_path = self._socket_dir / "mysqld.sock"
        self._process: subprocess.Popen[bytes] | None = None
        self._binaries: tuple[Path, Path] | None = None
        self._client: Path | None = None

    # -- helpers -----------------------------------------------------------

    def _server_binaries(self) -> tuple[Path, Path]:
        if self._binaries is None:
            self._binaries = find_mariadb_binaries()
        return self._binaries

    @staticmethod
    def _user_options() -> list[str]:
        # mariadbd refuses to run as root unless told to, and as anyone else it cannot
        # switch user: then it simply runs as the caller.
        return ["--user=root"] if os.geteuid() == 0 else []

    def _write_private(self, path: Path, text: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # 0600 from the start: these files hold the root password.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)

    def _root_setup_sql(self) -> str:
        # Runs inside mariadb-install-db's bootstrap, so root never exists without a
        # password while the server listens. The grant tables are not loaded there yet,
        # hence the first FLUSH PRIVILEGES; ALTER USER needs them.
        keep = ", ".join(_my_literal(host) for host in _MARIADB_ROOT_HOSTS)
        lines = [
            "FLUSH PRIVILEGES;",
            # Anonymous users would shadow real ones ('' matches any name from localhost);
            # root@<hostname> is unusable with --skip-name-resolve and only adds warnings.
            "DELETE FROM mysql.global_priv WHERE User = '';",
            f"DELETE FROM mysql.global_priv WHERE User = 'root' AND Host NOT IN ({keep});",
            f"DELETE FROM mysql.proxies_priv WHERE Host NOT IN ({keep});",
            "FLUSH PRIVILEGES;",
        ]
        password = _my_literal(self.root_password)
        for host in _MARIADB_ROOT_HOSTS:
            account = _my_account("root", host)
            lines += [
                f"CREATE USER IF NOT EXISTS {account};",
                f"GRANT ALL PRIVILEGES ON *.* TO {account} WITH GRANT OPTION;",
                # One ALTER USER per account: in "ALTER USER a, b IDENTIFIED ..." the
                # IDENTIFIED clause belongs to b alone.
                f"ALTER USER {account} IDENTIFIED VIA mysql_native_password USING PASSWORD({password});",
            ]
        return "\n".join(lines) + "\n"

    def _install(self) -> None:
        # Whatever a failed earlier attempt left behind would make mariadb-install-db
        # keep half-made tables.
        shutil.rmtree(self.data_dir, ignore_errors=True)
        _, install_db = self._server_binaries()
        setup_file = self.base_dir / "root-setup.sql"
        self._write_private(setup_file, self._root_setup_sql())
        try:
            result = _run_tool(
                [
                    str(install_db),
                    # Never /etc/mysql/my.cnf or ~/.my.cnf: they belong to the system server.
                    "--no-defaults",
                    f"--datadir={self.data_dir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    f"--extra-file={setup_file}",
                    *self._user_options(),
                ],
                _clean_env(_MARIADB_ENV_PREFIXES),
            )
        finally:
            setup_file.unlink(missing_ok=True)
        if result.returncode != 0:
            output = _mask(f"{result.stderr.strip()}\n{result.stdout.strip()}".strip(), self.root_password)
            raise ThrowawayError(f"mariadb-install-db failed: {output}")
        if self.tls is not None:
            _copy_tls_files(self.tls, self.data_dir, owner=None)
        self._installed_marker.touch()

    def _server_command(self) -> list[str]:
        server, _ = self._server_binaries()
        cmd = [
            str(server),
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--port={self.port}",
            f"--socket={self.socket_path}",
            f"--pid-file={self._pid_file}",
            f"--bind-address={self.host}",
            *self._user_options(),
            "--skip-name-resolve",
            # Durability buys nothing for a throwaway server.
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-buffer-pool-size=64M",
            "--max-connections=300",
            # Tests send packets over 16 MiB (the protocol's multi-packet case).
            "--max-allowed-packet=256M",
            # Without a config file the compiled-in default would be latin1; utf8mb4 is
            # what Debian's packaged server and RDS hand out.
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            f"--log-error={self.log_file}",
        ]
        if self.tls is not None:
            cmd += [
                f"--ssl-ca={self.data_dir / 'ca.pem'}",
                f"--ssl-cert={self.data_dir / 'server.crt'}",
                f"--ssl-key={self.data_dir / 'server.key'}",
            ]
        return cmd

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        # The real client rather than a bare socket probe, which the server would log as an
        # aborted connection. Connections wait in the listen backlog until the grant tables
        # are loaded; before the socket listens (or while a killed run's stale socket is
        # still there) the client fails with 2002 and we try again.
        deadline = time.monotonic() + _MARIADB_START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise ThrowawayError(
                    f"mariadbd exited with {process.returncode} on port {self.port}:\n{self._log_tail()}"
                )
            if self.socket_path.exists():
                result = self._run_client("SELECT 1", None)
                if result.returncode == 0:
                    return
                if "ERROR 2002 " not in result.stderr:
                    message = _mask(result.stderr.strip(), self.root_password)
                    raise ThrowawayError(f"mariadbd is up but root cannot log in: {message}")
            if time.monotonic() >= deadline:
                raise ThrowawayError(
                    f"mariadbd did not come up on port {self.port} within "
                    f"{_MARIADB_START_TIMEOUT:.0f}s:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Create the data dir on first use, then start mariadbd and wait until it serves root."""
        if self.is_running():
            return
        began = time.monotonic()
        try:
            self._socket_dir.mkdir(mode=0o755, exist_ok=True)
            if not self._installed_marker.exists():
                self._install()
            self._write_private(
                self._client_options,
                "[client]\n"
                "user=root\n"
                f"password={self.root_password}\n"
                f"socket={self.socket_path}\n"
                "protocol=socket\n"
                "default-character-set=utf8mb4\n",
            )
            with self.log_file.open("ab") as log:
                # Own session: a Ctrl-C meant for the test run does not hit the server
                # before stop() shuts it down, and SIGKILL can take its whole group.
                self._process = subprocess.Popen(
                    self._server_command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_clean_env(_MARIADB_ENV_PREFIXES),
                    cwd="/",
                    start_new_session=True,
                )
            self.pid = self._process.pid
            self._wait_ready(self._process)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "MariaDB started on %s:%d (pid %d, data %s) in %.2fs",
            self.host,
            self.port,
            self.pid,
            self.data_dir,
            time.monotonic() - began,
        )

    def stop(self) -> None:
        """Clean shutdown (SIGTERM), SIGKILL as the fallback; idempotent, also after a failed start()."""
        process = self._process
        if process is not None:
            # Our own unreaped child: its pid cannot have been recycled.
            if process.poll() is None:
                _terminate(process.pid, signal.SIGTERM, _MARIADB_STOP_GRACE, "mariadbd")
            process.wait()
        else:
            pid = self.pid if self.pid is not None else _read_pidfile(self._pid_file)
            if pid is not None and _runs_on(pid, self.data_dir):
                _terminate(pid, signal.SIGTERM, _MARIADB_STOP_GRACE, "mariadbd")
        self._process = None
        self.pid = None
        if self._own_socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    # -- administration ----------------------------------------------------

    def sql(self, query: str, database: str | None = None) -> str:
        """Run ``query`` (one or more statements) as root over the unix socket; return its output.

        Rows come back tab-separated, one per line, without column names.
        """
        return self._mariadb(query, database)

    def _mariadb(self, query: str, database: str | None, secret: str | None = None) -> str:
        result = self._run_client(query, database)
        if result.returncode != 0:
            # The client echoes the failing statement, which may hold a password.
            hidden = [self.root_password]
            if secret:
                hidden += [secret, _my_literal(secret)[1:-1]]
            raise ThrowawayError(f"mariadb client failed: {_mask(result.stderr.strip(), *hidden)}")
        return result.stdout.strip()

    def _run_client(self, query: str, database: str | None) -> subprocess.CompletedProcess[str]:
        if self._client is None:
            self._client = _find_mariadb_client()
        # The password comes from the 0600 option file and the query through stdin, so
        # neither shows up in the process list; --defaults-file also keeps the system's
        # my.cnf (and its socket) out of it.
        cmd = [
            str(self._client),
            f"--defaults-file={self._client_options}",
            "--batch",
            "--skip-column-names",
            "--raw",
        ]
        if database is not None:
            cmd.append(f"--database={database}")
        return _run_tool(cmd, _clean_env(_MARIADB_ENV_PREFIXES), query)

    def create_user(
        self,
        name: str,
        password: str,
        *,
        plugin: Literal["mysql_native_password", "ed25519"] = "mysql_native_password",
        host: str = "%",
    ) -> None:
        """Create ``name@host`` authenticating with ``plugin`` (ed25519 is installed if needed)."""
        if plugin not in ("mysql_native_password", "ed25519"):
            raise ValueError(f"unsupported auth plugin: {plugin!r}")
        statements = []
        if plugin == "ed25519":
            statements.append("INSTALL PLUGIN IF NOT EXISTS ed25519 SONAME 'auth_ed25519';")
        statements.append(
            f"CREATE USER {_my_account(name, host)} "
            f"IDENTIFIED VIA {plugin} USING PASSWORD({_my_literal(password)});"
        )
        self._mariadb("\n".join(statements), None, secret=password)
        logger.debug("created MariaDB user %s@%s (plugin %s)", name, host, plugin)

    def create_database(self, name: str, owner: str) -> None:
        """Create database ``name`` and grant ``owner@'%'`` everything on it."""
        self.sql(
            f"CREATE DATABASE {_my_ident(name)};\n"
            f"GRANT ALL PRIVILEGES ON {_my_grant_db(name)}.* TO {_my_account(owner, '%')};"
        )

    def grant(self, sql_privileges: str, on: str, to: str, *, host: str = "%") -> None:
        """``GRANT sql_privileges ON on TO to@host``; the first two are SQL, e.g. ("PROCESS", "*.*")."""
        self.sql(f"GRANT {sql_privileges} ON {on} TO {_my_account(to, host)};")


# ---------------------------------------------------------------------------
# Secrets Manager (moto)


class LocalSecretsManager:
    """moto's standalone server (as moto.server.ThreadedMotoServer) on a free loopback port.

    Secrets live in moto's in-process backends, so they survive stop() and start().
    """

    host: str
    port: int
    region: str

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port(self.host)
        self.region = "us-east-1"
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopping = False

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _handler_class(self) -> type[WSGIRequestHandler]:
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        owner = self

        class TrackingHandler(MotoRequestHandler):
            # Clients keep HTTP connections alive; stop() must cut them, or a pooled
            # connection would keep talking to a "stopped" server (and block its shutdown).
            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    if owner._stopping:
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                    else:
                        owner._connections.add(self.connection)

            def finish(self) -> None:
                with owner._lock:
                    owner._connections.discard(self.connection)
                super().finish()

        return TrackingHandler

    def start(self) -> None:
        """Serve on ``self.port``; returns once the port accepts connections."""
        if self._server is not None:
            return
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        # Bound here rather than inside ThreadedMotoServer's thread: there a busy port
        # ends the thread via sys.exit() and its start() then waits forever.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            server = make_server(
                self.host,
                self.port,
                DomainDispatcherApplication(create_backend_app),
                threaded=True,
                request_handler=self._handler_class(),
                fd=listener.fileno(),
            )
        except OSError as exc:
            raise ThrowawayError(f"cannot listen on {self.host}:{self.port} for moto: {exc}") from exc
        finally:
            # make_server duplicated the descriptor.
            listener.close()
        # Handler threads are cut off in stop(); joining them there could only hang.
        server.block_on_close = False  # type: ignore[attr-defined]
        self._stopping = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"moto-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not _port_open(self.host, self.port):
            if time.monotonic() >= deadline:
                self.stop()
                raise ThrowawayError(f"moto server on port {self.port} did not come up")
            time.sleep(0.02)
        logger.info("moto Secrets Manager listening on %s", self.endpoint_url)

    def stop(self) -> None:
        """Stop serving and cut open connections; idempotent. Secrets are kept."""
        server, thread = self._server, self._thread
        if server is None:
            return
        with self._lock:
            self._stopping = True
        server.shutdown()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._connections.clear()
        if thread is not None:
            thread.join(timeout=10.0)
        server.server_close()
        self._server = None
        self._thread = None
        logger.info("moto Secrets Manager on port %d stopped", self.port)

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``aioboto3.Session().client("secretsmanager", **kwargs)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }

    def environ(self) -> dict[str, str]:
        """Environment a subprocess (the proxy) needs to talk to this server."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            # Otherwise botocore may probe the EC2 metadata endpoint for credentials.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def __enter__(self) -> LocalSecretsManager:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def create_secret(client: Any, secret_id: str, value: Mapping[str, object]) -> str:
    """Create ``secret_id`` holding ``value`` as JSON; return its VersionId."""
    response = await client.create_secret(Name=secret_id, SecretString=json.dumps(dict(value)))
    return str(response["VersionId"])


async def put_secret_json(
    client: Any,
    secret_id: str,
    value: Mapping[str, object],
    stages: Sequence[str] = ("AWSCURRENT",),
) -> str:
    """Store a new version of ``secret_id`` with the given stages; return its VersionId."""
    response = await client.put_secret_value(
        SecretId=secret_id,
        SecretString=json.dumps(dict(value)),
        VersionStages=list(stages),
    )
    return str(response["VersionId"])


# ---------------------------------------------------------------------------
# rotaproxy itself, as a separate process (as it runs in production)


class ProxyProcess:
    """``python -m proxy run -c CONFIG`` with its log in a file; ready once every port accepts."""

    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        port: int,
        *,
        extra_ports: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        log_level: str = "debug",
    ) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.port = port
        self.ports = (port, *extra_ports)
        self.env = {**os.environ, **(env or {})}
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, timeout: float = 20.0) -> None:
        import sys

        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "proxy",
                    "--log-level",
                    self.log_level,
                    "run",
                    "-c",
                    str(self.config_path),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        if wait:
            self.wait_listening(timeout)

    def wait_listening(self, timeout: float = 20.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while not _port_open("127.0.0.1", port):
                if self.process.poll() is not None:
                    raise ThrowawayError(f"rotaproxy exited with {self.process.returncode}:\n{self.logs()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise ThrowawayError(f"rotaproxy did not listen on {port}:\n{self.logs()}")
                time.sleep(0.05)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def __enter__(self) -> ProxyProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
