"""The running proxy: credential sources, pools and listeners built from a ``Config``.

``Proxy`` owns everything it starts and stops it in order: stop accepting, end client
sessions, close pools, close AWS clients.
"""

from __future__ import annotations

import asyncio
import logging

from proxy.admin import AdminServer
from proxy.config import Config, CredentialsConfig
from proxy.credentials import CredentialSource, SecretsManagerClients, SecretsManagerSource, make_source
from proxy.engine import Engine
from proxy.listener import Listener
from proxy.metrics import build_registry
from proxy.mysql.engine import MYSQL
from proxy.pool import Pool
from proxy.postgres.engine import POSTGRES

log = logging.getLogger(__name__)

ENGINES: dict[str, Engine] = {engine.name: engine for engine in (POSTGRES, MYSQL)}


def _source_key(config: CredentialsConfig) -> tuple[str, str | None, str | None]:
    return (config.source, config.secret_id, config.username)


class Proxy:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.aws_clients = SecretsManagerClients(config.aws)
        self.sources: dict[tuple[str, str | None, str | None], CredentialSource] = {}
        self.pools: dict[str, Pool] = {}
        self.listeners: list[Listener] = []
        self.admin: AdminServer | None = None
        self.registry = build_registry(self)  # this proxy's own: tests run several in one process

    def __repr__(self) -> str:
        return f"Proxy(pools={list(self.pools)}, listeners={[str(item.address) for item in self.listeners]})"

    async def start(self) -> None:
        try:
            for pool_config in self.config.pools:
                key = _source_key(pool_config.credentials)
                if key not in self.sources:
                    # Pools sharing a secret share its cache and its one fetch in flight.
                    self.sources[key] = make_source(pool_config.credentials, self.aws_clients)
                engine = ENGINES[pool_config.engine]
                pool = Pool(pool_config, self.sources[key], engine.connector(pool_config))
                self.pools[pool_config.name] = pool
                await pool.start()
            for key, source in self.sources.items():
                if isinstance(source, SecretsManagerSource):
                    intervals = [
                        p.credentials.poll_interval
                        for p in self.config.pools
                        if _source_key(p.credentials) == key
                    ]
                    source.poll_interval = min(intervals)
                    source.start_polling()
            if self.config.admin.listen is not None:
                self.admin = AdminServer(self, self.config.admin.listen)
                await self.admin.start()
            for address, pool_configs in self.config.listeners().items():
                engine = ENGINES[pool_configs[0].engine]  # one listener, one engine (config checks)
                listener = Listener(
                    address,
                    engine.name,
                    [self.pools[p.name] for p in pool_configs],
                    engine.client_reader,
                    engine.client_session,
                )
                await listener.start()
                self.listeners.append(listener)
        except BaseException:
            await self.close()
            raise

    def refresh_credentials(self) -> None:
        """Re-read every secret now (SIGHUP); pools move to new versions make-before-break."""
        log.info("re-reading secrets")
        for source in self.sources.values():
            if isinstance(source, SecretsManagerSource):
                source.poll_soon()

    async def close(self) -> None:
        for listener in self.listeners:
            listener.stop_accepting()
        for listener in self.listeners:
            await listener.close()
        if self.admin is not None:
            await self.admin.close()
        for pool in self.pools.values():
            await pool.close()
        for source in self.sources.values():
            await source.close()
        await self.aws_clients.close()
        log.info("rotaproxy stopped")

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
            log.info("shutting down")
        finally:
            await self.close()
