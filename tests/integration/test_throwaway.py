"""Checks proxy.local.postgres and proxy.local.secrets_manager against real servers:
PostgreSQL auth and TLS, moto restarts."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioboto3
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from proxy.local.postgres import ThrowawayPostgres, find_postgres_bindir
from proxy.local.process import ThrowawayError
from proxy.local.secrets_manager import LocalSecretsManager, create_secret, put_secret_json
from proxy.local.tls import TlsFiles, make_tls_files

# Quotes and a backslash make sure literals are escaped, not just wrapped.
PASSWORD = "s3cret 'pass' \\word"


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # Orphaned postmasters are reparented; an unreaped zombie is not a running server.
    return status.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _connect(
    pg: ThrowawayPostgres,
    user: str,
    password: str,
    ca_file: Path,
    sslmode: str = "verify-full",
) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(
        host="localhost",
        port=pg.port,
        user=user,
        password=password,
        dbname="postgres",
        sslmode=sslmode,
        sslrootcert=str(ca_file),
        connect_timeout=5,
    )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres(tmp_path_factory.mktemp("pg"), tls=tls_files) as server:
        yield server


def test_find_postgres_bindir() -> None:
    bindir = find_postgres_bindir()
    assert (bindir / "initdb").is_file()
    assert (bindir / "pg_ctl").is_file()


def test_scram_user_over_verified_tls(pg: ThrowawayPostgres, tls_files: TlsFiles) -> None:
    pg.create_user("alice", PASSWORD)
    assert pg.sql("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'alice'") == "t"
    with _connect(pg, "alice", PASSWORD, tls_files.ca_file) as conn:
        row = conn.execute(
            "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row == ("alice", True)

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(pg, "alice", "wrong", tls_files.ca_file)

    # Plain "host" lines: clients that do not use TLS are still accepted.
    with _connect(pg, "alice", PASSWORD, tls_files.ca_file, sslmode="disable") as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (False,)


def test_md5_user(pg: ThrowawayPostgres, tls_files: TlsFiles) -> None:
    pg.create_user("bob", PASSWORD, auth="md5")
    assert pg.sql("SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'bob'") == "t"
    with _connect(pg, "bob", PASSWORD, tls_files.ca_file) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("bob",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(pg, "bob", "wrong", tls_files.ca_file)


def test_cleartext_password_user(pg: ThrowawayPostgres, tls_files: TlsFiles) -> None:
    pg.create_user("carol", PASSWORD, auth="password", createrole=True)
    hba = (pg.data_dir / "pg_hba.conf").read_text().splitlines()
    # Per-user lines must win over the generic scram lines, so they come first.
    assert hba.index('host all "carol" 127.0.0.1/32 password') < hba.index(
        "host all all 127.0.0.1/32 scram-sha-256"
    )
    with _connect(pg, "carol", PASSWORD, tls_files.ca_file) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("carol",)


def test_create_database_and_sql_errors(pg: ThrowawayPostgres) -> None:
    pg.create_user("dave", PASSWORD)
    pg.create_database("dave db", owner="dave")
    assert pg.sql("SELECT current_database()", database="dave db") == "dave db"
    assert pg.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'dave db'") == "dave"
    with pytest.raises(ThrowawayError, match="does not exist"):
        pg.sql("SELECT * FROM no_such_table")


def test_wrong_ca_is_rejected(pg: ThrowawayPostgres, tls_files: TlsFiles, tmp_path: Path) -> None:
    pg.create_user("erin", PASSWORD)
    other = make_tls_files(tmp_path, name="other")
    assert other.ca_file.read_bytes() != tls_files.ca_file.read_bytes()
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _connect(pg, "erin", PASSWORD, other.ca_file)


def test_restart_keeps_data_and_stop_leaves_nothing(tmp_path: Path) -> None:
    pg = ThrowawayPostgres(tmp_path)
    with pg:
        pg.create_user("frank", PASSWORD, auth="md5")
        first_pid = pg.pid
        pg.restart()
        assert pg.is_running()
        assert pg.pid != first_pid
        assert first_pid is not None and not _alive(first_pid)
        with psycopg.connect(
            host=pg.host, port=pg.port, user="frank", password=PASSWORD, dbname="postgres"
        ) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("frank",)
        pid = pg.pid
    assert pid is not None
    assert not _alive(pid)
    assert not pg.is_running()
    assert pg.pid is None
    assert not _port_answers(pg.host, pg.port)
    pg.stop()  # idempotent


def test_exit_stops_when_body_raises(tmp_path: Path) -> None:
    pg = ThrowawayPostgres(tmp_path)
    with pytest.raises(ZeroDivisionError), pg:
        pid = pg.pid
        1 / 0  # noqa: B018
    assert pid is not None and not _alive(pid)


async def test_secrets_survive_a_moto_restart() -> None:
    fail_fast = Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1)
    sm = LocalSecretsManager()
    sm.start()
    try:
        assert sm.environ()["AWS_EC2_METADATA_DISABLED"] == "true"
        session = aioboto3.Session()
        async with session.client("secretsmanager", config=fail_fast, **sm.client_kwargs()) as c:
            first = await create_secret(c, "db/app", {"username": "app", "password": "one"})
            got = await c.get_secret_value(SecretId="db/app", VersionStage="AWSCURRENT")
            assert got["VersionId"] == first
            assert json.loads(got["SecretString"]) == {"username": "app", "password": "one"}

            pending = await put_secret_json(
                c, "db/app", {"username": "app", "password": "two"}, stages=["AWSPENDING"]
            )
            assert pending != first

            sm.stop()
            assert not _port_answers(sm.host, sm.port)
            with pytest.raises(BotoCoreError):
                await c.get_secret_value(SecretId="db/app", VersionStage="AWSCURRENT")

            sm.start()
            got = await c.get_secret_value(SecretId="db/app", VersionStage="AWSCURRENT")
            assert got["VersionId"] == first
            got = await c.get_secret_value(SecretId="db/app", VersionStage="AWSPENDING")
            assert json.loads(got["SecretString"])["password"] == "two"
    finally:
        sm.stop()
    sm.stop()  # idempotent
    assert not _port_answers(sm.host, sm.port)
