"""A listener: accepts clients on one address for the pools that share it, for any engine.

It owns its client-session tasks (asked to end at their next idle point on shutdown or
reload, cancelled and awaited on close) and a table of the keys it handed out to clients
(PostgreSQL cancel keys, MySQL connection ids), so a cancel or a KILL reaches exactly the
session that owns the key. A reload changes its pools in place; the socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Hashable
from typing import Any

from proxy.client_watch import ClientWatch, Refusal, admission
from proxy.clients.access import TRUST, ClientAccess
from proxy.config import Address, ClientLimitsConfig
from proxy.core.endpoint import Endpoint, Reader
from proxy.core.limits import ClientLimits
from proxy.core.peer import PeerCredentials, peer_credentials
from proxy.core.unix_socket import FileIdentity, bind_unix_socket, remove_socket_file
from proxy.engine import ClientSession, SessionHost
from proxy.pool.pool import Pool

log = logging.getLogger(__name__)


LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


class _AcceptedEndpoint(Endpoint):
    def __init__(self, listener: Listener) -> None:
        super().__init__(listener.reader_factory())
        self._listener = listener
        self.caller: PeerCredentials | None = None  # on a Unix socket: who connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._listener.address.is_unix:
            self.caller = peer_credentials(transport.get_extra_info("socket"))
        self._listener.accepted(self)


class Listener:
    def __init__(
        self,
        address: Address,
        engine: str,
        pools: list[Pool],
        reader_factory: Callable[[], Reader],
        session_factory: Callable[[Endpoint, SessionHost], ClientSession],
        limit_error: Callable[[str, str], bytes] | None = None,
        limits: ClientLimits | None = None,
        access: ClientAccess = TRUST,
    ) -> None:
        self.address = address
        self.access = access  # who may connect (replaced by a reload that changes it)
        self.engine = engine
        self.pools: list[Pool] = []
        self._by_database: dict[str, Pool] = {}
        self.set_pools(pools)
        self.reader_factory = reader_factory
        self._session_factory = session_factory
        self._limit_error = limit_error
        # Process-wide, shared by every listener of a proxy (one of its own if none is given).
        self.limits = limits if limits is not None else ClientLimits(ClientLimitsConfig(), 1 << 20)
        self.watch = ClientWatch(self.limits, self._current_pools)
        self._watch_task: asyncio.Task[None] | None = None
        self._socket_file: FileIdentity | None = None  # the Unix socket file we bound
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], ClientSession] = {}
        self._keys: dict[Hashable, Any] = {}
        self.accepted_total = 0
        self.rejected_total: dict[str, int] = {}  # clients refused before a pool was chosen, by reason
        # Called when a session ends or leaves its pool: whoever drains sessions waits on it.
        self.on_session_change: Callable[[], None] | None = None

    def label(self) -> str:
        return str(self.address)

    def __repr__(self) -> str:
        return f"Listener({self.engine} {self.address}, pools={[pool.name for pool in self.pools]})"

    async def start(self, *, serve: bool = True) -> None:
        """Bind; with ``serve=False`` accept nothing until ``serve()`` (a reload binds first,
        so that a port in use rejects the reload before anything has changed)."""
        loop = asyncio.get_running_loop()
        path = self.address.path
        if path is not None:
            config = self.pools[0].config  # (pools sharing a socket agree on its mode and group)
            sock, socket_file = bind_unix_socket(path, config.socket_mode, config.socket_group)
            self._socket_file = socket_file
            try:
                self._server = await loop.create_unix_server(
                    self._accept, sock=sock, start_serving=serve, backlog=LISTEN_BACKLOG
                )
            except BaseException:
                sock.close()
                remove_socket_file(path, socket_file)
                raise
        else:
            self._server = await loop.create_server(
                self._accept,
                self.address.host,
                self.address.port,
                reuse_address=True,
                start_serving=serve,
                # A storm of connects must queue, not be dropped (and retried a second later).
                backlog=LISTEN_BACKLOG,
            )
        self._watch_task = asyncio.create_task(self.watch.run(), name=f"client-watch-{self.address}")
        if serve:
            self._log_listening()

    async def serve(self) -> None:
        assert self._server is not None
        await self._server.start_serving()
        self._log_listening()

    def _log_listening(self) -> None:
        names = ", ".join(pool.name for pool in self.pools)
        log.info("listening on %s for %s pools %s", self.address, self.engine, names)

    def _accept(self) -> asyncio.Protocol:
        """A new connection's protocol: a session's endpoint, or a refusal when the process
        has as many clients as it may (``max_client_connections``, the open files limit)."""
        refusal = self.limits.refusal()
        if refusal is None or self._limit_error is None:
            return _AcceptedEndpoint(self)
        limit, message = refusal
        self.reject(limit)
        if self.rejected_total[limit] % 1000 == 1:  # the first, then one line per thousand
            log.warning("refusing new clients on %s: %s", self.address, message)
        return Refusal(self._limit_error(limit, message))

    def _current_pools(self) -> list[Pool]:
        return self.pools

    def set_pools(self, pools: list[Pool]) -> None:
        """The pools clients of this address choose from (a reload changes them in place)."""
        by_database: dict[str, Pool] = {}
        for pool in pools:
            by_database.setdefault(pool.name, pool)
        for pool in pools:
            if pool.config.database:
                by_database.setdefault(pool.config.database, pool)
        self.pools, self._by_database = list(pools), by_database

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.address.path is not None and self._socket_file is not None:
            remove_socket_file(self.address.path, self._socket_file)  # only if still ours
            self._socket_file = None

    async def close(self) -> None:
        """Stop accepting and cut every session still running (cancelled and awaited)."""
        self.stop_accepting()
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)
        watch = self._watch_task
        if watch is not None:
            self._watch_task = None
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    @property
    def client_count(self) -> int:
        return len(self._sessions)

    def sessions(
        self, pools: Collection[Pool | None] | None = None
    ) -> dict[asyncio.Task[None], ClientSession]:
        """The running sessions, or those on one of ``pools`` (None: not chosen one yet)."""
        if pools is None:
            return dict(self._sessions)
        return {task: session for task, session in self._sessions.items() if session.pool in pools}

    def accepted(self, endpoint: Endpoint) -> None:
        self.accepted_total += 1
        self.limits.open += 1
        session = self._session_factory(endpoint, self)
        task = asyncio.create_task(session.run(), name=f"{self.engine}-client-{session.peer}")
        self._sessions[task] = session
        self.watch.add(session, endpoint)
        task.add_done_callback(self._session_done)

    def _session_done(self, task: asyncio.Task[None]) -> None:
        session = self._sessions.pop(task, None)
        if session is not None:
            self.limits.open -= 1
            self.watch.remove(session)
        if not task.cancelled() and task.exception() is not None:
            log.error("client session crashed", exc_info=task.exception())
        self.session_changed()

    def session_changed(self) -> None:
        """A session ended or moved to another pool (transaction mode, after a reload)."""
        if self.on_session_change is not None:
            self.on_session_change()

    def pool_for(self, database: str) -> Pool | None:
        return self._by_database.get(database)

    def reject(self, reason: str) -> None:
        """Count a client refused before it reached a pool (e.g. an unknown database)."""
        self.rejected_total[reason] = self.rejected_total.get(reason, 0) + 1

    def admit(self, pool: Pool, endpoint: Endpoint) -> tuple[str, str] | None:
        caller = endpoint.caller if isinstance(endpoint, _AcceptedEndpoint) else None
        refusal = admission(pool, caller)
        if refusal is not None:
            pool.metrics.reject(refusal[0])
            log.info("client %s refused: %s", caller or "(tcp)", refusal[1])
        return refusal

    @property
    def closed_total(self) -> dict[str, int]:
        """Clients closed by a timeout before they chose a pool, by limit."""
        return self.watch.closed_total

    # --- keys handed to clients (cancel keys, connection ids) -------------------------------
    def register_key(self, key: Hashable, session: Any) -> bool:
        """Claim ``key`` for ``session``; False if another session holds it."""
        if key in self._keys:
            return False
        self._keys[key] = session
        return True

    def session_for_key(self, key: Hashable) -> Any:
        return self._keys.get(key)

    def forget_key(self, key: Hashable | None) -> None:
        if key is not None:
            self._keys.pop(key, None)
