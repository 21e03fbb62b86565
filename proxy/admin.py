"""The admin HTTP API (aiohttp, loopback only): liveness, readiness and pool state.

``/healthz`` — the process is alive. ``/readyz`` — 200 only when every pool has credentials
and a working upstream login; otherwise 503 naming each pool and why. ``/pools`` — JSON per
pool: connections by state, generation, credential version and stage (never values),
rotation and refresh state. Every number comes from the same counters the pool decides with.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.config import Address

if TYPE_CHECKING:
    from proxy.app import Proxy

log = logging.getLogger(__name__)


def pool_readiness(proxy: Proxy) -> dict[str, str]:
    """Pools that are not ready, with the reason; empty when all are."""
    problems: dict[str, str] = {}
    for name, pool in proxy.pools.items():
        if pool.credentials.cached is None and pool.generation_credentials is None:
            problems[name] = pool.last_error or "no credentials loaded yet"
        elif pool.size == 0 and pool.opened_total == 0:
            problems[name] = pool.last_error or "no upstream connection opened yet"
        elif pool.last_error is not None and pool.size == 0:
            problems[name] = pool.last_error
    return problems


class AdminServer:
    def __init__(self, proxy: Proxy, address: Address) -> None:
        self.proxy = proxy
        self.address = address
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/pools", self.pools)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address.host, self.address.port, reuse_address=True)
        await site.start()
        log.info("admin API listening on http://%s", self.address)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, _: web.Request) -> web.Response:
        problems = pool_readiness(self.proxy)
        if problems:
            return web.json_response({"status": "not ready", "pools": problems}, status=503)
        return web.json_response({"status": "ready"})

    async def pools(self, _: web.Request) -> web.Response:
        body: dict[str, Any] = {}
        for name, pool in self.proxy.pools.items():
            body[name] = {
                **pool.stats(),
                "engine": pool.config.engine,
                "mode": pool.config.mode,
                "listen": str(pool.config.listen),
                "max_server_connections": pool.config.max_server_connections,
                "min_server_connections": pool.config.min_server_connections,
                "credentials": pool.credentials.state(),
            }
        return web.json_response(body)
