"""Checks proxy.local.mariadb.ThrowawayMariaDB against the real server: auth, TLS, big packets, lifecycle."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from proxy.local.mariadb import ThrowawayMariaDB, find_mariadb_binaries
from proxy.local.process import ThrowawayError
from proxy.local.tls import TlsFiles, make_tls_files

# Quotes and a backslash make sure literals are escaped, not just wrapped.
PASSWORD = "s3cret 'pass' \\word"
ACCESS_DENIED = 1045
DB_ACCESS_DENIED = 1044


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _processes_using(path: Path) -> list[int]:
    """Live pids whose command line mentions ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _connect(
    server: ThrowawayMariaDB,
    user: str,
    password: str,
    *,
    ca_file: Path | None = None,
    host: str = "localhost",
    **kwargs: Any,
) -> pymysql.connections.Connection[Any]:
    # With a CA: verify-full (chain and host name). Without: no TLS at all, since PyMySQL
    # would otherwise try TLS unverified ("preferred").
    tls: dict[str, Any] = (
        {"ssl_ca": str(ca_file), "ssl_verify_identity": True}
        if ca_file is not None
        else {"ssl_disabled": True}
    )
    return pymysql.connect(
        host=host,
        port=server.port,
        user=user,
        password=password,
        connect_timeout=5,
        **tls,
        **kwargs,
    )


def _query(conn: pymysql.connections.Connection[Any], query: str, *args: object) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(query, args or None)
        return cursor.fetchall()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[ThrowawayMariaDB]:
    with ThrowawayMariaDB(tmp_path_factory.mktemp("mariadb"), tls=tls_files) as server:
        yield server


def test_find_mariadb_binaries() -> None:
    server, install_db = find_mariadb_binaries()
    assert server.name == "mariadbd" and os.access(server, os.X_OK)
    assert install_db.name == "mariadb-install-db" and os.access(install_db, os.X_OK)


def test_root_needs_its_password_and_no_anonymous_users_exist(mariadb: ThrowawayMariaDB) -> None:
    accounts = mariadb.sql("SELECT user, host FROM mysql.user WHERE user IN ('', 'root') ORDER BY host")
    assert accounts.splitlines() == ["root\t127.0.0.1", "root\t::1", "root\tlocalhost"]
    assert (
        mariadb.sql("SELECT COUNT(*) FROM mysql.user WHERE user = 'root' AND authentication_string = ''")
        == "0"
    )

    with _connect(mariadb, "root", mariadb.root_password, host="127.0.0.1") as conn:
        assert _query(conn, "SELECT CURRENT_USER()") == (("root@127.0.0.1",),)
    for wrong in ("", "wrong"):
        with pytest.raises(pymysql.err.OperationalError) as denied:
            _connect(mariadb, "root", wrong, host="127.0.0.1")
        assert denied.value.args[0] == ACCESS_DENIED


