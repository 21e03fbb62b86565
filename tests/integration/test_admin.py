"""The admin API of a real rotaproxy process: liveness, readiness, pool state, operator actions
(refresh, reconnect, pause/resume) and ``rotaproxy status``, with real clients and servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest

from proxy.cli import status_table
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import free_port
from proxy.local.proxy_process import ProxyProcess
from proxy.local.secrets_manager import put_secret_json
from tests.conftest import (
    ProxyLauncher,
    Secrets,
    Users,
    get_json,
    new_secret,
    pool_toml,
    post_json,
    rds_secret,
    wait_for,
)


def get_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def backend_pid(port: int, pool: str) -> int:
    with psycopg.connect(f"host=127.0.0.1 port={port} dbname={pool} user=x", autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])


def backends_of(pg: ThrowawayPostgres, user: str) -> set[int]:
    out = pg.sql(f"SELECT pid FROM pg_stat_activity WHERE usename = '{user}'")
    return {int(line) for line in out.split()}


async def status_command(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "proxy", "status", *args]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30)


async def start_pool(
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    users: Users,
    sm_client: Any,
    name: str,
    **settings: object,
) -> tuple[ProxyProcess, int, str]:
    """A proxy with one pool ``name`` on appdb as user app, and its admin port."""
    secret_id = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    admin_port = free_port()
    settings = {"database": "appdb", "tls": "disable", **settings}
    running = launcher.start(pool_toml(name, secret_id, **settings), admin_port=admin_port)
    return running, admin_port, secret_id


async def test_health_readiness_and_pool_state(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any, known_secrets: Secrets
) -> None:
    secret_id = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    admin_port = free_port()
    running = launcher.start(
        pool_toml("good", secret_id, database="appdb", tls="disable", min_server_connections=0)
        + pool_toml("broken", "no/such/secret", tls="disable"),
        admin_port=admin_port,
    )
    assert get_json(admin_port, "/healthz") == {"status": "alive"}
    not_ready = get_json(admin_port, "/readyz")
    assert not_ready["status"] == "not ready"
    assert set(not_ready["pools"]) == {"good", "broken"}  # nothing has logged in upstream yet
    assert not_ready["pools"]["good"] == "no credentials loaded yet"  # read on first use

    with psycopg.connect(f"host=127.0.0.1 port={running.port} dbname=good user=x", autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
        pools = get_json(admin_port, "/pools")
        assert pools["good"]["busy"] == 1 and pools["good"]["opened_total"] == 1
        assert pools["good"]["clients"] == {
            "connected": 1,
            "active": 1,
            "waiting": 0,
            "in_transaction": 0,
            "pinned": 0,
        }
    try:
        with psycopg.connect(f"host=127.0.0.1 port={running.port} dbname=broken user=x", autocommit=True):
            pass
    except psycopg.OperationalError:
        pass

    readiness = get_json(admin_port, "/readyz")
    assert readiness["status"] == "not ready"
    assert list(readiness["pools"]) == ["broken"]  # the good pool is ready now
    assert "'no/such/secret'" in readiness["pools"]["broken"]
    assert "does not exist" in readiness["pools"]["broken"]

    pools = get_json(admin_port, "/pools")
    good = pools["good"]
    assert good["idle"] == 1 and good["busy"] == 0 and good["generation"] == 1
    assert good["ready"] is True and pools["broken"]["ready"] is False
    assert good["server_connections"] == {"by_state": {"idle": 1}, "by_generation": {"1": 1}}
    assert good["clients"]["connected"] == 0
    assert good["credentials"]["version_id"] == good["credential_version"] is not None
    assert good["credentials"]["stage"] == "AWSCURRENT"
    assert good["last_refresh_at"] == pytest.approx(time.time(), abs=60)
    assert good["last_rotation_at"] is None and good["refresh_errors"] == 0
    assert pools["broken"]["refresh_errors"] >= 1
    assert good["engine"] == "postgres" and good["mode"] == "session"
    assert good["settings"]["database"] == "appdb" and good["settings"]["borrow_timeout"] == 5.0
    assert good["settings"]["credentials"] == f"secret {secret_id!r}"
    text = json.dumps(pools)
    assert not any(value in text for value in known_secrets.values)  # versions, never values


async def test_readiness_follows_the_upstream_going_away_and_coming_back(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any
) -> None:
    _, admin_port, _ = await start_pool(launcher, pg, users, sm_client, "ready1", min_server_connections=1)
    wait_for(lambda: get_status(admin_port, "/readyz") == 200, 10, "ready with one idle connection")

    await asyncio.to_thread(pg.stop)
    try:
        wait_for(lambda: get_status(admin_port, "/readyz") == 503, 15, "503 once the upstream is gone")
        body = get_json(admin_port, "/readyz")
        assert body["status"] == "not ready" and list(body["pools"]) == ["ready1"]
        assert body["pools"]["ready1"].startswith('pool "ready1": cannot reach upstream')
        assert get_json(admin_port, "/pools")["ready1"]["ready"] is False
    finally:
        await asyncio.to_thread(pg.start)
    # The janitor refills the pool to its minimum, and readiness follows.
    wait_for(lambda: get_status(admin_port, "/readyz") == 200, 15, "200 once the upstream is back")
    assert get_json(admin_port, "/readyz") == {"status": "ready"}


async def test_refresh_reads_the_secret_now_and_the_pool_moves_to_the_new_version(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any
) -> None:
    running, admin_port, secret_id = await start_pool(launcher, pg, users, sm_client, "refresh1")
    backend_pid(running.port, "refresh1")  # the pool logs in with the first version
    first = get_json(admin_port, "/pools")["refresh1"]["credential_version"]

    status, body = post_json(admin_port, "/pools/refresh1/refresh")
    assert (status, body["changed"], body["version_id"]) == (200, False, first)

    # A new version (same password): the poller would see it in 30 s; refresh sees it now.
    second = await put_secret_json(sm_client, secret_id, rds_secret(pg, "app", users.app))
    status, body = post_json(admin_port, "/pools/refresh1/refresh")
    assert status == 200
    assert body == {"pool": "refresh1", "changed": True, "version_id": second, "stage": "AWSCURRENT"}
    wait_for(
        lambda: get_json(admin_port, "/pools")["refresh1"]["credential_version"] == second,
        5,
        "the pool moved to the new version",
    )
    pool = get_json(admin_port, "/pools")["refresh1"]
    assert pool["generation"] == 2 and pool["rotations_total"] == 1
    assert pool["last_rotation_at"] == pytest.approx(time.time(), abs=30)

    status, body = post_json(admin_port, "/pools/nosuchpool/refresh")
    assert status == 404 and "nosuchpool" in body["error"]
    status, body = post_json(admin_port, "/pools/nosuchpool/reconnect")
    assert status == 404 and "nosuchpool" in body["error"]
    # A web page on this machine cannot drive the API: browsers send Origin on a POST.
    status, body = post_json(admin_port, "/pause", headers={"Origin": "http://evil.example"})
    assert status == 403 and get_json(admin_port, "/pools")["refresh1"]["paused"] is False


async def test_refresh_of_a_broken_secret_is_a_clear_error(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any
) -> None:
    admin_port = free_port()
    launcher.start(pool_toml("nosecret", "no/such/secret2", tls="disable"), admin_port=admin_port)
    status, body = post_json(admin_port, "/pools/nosecret/refresh")
    assert status == 502
    assert "'no/such/secret2'" in body["error"] and "does not exist" in body["error"]


async def test_reconnect_closes_idle_connections_now_and_busy_ones_when_released(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any
) -> None:
    running, admin_port, _ = await start_pool(launcher, pg, users, sm_client, "drain1")
    dsn = f"host=127.0.0.1 port={running.port} dbname=drain1 user=x"
    with psycopg.connect(dsn, autocommit=True) as busy, psycopg.connect(dsn, autocommit=True) as other:
        busy_pid = busy.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        idle_pid = other.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        other.close()  # its server connection goes back to the pool, idle
        wait_for(lambda: get_json(admin_port, "/pools")["drain1"]["idle"] == 1, 5, "one idle")

        status, body = post_json(admin_port, "/pools/drain1/reconnect")
        assert status == 200
        assert body == {"pool": "drain1", "generation": 2, "idle_closed": 1, "busy_draining": 1}
        wait_for(lambda: idle_pid not in backends_of(pg, "app"), 5, "the idle backend closed")
        # The busy session carries on, on its old connection.
        assert busy.execute("SELECT pg_backend_pid()").fetchone() == (busy_pid,)
        pool = get_json(admin_port, "/pools")["drain1"]
        assert pool["server_connections"]["by_generation"] == {"1": 1}
        assert pool["reconnects_total"] == 1
    # Released, the old connection is closed rather than reused: new clients get fresh ones.
    wait_for(lambda: busy_pid not in backends_of(pg, "app"), 5, "the busy backend closed on release")
    fresh = backend_pid(running.port, "drain1")
    assert fresh not in (busy_pid, idle_pid)
    assert get_json(admin_port, "/pools")["drain1"]["server_connections"]["by_generation"] == {"2": 1}


async def test_pause_holds_new_sessions_until_resume_while_work_in_flight_goes_on(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any
) -> None:
    running, admin_port, _ = await start_pool(launcher, pg, users, sm_client, "pause1", borrow_timeout="20s")
    dsn = f"host=127.0.0.1 port={running.port} dbname=pause1 user=x"
    in_flight = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        status, body = await asyncio.to_thread(post_json, admin_port, "/pause")
        assert (status, body) == (200, {"paused": ["pause1"]})

        async def new_session() -> Any:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                cursor = await conn.execute("SELECT 41 + 1")
                return await cursor.fetchone()

        waiting = asyncio.create_task(new_session())
        await asyncio.sleep(1.5)
        assert not waiting.done()  # held, not failed
        # The session that already holds its server connection is not held.
        cursor = await in_flight.execute("SELECT 'still working'")
        assert await cursor.fetchone() == ("still working",)
        pool = (await asyncio.to_thread(get_json, admin_port, "/pools"))["pause1"]
        assert pool["paused"] is True and pool["clients"]["waiting"] == 1

        status, body = await asyncio.to_thread(post_json, admin_port, "/resume")
        assert (status, body) == (200, {"resumed": ["pause1"]})
        assert await asyncio.wait_for(waiting, 10) == (42,)
        assert (await asyncio.to_thread(get_json, admin_port, "/pools"))["pause1"]["paused"] is False
    finally:
        await in_flight.close()


async def test_a_paused_pool_still_honours_borrow_timeout(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any
) -> None:
    running, admin_port, _ = await start_pool(launcher, pg, users, sm_client, "pause2", borrow_timeout="1s")
    assert post_json(admin_port, "/pause")[0] == 200
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match=r"borrow_timeout 1s.*paused"):
        psycopg.connect(f"host=127.0.0.1 port={running.port} dbname=pause2 user=x", connect_timeout=10)
    assert 0.9 <= time.monotonic() - started < 5
    assert post_json(admin_port, "/resume")[0] == 200
    assert backend_pid(running.port, "pause2") > 0


async def test_pause_in_transaction_mode_holds_the_next_query_until_resume(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any
) -> None:
    running, admin_port, _ = await start_pool(
        launcher, pg, users, sm_client, "pause3", mode="transaction", borrow_timeout="20s"
    )
    dsn = f"host=127.0.0.1 port={running.port} dbname=pause3 user=x"
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT 1")
        assert await cursor.fetchone() == (1,)
        assert (await asyncio.to_thread(post_json, admin_port, "/pause"))[0] == 200

        async def query() -> Any:
            cursor = await conn.execute("SELECT 2")
            return await cursor.fetchone()

        waiting = asyncio.create_task(query())
        await asyncio.sleep(1.5)
        assert not waiting.done()  # the client is connected, but its next transaction waits
        assert (await asyncio.to_thread(post_json, admin_port, "/resume"))[0] == 200
        assert await asyncio.wait_for(waiting, 10) == (2,)


async def test_status_command_prints_a_row_per_pool(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any, known_secrets: Secrets
) -> None:
    running, admin_port, _ = await start_pool(launcher, pg, users, sm_client, "status1")
    backend_pid(running.port, "status1")
    result = await status_command("--admin", f"http://127.0.0.1:{admin_port}")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "status1" in line)
    assert "postgres/session" in row and "ready" in row and "not ready" not in row
    assert "AWSCURRENT" in row and "never" in row  # refreshed, never rotated
    assert "1/0/20" in row  # idle/busy/max
    assert not any(value in result.stdout + result.stderr for value in known_secrets.values)

    gone = await status_command("--admin", f"http://127.0.0.1:{free_port()}")
    assert gone.returncode == 1
    assert "cannot reach the admin API" in gone.stderr


def test_status_counts_kept_connections_as_idle() -> None:
    from rich.console import Console

    pool = {"engine": "postgres", "mode": "transaction", "ready": True, "idle": 1, "kept": 2, "busy": 3}
    console = Console(width=200, record=True)
    console.print(status_table({"orders": {**pool, "max_server_connections": 20}}, now=0.0))
    row = next(line for line in console.export_text().splitlines() if "orders" in line)
    assert "3/3/20" in row  # idle (1 idle + 2 kept by idle clients) / busy / max
