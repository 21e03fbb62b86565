"""Prometheus metrics of a real rotaproxy: they move as clients connect, borrow, query and as the
secret rotates; several proxies in one process keep their own registries."""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request
from typing import Any

import psycopg
import pymysql
import pytest
from prometheus_client import generate_latest

from proxy.app import Proxy
from proxy.config import parse_config
from proxy.core.counters import BORROW_WAIT_BUCKETS, Histogram
from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import free_port
from proxy.rotation.settings import RotationSettings
from proxy.rotation.steps import Rotator
from tests.conftest import (
    MySqlUsers,
    ProxyLauncher,
    Secrets,
    Users,
    metric,
    new_secret,
    pool_toml,
    rds_mysql_secret,
    rds_secret,
    scrape,
    wait_for,
)


def post(admin_port: int, path: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


async def own_user(pg: ThrowawayPostgres, sm_client: Any, known: Secrets) -> tuple[str, str]:
    """A user of this test's own (its password will change) and a secret for it."""
    user, password = f"met_{secrets.token_hex(3)}", known.new_password()
    pg.create_user(user, password)
    pg.sql(f"GRANT CONNECT ON DATABASE appdb TO {user}")
    return user, await new_secret(sm_client, rds_secret(pg, user, password, host="127.0.0.1"))


async def test_metrics_follow_clients_queries_and_a_rotation(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any, known_secrets: Secrets
) -> None:
    user, secret_id = await own_user(pg, sm_client, known_secrets)
    admin_port = free_port()
    running = launcher.start(
        pool_toml("met1", secret_id, poll_interval="1s", database="appdb", tls="disable"),
        admin_port=admin_port,
    )
    pool = {"pool": "met1", "engine": "postgres"}
    text, before = scrape(admin_port)
    assert metric(before, "rotaproxy_client_connections", **pool) == 0
    assert metric(before, "rotaproxy_server_connections_opened_total", **pool) == 0
    assert metric(before, "rotaproxy_server_connections_max", **pool) == 20
    assert "process_cpu_seconds_total" in text

    with psycopg.connect(f"host=127.0.0.1 port={running.port} dbname=met1 user=x", autocommit=True) as conn:
        _, connected = scrape(admin_port)
        assert metric(connected, "rotaproxy_client_connections", **pool) == 1
        assert metric(connected, "rotaproxy_client_connections_accepted_total", **pool) == 1
        assert metric(connected, "rotaproxy_server_connections", **pool, state="busy", generation="1") == 1
        assert metric(connected, "rotaproxy_server_connections_borrowed", **pool) == 1
        assert metric(connected, "rotaproxy_server_connections_opened_total", **pool) == 1
        assert metric(connected, "rotaproxy_borrow_wait_seconds_count", **pool) == 1
        assert metric(connected, "rotaproxy_borrow_wait_seconds_bucket", **pool, le="+Inf") == 1
        assert metric(connected, "rotaproxy_borrow_wait_seconds_sum", **pool) > 0  # it opened one

        for _ in range(3):
            conn.execute("SELECT 1")
        conn.execute("BEGIN")
        conn.execute("SELECT 2")
        _, in_transaction = scrape(admin_port)
        assert metric(in_transaction, "rotaproxy_server_connections_in_transaction", **pool) == 1
        conn.execute("COMMIT")
        _, after = scrape(admin_port)
        assert metric(after, "rotaproxy_server_connections_in_transaction", **pool) == 0
        queries = metric(after, "rotaproxy_queries_total", **pool)
        transactions = metric(after, "rotaproxy_transactions_total", **pool)
        assert queries - metric(connected, "rotaproxy_queries_total", **pool) == 6
        # Three autocommit statements and one BEGIN ... COMMIT.
        assert transactions - metric(connected, "rotaproxy_transactions_total", **pool) == 4
        for direction in ("in", "out"):
            moved = metric(after, "rotaproxy_client_bytes_total", **pool, direction=direction)
            assert moved > metric(connected, "rotaproxy_client_bytes_total", **pool, direction=direction)

    def released() -> bool:
        samples = scrape(admin_port)[1]
        return (
            metric(samples, "rotaproxy_client_connections", **pool) == 0
            and metric(samples, "rotaproxy_server_connections", **pool, state="idle", generation="1") == 1
        )

    wait_for(released, 5, "the client gone and its connection idle")

    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(f"host=127.0.0.1 port={running.port} dbname=nosuchdb user=x")
    listener = {"listener": f"127.0.0.1:{running.port}", "engine": "postgres"}
    _, rejected = scrape(admin_port)
    assert (
        metric(
            rejected, "rotaproxy_listener_connections_rejected_total", **listener, reason="unknown_database"
        )
        == 1
    )
    accepted = "rotaproxy_listener_connections_accepted_total"
    assert metric(rejected, accepted, **listener) - metric(before, accepted, **listener) == 2
    refreshes = metric(rejected, "rotaproxy_credential_refreshes_total", **pool)
    assert refreshes >= 1
    assert 0 <= metric(rejected, "rotaproxy_credential_seconds_since_refresh", **pool) < 30

    # Rotate the password the way Secrets Manager does (single user, four steps).
    rotator = Rotator(sm_client, RotationSettings(tls="disable", upstream_host="127.0.0.1"))
    new_version = await rotator.rotate(secret_id)
    value = await sm_client.get_secret_value(SecretId=secret_id, VersionId=new_version)
    known_secrets.values.add(json.loads(value["SecretString"])["password"])

    def rotated() -> bool:
        samples = scrape(admin_port)[1]
        return metric(samples, "rotaproxy_rotations_total", **pool) == 1

    await asyncio.to_thread(wait_for, rotated, 15, "the pool moved to the new version")
    text, done = scrape(admin_port)
    assert metric(done, "rotaproxy_generation", **pool) == 2
    assert metric(done, "rotaproxy_server_connections", **pool, state="idle", generation="2") == 1
    assert metric(done, "rotaproxy_server_connections", **pool, state="idle", generation="1") == 0
    assert metric(done, "rotaproxy_credential_refreshes_total", **pool) > refreshes
    assert metric(done, "rotaproxy_credential_refresh_errors_total", **pool) == 0
    # The old idle connection closed at the switch: the drain took no time.
    assert metric(done, "rotaproxy_rotation_duration_seconds_count", **pool) == 1
    assert metric(done, "rotaproxy_rotation_duration_seconds_bucket", **pool, le="0.1") == 1
    assert metric(done, "rotaproxy_rotation_failures_total", **pool) == 0
    with psycopg.connect(f"host=127.0.0.1 port={running.port} dbname=met1 user=x") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)
    assert not any(value in text for value in known_secrets.values)


