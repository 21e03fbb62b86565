"""RDS IAM authentication (``[pool.credentials] source = "rds-iam"``) against the throwaway
PostgreSQL and MariaDB, through rotaproxy run as a real process and through a real Pool.

There is no RDS here, so the database plays its part the only way it can: the test user's
password *is* the token. A token carries its signing time (X-Amz-Date, to the second), so
the test pins botocore's signing clock, in this process and in the proxy's (a
sitecustomize on its PYTHONPATH), and both sides sign the very same token. Everything else
is real: the AWS credential chain (the environment credentials the local Secrets Manager
fixture sets), aiobotocore's signer, TLS with verify-full, the connectors and the pool.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aioboto3
import botocore.auth
import psycopg
import pymysql
import pytest

from protocols.postgres import sql as pg_sql
from proxy.config import Address, AwsConfig, CredentialsConfig, PoolConfig
from proxy.core.errors import BorrowTimeout, UpstreamLoginError
from proxy.core.server import ServerConnection
from proxy.credentials.rds_iam import RDS_IAM_VERSION, RdsIamSource
from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.secrets_manager import LocalSecretsManager
from proxy.local.tls import TlsFiles
from proxy.pool.pool import Pool
from proxy.postgres.server import PgConnector, PgServerConnection
from proxy.rotation.postgres import scram_verifier
from tests.conftest import ProxyLauncher, Secrets

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PINNED_SIGNING_TIME = "ROTAPROXY_TEST_SIGNING_TIME"
# Loaded by the proxy's interpreter at start-up (sitecustomize on its PYTHONPATH): it pins
# the clock botocore signs with, and nothing else.
SITECUSTOMIZE = f'''
import datetime
import os

_pinned = os.environ.get("{PINNED_SIGNING_TIME}")
if _pinned:
    import botocore.auth

    _at = datetime.datetime.fromisoformat(_pinned)
    botocore.auth.get_current_datetime = lambda remove_tzinfo=True: _at
'''


@contextlib.contextmanager
def signing_clock(at: datetime) -> Iterator[None]:
    """Pin botocore's signing clock in this process (as the sitecustomize does in the proxy's)."""
    original = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda remove_tzinfo=True: at
    try:
        yield
    finally:
        botocore.auth.get_current_datetime = original


def now_to_the_second() -> datetime:
    return datetime.now(UTC).replace(microsecond=0, tzinfo=None)


async def sign_token(sm: LocalSecretsManager, host: str, port: int, user: str, at: datetime) -> str:
    """A token as any AWS SDK makes it (aiobotocore's own signer, not rotaproxy's code)."""
    environ = sm.environ()
    with signing_clock(at):
        async with aioboto3.Session().client(
            "rds",
            region_name=sm.region,
            aws_access_key_id=environ["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=environ["AWS_SECRET_ACCESS_KEY"],
        ) as rds:
            token: str = await rds.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user)
    assert token.startswith(f"{host}:{port}/?Action=connect&DBUser={user}&")
    return token


def unique(name: str) -> str:
    return f"{name}_{secrets.token_hex(3)}"


@pytest.fixture
def pinned_proxy_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> datetime:
    """The signing time every proxy started in this test signs with."""
    at = now_to_the_second()
    shim = tmp_path / "pinned-signing-clock"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(PINNED_SIGNING_TIME, at.isoformat())
    return at


def iam_pool(name: str, user: str, upstream: str, *, tls: TlsFiles, engine: str, database: str) -> str:
    return (
        f'[[pool]]\nname = "{name}"\nengine = "{engine}"\nlisten = "127.0.0.1:{{port}}"\n'
        f'upstream = "{upstream}"\ndatabase = "{database}"\n'
        f'tls = "verify-full"\ntls_ca_file = "{tls.ca_file}"\n'
        f'[pool.credentials]\nsource = "rds-iam"\nusername = "{user}"\n'
    )


# --- PostgreSQL through rotaproxy: SCRAM, MD5 and cleartext all take the token -------------


async def test_postgres_logs_in_with_an_rds_iam_token_over_tls(
    pg: ThrowawayPostgres,
    tls: TlsFiles,
    sm: LocalSecretsManager,
    launcher: ProxyLauncher,
    known_secrets: Secrets,
    pinned_proxy_clock: datetime,
) -> None:
    upstream = f"localhost:{pg.port}"
    users = {"scram-sha-256": unique("iam_scram"), "md5": unique("iam_md5"), "password": unique("iam_clear")}
    tokens: dict[str, str] = {}
    for auth, user in users.items():
        token = tokens[user] = await sign_token(sm, "localhost", pg.port, user, pinned_proxy_clock)
        known_secrets.values.add(token)  # the suite-wide log scan looks for it too
        pg.create_user(user, token, auth=auth)  # type: ignore[arg-type]
    running = launcher.start(
        "\n".join(
            iam_pool(user, user, upstream, tls=tls, engine="postgres", database="postgres")
            for user in users.values()
        )
    )
    for auth, user in users.items():
        with psycopg.connect(
            f"host=127.0.0.1 port={running.port} dbname={user} user=anyone connect_timeout=10",
            autocommit=True,
        ) as conn:
            row = conn.execute(
                "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
        assert row == (user, True), auth
    logs = running.logs()
    assert "RDS IAM tokens for user" in logs  # the source was used, and named...
    assert not [user for user, token in tokens.items() if token in logs]  # ...never a token
    assert "X-Amz-Signature" not in logs


def test_rds_iam_without_tls_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "iam.toml"
    config.write_text(
        '[[pool]]\nname = "orders"\nupstream = "orders.cluster-x.us-east-1.rds.amazonaws.com:5432"\n'
        'tls = "disable"\n[pool.credentials]\nsource = "rds-iam"\nusername = "app"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 2
    assert f"{config}: pool[0].credentials.source: " in result.stderr
    assert "needs TLS" in result.stderr


# --- MariaDB through rotaproxy ---------------------------------------------------------------


async def test_mariadb_logs_in_with_an_rds_iam_token_over_tls(
    mariadb: ThrowawayMariaDB,
    tls: TlsFiles,
    sm: LocalSecretsManager,
    launcher: ProxyLauncher,
    known_secrets: Secrets,
    pinned_proxy_clock: datetime,
) -> None:
    # RDS for MySQL asks for mysql_clear_password (AWSAuthenticationPlugin); MariaDB here
    # asks for mysql_native_password, which takes the token as it takes any password.
    user = unique("iam_my")
    token = await sign_token(sm, "localhost", mariadb.port, user, pinned_proxy_clock)
    known_secrets.values.add(token)
    mariadb.create_user(user, token)
    mariadb.create_database(user, owner=user)
    running = launcher.start(
        iam_pool("iamdb", user, f"localhost:{mariadb.port}", tls=tls, engine="mysql", database=user)
    )
    conn = pymysql.connect(
        host="127.0.0.1", port=running.port, user="anyone", database="iamdb", connect_timeout=10
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT CURRENT_USER()")
            current = cursor.fetchone()
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            cipher = cursor.fetchone()
    finally:
        conn.close()
    assert current == (f"{user}@%",)
    assert cipher is not None and cipher[1], "the upstream connection is not encrypted"
    assert token not in running.logs()


class PamMariaDB(ThrowawayMariaDB):
    """MariaDB with PAM asking for mysql_clear_password, as RDS for MySQL's IAM plugin does.

    (``_server_command`` is the throwaway's own; the two options are read-only at run time.)
    """

    def _server_command(self) -> list[str]:
        return [*super()._server_command(), "--plugin-load-add=auth_pam_v1", "--pam-use-cleartext-plugin=ON"]


@pytest.fixture
def pam_service(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A PAM service whose auth step accepts exactly the password in ``expected``; each
    check it makes is appended to ``checks``."""
    assert os.geteuid() == 0, "this test writes a PAM service under /etc/pam.d: run the suite as root"
    expected, checks, script = tmp_path / "expected", tmp_path / "checks", tmp_path / "check-token"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "sent = sys.stdin.buffer.read().rstrip(b'\\0\\n')\n"
        f"ok = sent == open({str(expected)!r}, 'rb').read()\n"
        f"open({str(checks)!r}, 'a').write('accepted\\n' if ok else 'refused\\n')\n"
        "sys.exit(0 if ok else 1)\n"
    )
    script.chmod(0o700)
    service = unique("rotaproxy_test")
    pam_file = Path("/etc/pam.d") / service
    pam_file.write_text(
        f"auth required pam_exec.so expose_authtok quiet {script}\naccount required pam_permit.so\n"
    )
    try:
        yield service, expected, checks
    finally:
        pam_file.unlink()


