"""A throwaway PostgreSQL cluster: initdb into a private directory, its own loopback port
and unix socket, TLS, and roles for SCRAM, MD5 and cleartext-password logins."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Literal

from protocols.postgres import sql
from proxy.local.process import (
    ThrowawayError,
    ThrowawayServer,
    read_pidfile,
    terminate,
    unix_socket_dir,
    wait_dead,
)
from proxy.local.tls import TlsFiles, copy_tls_files

logger = logging.getLogger(__name__)

# postgres and initdb refuse to run as root, so as root everything runs as this OS user.
_PG_OS_USER = "postgres"
_PG_START_TIMEOUT = 30


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


def _hba_name(name: str) -> str:
    """A role name as pg_hba.conf reads it (its own grammar, not SQL's)."""
    # pg_hba.conf has no escape for '"' inside a quoted name; quoting also stops a role
    # called e.g. "all" from being read as a keyword.
    if not name or '"' in name or any(ord(ch) < 32 for ch in name):
        raise ValueError(f"role name cannot be used in pg_hba.conf: {name!r}")
    return f'"{name}"'


def _conf_string(value: str) -> str:
    """A string value as postgresql.conf reads it (backslash escapes, unlike SQL's strings)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class ThrowawayPostgres(ThrowawayServer):
    """A private PostgreSQL cluster under ``workdir``, on its own loopback port and socket."""

    kind = "PostgreSQL"
    short_name = "postgres"
    pid_file_name = "data/postmaster.pid"
    env_prefixes = ("PG",)
    superuser: str
    socket_dir: Path

    def __init__(self, workdir: Path, *, tls: TlsFiles | None = None, port: int | None = None) -> None:
        # The base dir is also the directory handed to the postgres OS user.
        super().__init__(workdir, tls=tls, port=port)
        self.superuser = "postgres"
        self.socket_dir, self._own_socket_dir = unix_socket_dir(
            self.base_dir, f".s.PGSQL.{self.port}", "rp-pg-"
        )
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
        return self._run_tool(cmd)

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
            "listen_addresses": _conf_string(self.host),
            "port": str(self.port),
            "unix_socket_directories": _conf_string(str(self.socket_dir)),
            # Durability buys nothing for a throwaway cluster and costs start/commit time.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "password_encryption": "'scram-sha-256'",
            "logging_collector": "off",
        }
        if self.tls is not None:
            tls = copy_tls_files(self.tls, self.data_dir, owner)
            settings["ssl"] = "on"
            settings["ssl_cert_file"] = _conf_string(str(tls.cert_file))
            settings["ssl_key_file"] = _conf_string(str(tls.key_file))
        # Appending keeps the file's owner (postgres); later lines override initdb's.
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# added by proxy.local.postgres\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._write_hba()

    def _write_hba(self) -> None:
        lines = [
            "# written by proxy.local.postgres",
            "local all all trust",
            *self._hba_user_lines,
            # Plain "host" rather than "hostssl" so tests can connect with and without TLS.
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
        ]
        # Rewritten in place, which keeps the owner and mode initdb gave the file.
        (self.data_dir / "pg_hba.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")

    @staticmethod
    def _sql_literal(value: str) -> str:
        return sql.literal(value)

    # -- lifecycle ---------------------------------------------------------

    def _launch(self) -> None:
        """Create the cluster on first use, then start it and wait until it accepts connections."""
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
        self.pid = read_pidfile(self.pid_file)
        if self.pid is None:
            raise ThrowawayError(f"PostgreSQL started but {self.data_dir}/postmaster.pid is unreadable")

    def stop(self) -> None:
        """Fast shutdown; idempotent, and also cleans up after a half-finished start()."""
        pid = self._server_pid()
        if pid is not None:
            result = self._run_server_tool(
                [self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-s"]
            )
            if result.returncode != 0 or not wait_dead(pid, 5.0):
                logger.warning(
                    "pg_ctl stop failed (%s); killing postmaster %d",
                    result.stderr.strip(),
                    pid,
                )
                # SIGQUIT is an immediate shutdown in which the postmaster takes its
                # children down too; SIGKILL to the whole group is the last resort.
                terminate(pid, signal.SIGQUIT, 5.0, "PostgreSQL postmaster")
        self.pid = None
        if self._own_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- administration ----------------------------------------------------

    def sql(self, query: str, database: str = "postgres") -> str:
        """Run ``query`` with psql as the superuser over the unix socket; return its output."""
        return self._psql(query, database)

    def _psql(self, query: str, database: str, secret: str | None = None) -> str:
        env = self._tool_env()
        # Via the environment, not -d/-h, so no name is ever parsed as a connection string.
        env.update(
            PGHOST=str(self.socket_dir),
            PGPORT=str(self.port),
            PGUSER=self.superuser,
            PGDATABASE=database,
            PGCLIENTENCODING="UTF8",
        )
        # The query goes through stdin so passwords never show up in the process list.
        result = self._run_tool([self._bin("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"], query, env)
        if result.returncode != 0:
            message = result.stderr.strip()
            if secret:
                message = self._mask(message, secret)
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
            f"CREATE ROLE {sql.identifier(name)} LOGIN PASSWORD {sql.literal(password)}{options};"
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
        self.sql(f"CREATE DATABASE {sql.identifier(name)} OWNER {sql.identifier(owner)};")
