"""The admin HTTP API (aiohttp, loopback only): health, metrics, pool state and operator actions.

``GET /healthz`` (alive), ``/readyz`` (every pool can serve; 503 once shutting down),
``/metrics`` (Prometheus), ``/pools`` (JSON per pool: clients, connections, credential
version and stage, never values); ``POST /pools/{name}/refresh``, ``/pools/{name}/reconnect``,
``/pause``, ``/resume``. Every number comes from the same counters the pool decides with.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.build import build
from proxy.config import Address
from proxy.credentials.base import CredentialsError
from proxy.ops.view import ProxyView
from proxy.pool.pool import Pool

log = logging.getLogger(__name__)


def pool_not_ready(pool: Pool) -> str | None:
    """Why ``pool`` cannot serve a client now, or None when it can.

    Ready means: credentials are loaded, and the pool holds an open upstream connection or
    its last attempt to open one succeeded. Not "opened one in the last N seconds": a quiet
    pool with min_server_connections = 0 would then turn unready for lack of traffic, and a
    load balancer would keep the traffic away that could make it ready again.
    """
    if pool.credentials.cached is None and pool.generation_credentials is None:
        return pool.last_error or pool.credentials.last_error or "no credentials loaded yet"
    if pool.open_connections:
        return None
    if pool.last_error is not None:
        return pool.last_error
    if pool.opened_total == 0:
        return "no upstream connection opened yet"
    return None


def pool_readiness(proxy: ProxyView) -> dict[str, str]:
    """Pools that are not ready, with the reason; empty when all are."""
    problems: dict[str, str] = {}
    for name, pool in proxy.pools.items():
        reason = pool_not_ready(pool)
        if reason is not None:
            problems[name] = reason
    return problems


def pool_state(pool: Pool) -> dict[str, Any]:
    """What ``GET /pools`` says about one pool (never a secret value)."""
    config = pool.config
    credentials = pool.credentials.state()
    last_rotation = pool.last_rotation
    return {
        **pool.stats(),
        "engine": config.engine,
        "mode": config.mode,
        "build": build(),  # of the process: compiled or pure Python
        "listen": str(config.listen),
        "max_server_connections": config.max_server_connections,
        "min_server_connections": config.min_server_connections,
        "credentials": credentials,
        "last_refresh_at": credentials.get("last_refresh_at"),
        "last_rotation_at": last_rotation["at"] if last_rotation else None,
        "refresh_errors": credentials.get("errors"),
        "ready": pool_not_ready(pool) is None,
        "settings": {
            "engine": config.engine,
            "mode": config.mode,
            "listen": str(config.listen),
            "upstream": str(config.upstream) if config.upstream else None,
            "database": config.database,
            "tls": config.tls,
            "max_server_connections": config.max_server_connections,
            "min_server_connections": config.min_server_connections,
            "borrow_timeout": config.borrow_timeout,
            "connect_timeout": config.connect_timeout,
            "idle_timeout": config.idle_timeout,
            "server_lifetime": config.server_lifetime,
            "liveness_check_after": config.liveness_check_after,
            "credentials": config.credentials.description,
            "poll_interval": config.credentials.poll_interval,
        },
    }


@web.middleware
async def refuse_browsers(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse POSTs that a web page could send: loopback is reachable from any local browser.

    Browsers add ``Origin`` to every cross-origin POST; curl, scripts and ``rotaproxy`` do not.
    """
    if request.method != "GET" and "Origin" in request.headers:
        return web.json_response({"error": "requests with an Origin header are refused"}, status=403)
    response: web.StreamResponse = await handler(request)
    return response


class AdminServer:
    def __init__(self, proxy: ProxyView, address: Address) -> None:
        self.proxy = proxy
        self.address = address
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        app = web.Application(middlewares=[refuse_browsers])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/pools", self.pools)
        app.router.add_post("/pools/{name}/refresh", self.refresh)
        app.router.add_post("/pools/{name}/reconnect", self.reconnect)
        app.router.add_post("/pause", self.pause)
        app.router.add_post("/resume", self.resume)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address.host, self.address.port, reuse_address=True)
        await site.start()
        log.info("admin API listening on http://%s", self.address)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _pool(self, request: web.Request) -> Pool:
        name = request.match_info["name"]
        pool = self.proxy.pools.get(name)
        if pool is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no pool named {name!r}"}), content_type="application/json"
            )
        return pool

    # --- reading ------------------------------------------------------------------------------
    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, _: web.Request) -> web.Response:
        if self.proxy.shutting_down:
            # Load balancers stop sending clients while open transactions finish.
            reason = "rotaproxy is shutting down"
            pools = dict.fromkeys(self.proxy.pools, reason)
            body = {"status": "shutting down", "reason": reason, "pools": pools}
            return web.json_response(body, status=503)
        problems = pool_readiness(self.proxy)
        if problems:
            return web.json_response({"status": "not ready", "pools": problems}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.proxy.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def pools(self, _: web.Request) -> web.Response:
        return web.json_response({name: pool_state(pool) for name, pool in self.proxy.pools.items()})

    # --- acting -------------------------------------------------------------------------------
    async def refresh(self, request: web.Request) -> web.Response:
        pool = self._pool(request)
        log.info('admin API: re-reading the credentials of pool "%s"', pool.name)
        try:
            changed = await pool.refresh_credentials()
        except CredentialsError as exc:
            return web.json_response({"pool": pool.name, "error": str(exc)}, status=502)
        credentials = pool.credentials.state()
        return web.json_response(
            {
                "pool": pool.name,
                "changed": changed,
                "version_id": credentials["version_id"],
                "stage": credentials["stage"],
            }
        )

    async def reconnect(self, request: web.Request) -> web.Response:
        pool = self._pool(request)
        return web.json_response({"pool": pool.name, **pool.reconnect()})

    async def pause(self, _: web.Request) -> web.Response:
        for pool in self.proxy.pools.values():
            pool.pause()
        return web.json_response({"paused": sorted(self.proxy.pools)})

    async def resume(self, _: web.Request) -> web.Response:
        for pool in self.proxy.pools.values():
            pool.resume()
        return web.json_response({"resumed": sorted(self.proxy.pools)})