async def test_mysql_clear_password_carries_the_token_over_tls(
    workdir: Path,
    tls: TlsFiles,
    sm: LocalSecretsManager,
    launcher: ProxyLauncher,
    known_secrets: Secrets,
    pinned_proxy_clock: datetime,
    pam_service: tuple[str, Path, Path],
) -> None:
    service, expected, checks = pam_service
    with PamMariaDB(workdir, tls=tls) as server:
        user = unique("iam_pam")
        token = await sign_token(sm, "localhost", server.port, user, pinned_proxy_clock)
        known_secrets.values.add(token)
        expected.write_text(token)
        server.sql(f"CREATE USER '{user}'@'%' IDENTIFIED VIA pam USING '{service}'")
        server.create_database(user, owner=user)
        running = launcher.start(
            iam_pool("pamdb", user, f"localhost:{server.port}", tls=tls, engine="mysql", database=user)
        )
        conn = pymysql.connect(
            host="127.0.0.1", port=running.port, user="anyone", database="pamdb", connect_timeout=10
        )
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT CURRENT_USER()")
                assert cursor.fetchone() == (f"{user}@%",)
        finally:
            conn.close()
        running.stop()
    # The server asked for mysql_clear_password (the only way PAM gets a password here) and
    # the token it received was the one signed for this host, port and user.
    checked = checks.read_text().splitlines()
    assert checked and set(checked) == {"accepted"}, checked
    assert token not in running.logs()


