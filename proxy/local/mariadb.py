"""A throwaway MariaDB server: mariadb-install-db into a private directory, its own loopback
port and unix socket, TLS, root behind a password, and users for native and ed25519 logins."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Literal

from protocols.mysql import sql
from proxy.local.process import (
    ThrowawayError,
    ThrowawayServer,
    terminate,
    unix_socket_dir,
)
from proxy.local.tls import TlsFiles, copy_tls_files

logger = logging.getLogger(__name__)

_MARIADB_START_TIMEOUT = 30.0
# SIGTERM makes mariadbd flush InnoDB and exit; past this, SIGKILL.
_MARIADB_STOP_GRACE = 20.0

# Tried in addition to $PATH: as a non-root user /usr/sbin is often not on it.
_MARIADB_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/mysql/bin")
# The hosts root can log in from: the unix socket, and TCP over IPv4 and IPv6 loopback.
_MARIADB_ROOT_HOSTS = ("localhost", "127.0.0.1", "::1")
# sql.literal and sql.account quote for backslash escapes, their default: these servers run
# without NO_BACKSLASH_ESCAPES in sql_mode.


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


def _grant_database_pattern(name: str) -> str:
    """The database part of ``GRANT ... ON db.*`` that matches ``name`` alone."""
    # In GRANT ... ON db.*, '_' and '%' in the database name are wildcards: escape them so
    # "app_db" grants app_db and not also "appXdb".
    return sql.identifier(name.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%"))


class ThrowawayMariaDB(ThrowawayServer):
    """A private MariaDB server under ``workdir``, on its own loopback port and socket.

    Root logs in with ``root_password`` over the socket and over TCP from 127.0.0.1/::1.
    """

    kind = "MariaDB"
    short_name = "mariadb"
    pid_file_name = "mariadbd.pid"
    env_prefixes = ("MYSQL", "MARIADB", "LIBMYSQL")
    socket_path: Path
    root_password: str

    def __init__(self, workdir: Path, *, tls: TlsFiles | None = None, port: int | None = None) -> None:
        super().__init__(workdir, tls=tls, port=port)
        # URL-safe characters: nothing to escape in SQL or in the client option file.
        self.root_password = secrets.token_urlsafe(24)
        # Written once mariadb-install-db has succeeded: a data dir without it is half made.
        self._installed_marker = self.base_dir / "installed"
        self._client_options = self.base_dir / "client.cnf"
        self._socket_dir, self._own_socket_dir = unix_socket_dir(self.base_dir, "mysqld.sock", "rp-my-")
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

    @staticmethod
    def _sql_literal(value: str) -> str:
        return sql.literal(value)

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
        keep = ", ".join(sql.literal(host) for host in _MARIADB_ROOT_HOSTS)
        lines = [
            "FLUSH PRIVILEGES;",
            # Anonymous users would shadow real ones ('' matches any name from localhost);
            # root@<hostname> is unusable with --skip-name-resolve and only adds warnings.
            "DELETE FROM mysql.global_priv WHERE User = '';",
            f"DELETE FROM mysql.global_priv WHERE User = 'root' AND Host NOT IN ({keep});",
            f"DELETE FROM mysql.proxies_priv WHERE Host NOT IN ({keep});",
            "FLUSH PRIVILEGES;",
        ]
        password = sql.literal(self.root_password)
        for host in _MARIADB_ROOT_HOSTS:
            account = sql.account("root", host)
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
            result = self._run_tool(
                [
                    str(install_db),
                    # Never /etc/mysql/my.cnf or ~/.my.cnf: they belong to the system server.
                    "--no-defaults",
                    f"--datadir={self.data_dir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    f"--extra-file={setup_file}",
                    *self._user_options(),
                ]
            )
        finally:
            setup_file.unlink(missing_ok=True)
        if result.returncode != 0:
            output = f"{result.stderr.strip()}\n{result.stdout.strip()}".strip()
            output = self._mask(output, self.root_password)
            raise ThrowawayError(f"mariadb-install-db failed: {output}")
        if self.tls is not None:
            copy_tls_files(self.tls, self.data_dir, owner=None)
        self._installed_marker.touch()

    def _server_command(self) -> list[str]:
        server, _ = self._server_binaries()
        cmd = [
            str(server),
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--port={self.port}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_file}",
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
                    message = self._mask(result.stderr.strip(), self.root_password)
                    raise ThrowawayError(f"mariadbd is up but root cannot log in: {message}")
            if time.monotonic() >= deadline:
                raise ThrowawayError(
                    f"mariadbd did not come up on port {self.port} within "
                    f"{_MARIADB_START_TIMEOUT:.0f}s:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    # -- lifecycle ---------------------------------------------------------

    def _launch(self) -> None:
        """Create the data dir on first use, then start mariadbd and wait until it serves root."""
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
                env=self._tool_env(),
                cwd="/",
                start_new_session=True,
            )
        self.pid = self._process.pid
        self._wait_ready(self._process)

    def stop(self) -> None:
        """Clean shutdown (SIGTERM), SIGKILL as the fallback; idempotent, also after a failed start()."""
        process = self._process
        if process is not None:
            # Our own unreaped child: its pid cannot have been recycled.
            if process.poll() is None:
                terminate(process.pid, signal.SIGTERM, _MARIADB_STOP_GRACE, "mariadbd")
            process.wait()
        else:
            pid = self._server_pid()
            if pid is not None:
                terminate(pid, signal.SIGTERM, _MARIADB_STOP_GRACE, "mariadbd")
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
            message = self._mask(result.stderr.strip(), self.root_password, secret or "")
            raise ThrowawayError(f"mariadb client failed: {message}")
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
        return self._run_tool(cmd, query)

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
            f"CREATE USER {sql.account(name, host)} "
            f"IDENTIFIED VIA {plugin} USING PASSWORD({sql.literal(password)});"
        )
        self._mariadb("\n".join(statements), None, secret=password)
        logger.debug("created MariaDB user %s@%s (plugin %s)", name, host, plugin)

    def create_database(self, name: str, owner: str) -> None:
        """Create database ``name`` and grant ``owner@'%'`` everything on it."""
        self.sql(
            f"CREATE DATABASE {sql.identifier(name)};\n"
            f"GRANT ALL PRIVILEGES ON {_grant_database_pattern(name)}.* TO {sql.account(owner, '%')};"
        )

    def grant(self, sql_privileges: str, on: str, to: str, *, host: str = "%") -> None:
        """``GRANT sql_privileges ON on TO to@host``; the first two are SQL, e.g. ("PROCESS", "*.*")."""
        self.sql(f"GRANT {sql_privileges} ON {on} TO {sql.account(to, host)};")
