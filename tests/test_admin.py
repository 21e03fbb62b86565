"""The admin API of a real rotaproxy process: liveness, readiness and pool state."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from proxy.throwaway import ThrowawayPostgres, free_port
from tests.conftest import ProxyLauncher, Secrets, Users, get_json, new_secret, pool_toml, rds_secret


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

    with psycopg.connect(f"host=127.0.0.1 port={running.port} dbname=good user=x", autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
        pools = get_json(admin_port, "/pools")
        assert pools["good"]["busy"] == 1 and pools["good"]["opened_total"] == 1
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
    assert good["credentials"]["version_id"] == good["credential_version"] is not None
    assert good["credentials"]["stage"] == "AWSCURRENT"
    assert good["engine"] == "postgres" and good["mode"] == "session"
    text = json.dumps(pools)
    assert not any(value in text for value in known_secrets.values)  # versions, never values