# --- the pool: a new token is no rotation ----------------------------------------------------


@dataclass
class IamPool:
    pool: Pool
    source: RdsIamSource
    user: str
    port: int


def set_password(pg: ThrowawayPostgres, user: str, token: str) -> None:
    """As the rotation code does: a SCRAM verifier in the SQL, never the token itself."""
    pg.sql(f'ALTER ROLE "{user}" PASSWORD {pg_sql.literal(scram_verifier(token))}')


@pytest.fixture
async def iam_pool_in_process(
    pg: ThrowawayPostgres, tls: TlsFiles, sm: LocalSecretsManager, known_secrets: Secrets, request: Any
) -> AsyncIterator[IamPool]:
    user = unique("iam_pool")
    first = await sign_token(sm, "localhost", pg.port, user, now_to_the_second())
    known_secrets.values.add(first)
    pg.create_user(user, first)
    settings: dict[str, float] = getattr(request, "param", {})
    config = PoolConfig(
        name="iam",
        engine="postgres",
        listen=Address("127.0.0.1", 1),
        upstream=Address("localhost", pg.port),
        database="postgres",
        tls="verify-full",
        tls_ca_file=tls.ca_file,
        max_server_connections=3,
        borrow_timeout=3.0,
        credentials=CredentialsConfig(source="rds-iam", username=user),
    )
    source = RdsIamSource(config.credentials, AwsConfig(region=sm.region), **settings)
    pool = Pool(config, source, PgConnector(config))
    await pool.start()
    try:
        yield IamPool(pool, source, user, pg.port)
    finally:
        await pool.close()
        await source.close()


def backend_pid(connection: object) -> int:
    assert isinstance(connection, PgServerConnection)
    return connection.backend_pid


