"""Throwaway PostgreSQL servers, TLS files and a local Secrets Manager (moto).

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
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler

logger = logging.getLogger(__name__)

__all__ = [
    "LocalSecretsManager",
    "ProxyProcess",
    "ThrowawayError",
    "ThrowawayPostgres",
    "TlsFiles",
    "create_secret",
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
_COMMAND_TIMEOUT = 90.0


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


def _clean_env() -> dict[str, str]:
    # Inherited PG* variables (PGDATA, PGPORT, PGSSLMODE, ...) would silently redirect our
    # commands to some other server or change how they connect.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


class ThrowawayPostgres:
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
        socket_dir = self.base_dir / "socket"
        self._own_socket_dir = False
        if len(str(socket_dir / f".s.PGSQL.{self.port}")) > _MAX_UNIX_SOCKET_PATH:
            # Deep workdirs (pytest's tmp_path) can exceed the unix socket path limit.
            socket_dir = Path(tempfile.gettempdir()) / f"rp-pg-{secrets.token_hex(4)}"
            self._own_socket_dir = True
        self.socket_dir = socket_dir
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
        # cwd: pg_ctl and initdb fail if they cannot resolve their current directory, the
        # caller's cwd is often not readable by the postgres user, and pytest may take the
        # o+x bit off its temp directories again by the time a session-scoped server stops.
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=_clean_env(),
            cwd="/",
            timeout=_COMMAND_TIMEOUT,
            check=False,
        )

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
            cert = self.data_dir / "server.crt"
            key = self.data_dir / "server.key"
            shutil.copyfile(self.tls.cert_file, cert)
            shutil.copyfile(self.tls.key_file, key)
            # The server refuses a key readable by group/others.
            cert.chmod(0o644)
            key.chmod(0o600)
            if owner is not None:
                os.chown(cert, *owner)
                os.chown(key, *owner)
            settings["ssl"] = "on"
            settings["ssl_cert_file"] = _conf_literal(str(cert))
            settings["ssl_key_file"] = _conf_literal(str(key))
        # Appending keeps the file's owner (postgres); later lines override initdb's.
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# added by proxy.throwaway\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._write_hba()

    def _write_hba(self) -> None:
        lines = [
            "# written by proxy.throwaway",
            "local all all trust",
            *self._hba_user_lines,
            # Plain "host" rather than "hostssl" so tests can connect with and without TLS.
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
        ]
        # Rewritten in place, which keeps the owner and mode initdb gave the file.
        (self.data_dir / "pg_hba.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _read_pidfile(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text(encoding="utf-8").split("\n")[0]
            return int(first.strip())
        except (OSError, ValueError):
            return None

    def _is_our_postmaster(self, pid: int) -> bool:
        # A stale postmaster.pid may name a recycled pid: only touch a process that runs
        # postgres on our data dir (never, say, the system server).
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
        except OSError:
            return _pid_alive(pid)
        return str(self.data_dir).encode() in cmdline and _pid_alive(pid)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

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
        if pid is not None and self._is_our_postmaster(pid):
            result = self._run_server_tool(
                [self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-s"]
            )
            if result.returncode != 0 or not _wait_dead(pid, 5.0):
                logger.warning(
                    "pg_ctl stop failed (%s); killing postmaster %d",
                    result.stderr.strip(),
                    pid,
                )
                self._kill(pid)
        self.pid = None
        if self._own_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def _kill(self, pid: int) -> None:
        # SIGQUIT is an immediate shutdown in which the postmaster takes its children
        # down too; SIGKILL to the whole group is the last resort.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        if _wait_dead(pid, 5.0):
            return
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        if not _wait_dead(pid, 5.0):
            raise ThrowawayError(f"could not stop PostgreSQL postmaster {pid}")

    def restart(self) -> None:
        """Stop and start again on the same port, keeping the data (for outage tests)."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid)

    def __enter__(self) -> ThrowawayPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- administration ----------------------------------------------------

    def sql(self, query: str, database: str = "postgres") -> str:
        """Run ``query`` with psql as the superuser over the unix socket; return its output."""
        return self._psql(query, database)

    def _psql(self, query: str, database: str, secret: str | None = None) -> str:
        env = _clean_env()
        # Via the environment, not -d/-h, so no name is ever parsed as a connection string.
        env.update(
            PGHOST=str(self.socket_dir),
            PGPORT=str(self.port),
            PGUSER=self.superuser,
            PGDATABASE=database,
            PGCLIENTENCODING="UTF8",
        )
        # The query goes through stdin so passwords never show up in the process list.
        result = subprocess.run(
            [self._bin("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"],
            input=query,
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=env,
            timeout=_COMMAND_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            message = result.stderr.strip()
            if secret:
                message = message.replace(secret, "***").replace(secret.replace("'", "''"), "***")
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
    """``python -m proxy run -c CONFIG`` with its log in a file; ready once ``port`` accepts."""

    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        port: int,
        *,
        env: Mapping[str, str] | None = None,
        log_level: str = "debug",
    ) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.port = port
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
        while not _port_open("127.0.0.1", self.port):
            if self.process.poll() is not None:
                raise ThrowawayError(f"rotaproxy exited with {self.process.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ThrowawayError(f"rotaproxy did not listen on {self.port}:\n{self.logs()}")
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