async def test_refused_logins_count_as_auth_failures_and_the_client_as_rejected(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any, known_secrets: Secrets
) -> None:
    user, secret_id = await own_user(pg, sm_client, known_secrets)
    admin_port = free_port()
    running = launcher.start(
        pool_toml("met2", secret_id, database="appdb", tls="disable", borrow_timeout="2s"),
        admin_port=admin_port,
    )
    dsn = f"host=127.0.0.1 port={running.port} dbname=met2 user=x"
    with psycopg.connect(dsn) as conn:  # credentials loaded, one connection opened
        assert conn.execute("SELECT current_user").fetchone() == (user,)
    # The database password changes behind the secret's back; the idle connection goes.
    pg.sql(f"ALTER ROLE {user} PASSWORD '{known_secrets.new_password()}'")
    assert post(admin_port, "/pools/met2/reconnect")["idle_closed"] == 1
    # The borrower retries refused logins (a rotation's window) within borrow_timeout, then
    # fails with the login error, or with the timeout when it strikes during an attempt.
    with pytest.raises(psycopg.OperationalError, match=r"authentication failed|borrow_timeout 2s") as failure:
        psycopg.connect(dsn, connect_timeout=10)
    reason = "upstream_error" if "authentication failed" in str(failure.value) else "borrow_timeout"
    pool = {"pool": "met2", "engine": "postgres"}
    text, samples = scrape(admin_port)
    assert metric(samples, "rotaproxy_server_auth_failures_total", **pool) >= 1
    assert metric(samples, "rotaproxy_server_connections_failed_total", **pool) >= 1
    assert metric(samples, "rotaproxy_server_connections_opened_total", **pool) == 1
    assert metric(samples, "rotaproxy_client_connections_rejected_total", **pool, reason=reason) == 1
    assert metric(samples, "rotaproxy_client_connections_accepted_total", **pool) == 1
    assert not any(value in text for value in known_secrets.values)