async def borrow_before_and_after_a_new_token(
    iam: IamPool, pg: ThrowawayPostgres, sm: LocalSecretsManager, known_secrets: Secrets, later: timedelta
) -> tuple[ServerConnection, ServerConnection]:
    """Borrow with a token signed now; then, ``later``, with the database taking only a newer one."""
    t1 = now_to_the_second()
    token1 = await sign_token(sm, "localhost", iam.port, iam.user, t1)
    set_password(pg, iam.user, token1)
    with signing_clock(t1):
        first = await iam.pool.borrow()
    t2 = t1 + later
    token2 = await sign_token(sm, "localhost", iam.port, iam.user, t2)
    known_secrets.values.update({token1, token2})
    set_password(pg, iam.user, token2)
    with signing_clock(t2):
        second = await iam.pool.borrow()  # the first is still borrowed: a new login
    return first, second


@pytest.mark.parametrize("iam_pool_in_process", [{"token_reuse": 0.0}], indirect=True)
async def test_a_new_token_is_no_rotation_and_drains_nothing(
    iam_pool_in_process: IamPool, pg: ThrowawayPostgres, sm: LocalSecretsManager, known_secrets: Secrets
) -> None:
    iam = iam_pool_in_process
    # Ten minutes on, the database takes only a newer token (RDS: the old one expired).
    first, second = await borrow_before_and_after_a_new_token(
        iam, pg, sm, known_secrets, timedelta(minutes=10)
    )
    assert (iam.source.tokens_signed, iam.pool.auth_failures_total) == (2, 0)
    assert (iam.pool.generation, iam.pool.rotations_total) == (1, 0)
    assert first.generation == second.generation == 1
    assert iam.pool.generation_credentials is not None
    assert iam.pool.generation_credentials.version_id == RDS_IAM_VERSION
    await first.check_alive()  # logged in with the old token, and still serving
    assert backend_pid(first) != backend_pid(second)
    iam.pool.release(first, reusable=True)
    iam.pool.release(second, reusable=True)
    assert iam.pool.stats()["idle"] == 2


@pytest.mark.parametrize("iam_pool_in_process", [{"resign_after_refusal": 0.0}], indirect=True)
async def test_a_refused_token_that_served_a_while_is_signed_again(
    iam_pool_in_process: IamPool, pg: ThrowawayPostgres, sm: LocalSecretsManager, known_secrets: Secrets
) -> None:
    iam = iam_pool_in_process
    # The AWS credentials behind the cached token went away early; only a new one logs in.
    first, second = await borrow_before_and_after_a_new_token(
        iam, pg, sm, known_secrets, timedelta(minutes=3)
    )
    assert (iam.pool.auth_failures_total, iam.source.tokens_signed) == (1, 2)
    assert (iam.pool.generation, iam.pool.rotations_total, second.generation) == (1, 0, 1)
    await first.check_alive()
    iam.pool.release(first, reusable=True)
    iam.pool.release(second, reusable=True)


async def test_a_fresh_token_that_is_refused_is_reported_not_retried(
    iam_pool_in_process: IamPool, pg: ThrowawayPostgres, sm: LocalSecretsManager, known_secrets: Secrets
) -> None:
    iam = iam_pool_in_process
    # The role's password is some other token: as when the user lacks the rds_iam grant.
    other = await sign_token(sm, "localhost", iam.port, iam.user, now_to_the_second() - timedelta(hours=1))
    known_secrets.values.add(other)
    set_password(pg, iam.user, other)
    # The pool keeps trying until borrow_timeout; the last attempt may be cut by the deadline.
    with pytest.raises((UpstreamLoginError, BorrowTimeout)) as refused:
        await iam.pool.borrow()
    assert not isinstance(refused.value, UpstreamLoginError) or refused.value.is_auth_failure
    assert iam.pool.auth_failures_total >= 1
    assert iam.source.tokens_signed == 1  # every attempt with the one token: none signed again
    assert other not in str(refused.value)
