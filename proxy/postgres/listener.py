"""A PostgreSQL listener: accepts clients on one address for the pools that share it.

It owns its client-session tasks (cancelled and awaited on close) and the cancel keys it
handed out, so a CancelRequest reaches exactly the session that owns the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from protocols.postgres.framing import StartupReader
from protocols.postgres.messages import CancelRequest
from proxy.config import Address
from proxy.endpoint import Endpoint
from proxy.pool import Pool
from proxy.postgres.client import PgClientSession

log = logging.getLogger(__name__)


class _ClientEndpoint(Endpoint):
    def __init__(self, listener: PgListener) -> None:
        self.startup_reader = StartupReader()
        super().__init__(self.startup_reader)
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._listener.accepted(self)


class PgListener:
    def __init__(self, address: Address, pools: list[Pool]) -> None:
        self.address = address
        self.pools = pools
        self._by_database: dict[str, Pool] = {}
        for pool in pools:
            self._by_database.setdefault(pool.name, pool)
        for pool in pools:
            if pool.config.database:
                self._by_database.setdefault(pool.config.database, pool)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._cancel_keys: dict[tuple[int, int], PgClientSession] = {}
        self.accepted_total = 0

    def __repr__(self) -> str:
        return f"PgListener({self.address}, pools={[pool.name for pool in self.pools]})"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ClientEndpoint(self), self.address.host, self.address.port, reuse_address=True
        )
        log.info(
            "listening on %s for postgres pools %s",
            self.address,
            ", ".join(p.name for p in self.pools),
        )

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        self.stop_accepting()
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    @property
    def client_count(self) -> int:
        return len(self._sessions)

    def accepted(self, endpoint: _ClientEndpoint) -> None:
        self.accepted_total += 1
        session = PgClientSession(endpoint, endpoint.startup_reader, self)
        task = asyncio.create_task(session.run(), name=f"pg-client-{session.peer}")
        self._sessions.add(task)
        task.add_done_callback(self._session_done)

    def _session_done(self, task: asyncio.Task[None]) -> None:
        self._sessions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("client session crashed", exc_info=task.exception())

    def pool_for(self, database: str) -> Pool | None:
        return self._by_database.get(database)

    # --- cancel keys -----------------------------------------------------------------------
    def register_cancel_key(self, session: PgClientSession, process_id: int) -> tuple[int, int]:
        """The key the client will cancel with: the server's real PID and a secret of ours."""
        while True:
            key = (process_id, secrets.randbits(32))
            if key not in self._cancel_keys:
                self._cancel_keys[key] = session
                return key

    def forget_cancel_key(self, key: tuple[int, int] | None) -> None:
        if key is not None:
            self._cancel_keys.pop(key, None)

    async def cancel(self, request: CancelRequest) -> None:
        session = self._cancel_keys.get((request.process_id, request.secret_key))
        if session is None:
            log.info("cancel request with an unknown key ignored")
            return
        try:
            await session.cancel_current_query()
        except Exception as exc:
            log.warning("cancel for client %s failed: %s", session.peer, exc)