async def test_mysql_session_metrics(
    launcher: ProxyLauncher, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers, sm_client: Any
) -> None:
    secret_id = await new_secret(sm_client, rds_mysql_secret(mariadb, "app", mysql_users.app))
    admin_port = free_port()
    running = launcher.start(
        pool_toml(
            "mymet",
            secret_id,
            engine="mysql",
            upstream=f"127.0.0.1:{mariadb.port}",
            database="appdb",
            tls="disable",
        ),
        admin_port=admin_port,
    )
    pool = {"pool": "mymet", "engine": "mysql"}
    conn = pymysql.connect(
        host="127.0.0.1", port=running.port, user="x", database="mymet", autocommit=True, connect_timeout=10
    )
    try:
        _, connected = scrape(admin_port)
        assert metric(connected, "rotaproxy_client_connections", **pool) == 1
        assert metric(connected, "rotaproxy_client_connections_accepted_total", **pool) == 1
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.execute("BEGIN")
            cursor.execute("SELECT 2")
            _, in_transaction = scrape(admin_port)
            assert metric(in_transaction, "rotaproxy_server_connections_in_transaction", **pool) == 1
            cursor.execute("COMMIT")
        _, after = scrape(admin_port)
        assert metric(after, "rotaproxy_server_connections_in_transaction", **pool) == 0
        assert (
            metric(after, "rotaproxy_queries_total", **pool)
            - metric(connected, "rotaproxy_queries_total", **pool)
            == 4
        )
        # SELECT 1 (autocommit) and BEGIN ... COMMIT.
        transactions = metric(after, "rotaproxy_transactions_total", **pool)
        assert transactions - metric(connected, "rotaproxy_transactions_total", **pool) == 2
        assert metric(after, "rotaproxy_client_bytes_total", **pool, direction="out") > 0
    finally:
        conn.close()


def test_histogram_buckets_are_cumulative_with_inf_last() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert histogram.count == 4 and histogram.sum == pytest.approx(3.65)
    assert tuple(sorted(BORROW_WAIT_BUCKETS)) == BORROW_WAIT_BUCKETS


async def test_each_proxy_has_its_own_registry(pg: ThrowawayPostgres, users: Users) -> None:
    def config(name: str) -> Any:
        return parse_config(
            {
                "pool": [
                    {
                        "name": name,
                        "listen": f"127.0.0.1:{free_port()}",
                        "upstream": f"127.0.0.1:{pg.port}",
                        "database": "appdb",
                        "tls": "disable",
                        "credentials": {"source": "static", "username": "app", "password": users.app},
                    }
                ]
            },
            "<test>",
        )

    first, second = Proxy(config("first")), Proxy(config("second"))
    await first.start()
    try:
        await second.start()
        try:
            one, two = generate_latest(first.registry).decode(), generate_latest(second.registry).decode()
        finally:
            await second.close()
    finally:
        await first.close()
    assert 'rotaproxy_client_connections{engine="postgres",pool="first"} 0.0' in one
    assert 'pool="second"' not in one and 'pool="first"' not in two
    assert users.app not in one + two