def test_native_password_user_over_verified_tls(mariadb: ThrowawayMariaDB, tls_files: TlsFiles) -> None:
    mariadb.create_user("app", PASSWORD)
    assert mariadb.sql("SELECT plugin FROM mysql.user WHERE user = 'app'") == "mysql_native_password"

    with _connect(mariadb, "app", PASSWORD, ca_file=tls_files.ca_file) as conn:
        assert _query(conn, "SELECT CURRENT_USER()") == (("app@%",),)
        ((_, cipher),) = _query(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        assert cipher

    with pytest.raises(pymysql.err.OperationalError) as denied:
        _connect(mariadb, "app", "wrong", ca_file=tls_files.ca_file)
    assert denied.value.args[0] == ACCESS_DENIED

    # TLS is offered, not required: plain clients still get in.
    with _connect(mariadb, "app", PASSWORD) as conn:
        assert _query(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'") == (("Ssl_cipher", ""),)


def test_wrong_ca_is_rejected(mariadb: ThrowawayMariaDB, tls_files: TlsFiles, tmp_path: Path) -> None:
    mariadb.create_user("erin", PASSWORD)
    other = make_tls_files(tmp_path, name="other")
    assert other.ca_file.read_bytes() != tls_files.ca_file.read_bytes()
    with pytest.raises(pymysql.err.OperationalError, match="certificate verify failed"):
        _connect(mariadb, "erin", PASSWORD, ca_file=other.ca_file)


def test_packets_over_16_mib_pass(mariadb: ThrowawayMariaDB, tls_files: TlsFiles) -> None:
    setting = mariadb.sql("SHOW VARIABLES LIKE 'max_allowed_packet'")
    assert int(setting.split("\t")[1]) >= 256 * 1024 * 1024

    mariadb.create_user("bulk", PASSWORD)
    payload = "x" * (17 * 1024 * 1024)
    with _connect(
        mariadb, "bulk", PASSWORD, ca_file=tls_files.ca_file, max_allowed_packet=64 * 1024 * 1024
    ) as conn:
        assert _query(conn, "SELECT LENGTH(%s)", payload) == ((len(payload),),)


def test_ed25519_user(mariadb: ThrowawayMariaDB) -> None:
    # The second user proves installing the plugin again is harmless.
    mariadb.create_user("edna", PASSWORD, plugin="ed25519")
    mariadb.create_user("eddy", "other", plugin="ed25519", host="127.0.0.1")
    plugins = mariadb.sql("SELECT user, host, plugin FROM mysql.user WHERE user LIKE 'ed%' ORDER BY user")
    assert plugins.splitlines() == ["eddy\t127.0.0.1\ted25519", "edna\t%\ted25519"]

    # PyMySQL would need PyNaCl for ed25519; the mariadb client has the plugin built in.
    def login(user: str, password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *("mariadb", "--no-defaults", "--protocol=tcp", "-h", mariadb.host, "-P", str(mariadb.port)),
                *("-u", user, "--batch", "--skip-column-names", "-e", "SELECT CURRENT_USER()"),
            ],
            env={**os.environ, "MYSQL_PWD": password},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    ok = login("edna", PASSWORD)
    assert (ok.returncode, ok.stdout.strip()) == (0, "edna@%"), ok.stderr
    denied = login("edna", "wrong")
    assert denied.returncode != 0
    assert "ERROR 1045" in denied.stderr


def test_create_database_grants_that_database_only(mariadb: ThrowawayMariaDB) -> None:
    mariadb.create_user("owner", PASSWORD)
    mariadb.create_database("app_db", owner="owner")
    # '_' is a wildcard in database grants: this one must not be covered by app_db's.
    mariadb.sql("CREATE DATABASE appXdb")
    mariadb.grant("PROCESS", "*.*", "owner")

    assert mariadb.sql("SELECT DATABASE()", database="app_db") == "app_db"
    rows = mariadb.sql(
        "CREATE TABLE t (id INT PRIMARY KEY, note VARCHAR(20));"
        "INSERT INTO t VALUES (1, 'one'), (2, 'two');"
        "SELECT id, note FROM t ORDER BY id",
        database="app_db",
    )
    assert rows == "1\tone\n2\ttwo"

    with _connect(mariadb, "owner", PASSWORD, database="app_db") as conn:
        assert _query(conn, "SELECT note FROM t WHERE id = 2") == (("two",),)
        grants = [row[0] for row in _query(conn, "SHOW GRANTS")]
        assert any(grant.startswith("GRANT PROCESS ON *.*") for grant in grants), grants
        with pytest.raises(pymysql.err.OperationalError) as denied:
            _query(conn, "USE appXdb")
        assert denied.value.args[0] == DB_ACCESS_DENIED


def test_sql_errors_hide_passwords(mariadb: ThrowawayMariaDB) -> None:
    # The client echoes a failing statement: here it holds the root password.
    with pytest.raises(ThrowawayError, match="ERROR 1146") as failed:
        mariadb.sql(f"SELECT '{mariadb.root_password}' FROM no_such_table", database="mysql")
    assert mariadb.root_password not in str(failed.value)
    assert "***" in str(failed.value)

    with pytest.raises(ThrowawayError, match="ERROR 1064"):
        mariadb.sql("SELEC 1")

    # A second CREATE USER fails with the user's password in the echoed statement.
    mariadb.create_user("dup", PASSWORD)
    with pytest.raises(ThrowawayError, match="ERROR 1396") as failed:
        mariadb.create_user("dup", PASSWORD)
    message = str(failed.value)
    assert "PASSWORD('***')" in message
    assert "s3cret" not in message


def test_restart_keeps_users_and_stop_leaves_nothing(tmp_path: Path) -> None:
    server = ThrowawayMariaDB(tmp_path)
    with server:
        server.create_user("frank", PASSWORD)
        first_pid = server.pid
        server.restart()
        assert server.is_running()
        assert server.pid != first_pid
        assert first_pid is not None and not _alive(first_pid)
        with _connect(server, "frank", PASSWORD, host=server.host) as conn:
            assert _query(conn, "SELECT CURRENT_USER()") == (("frank@%",),)
        pid = server.pid
    assert pid is not None
    assert not _alive(pid)
    assert not server.is_running()
    assert server.pid is None
    assert not _port_answers(server.host, server.port)
    assert not server.socket_path.exists()
    assert _processes_using(server.data_dir) == []
    server.stop()  # idempotent


def test_exit_stops_when_body_raises(tmp_path: Path) -> None:
    server = ThrowawayMariaDB(tmp_path)
    with pytest.raises(ZeroDivisionError), server:
        pid = server.pid
        1 / 0  # noqa: B018
    assert pid is not None and not _alive(pid)


def test_failed_start_leaves_no_process(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = ThrowawayMariaDB(tmp_path, port=squatter.getsockname()[1])
        with pytest.raises(ThrowawayError, match="mariadbd exited"):
            server.start()
    assert server.pid is None
    assert _processes_using(server.data_dir) == []
    assert "Address already in use" in server.log_file.read_text()
