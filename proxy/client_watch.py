"""Bounding clients in time and number, for one listener: the timeouts (``client_login_timeout``,
``client_stall_timeout``, ``client_idle_timeout``), who may use a pool (``[pool.clients]``),
a pool's ``max_client_connections``, and the connection a full process turns away.

Theory of operation: nothing runs per message. A session says, when asked, what it waits for
from its client (``ClientSession.waiting_on_client``); its endpoint counts the chunks it
received. The watch looks at every session of its listener a few times per shortest timeout
(at most once a second), so a timeout fires within a quarter of itself late. A client whose
chunk count has not moved while it stayed in one state for the state's timeout is told
why in its protocol's words and closed. Logging in is timed from the accept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from proxy.config import format_seconds
from proxy.core import limits
from proxy.core.endpoint import Endpoint
from proxy.core.limits import ClientLimits
from proxy.core.peer import PeerCredentials
from proxy.engine import ClientSession
from proxy.pool.pool import Pool

log = logging.getLogger(__name__)

MAX_TICK: Final = 1.0
MIN_TICK: Final = 0.05
# A refused client is given this long to read its error and close before we do.
REFUSAL_LINGER: Final = 1.0


@dataclass(slots=True)
class _Watched:
    endpoint: Endpoint
    accepted_at: float
    since: float  # when its state or its chunk count last changed
    state: int = limits.LOGGING_IN
    chunks: int = 0


class ClientWatch:
    """The clients of one listener, against the timeouts; ``run`` is the listener's task."""

    def __init__(self, limits_: ClientLimits, pools: Callable[[], list[Pool]]) -> None:
        self.limits = limits_
        self._pools = pools
        self._watched: dict[ClientSession, _Watched] = {}
        # Closed by a timeout before choosing a pool, by limit (the pool's own count the rest).
        self.closed_total: dict[str, int] = {}

    def add(self, session: ClientSession, endpoint: Endpoint) -> None:
        now = asyncio.get_running_loop().time()
        self._watched[session] = _Watched(endpoint, now, now)

    def remove(self, session: ClientSession) -> None:
        self._watched.pop(session, None)

    def tick(self) -> float:
        """How often to look: a quarter of the shortest timeout in force, within bounds."""
        config = self.limits.config
        timeouts = [config.client_login_timeout, config.client_stall_timeout]
        timeouts += [pool.config.client_idle_timeout for pool in self._pools()]
        enabled = [timeout for timeout in timeouts if timeout > 0]
        return min(MAX_TICK, max(MIN_TICK, min(enabled) / 4)) if enabled else MAX_TICK

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick())
            self.check(loop.time())

    def check(self, now: float) -> None:
        """Close every client past a timeout."""
        config = self.limits.config
        login, stall = config.client_login_timeout, config.client_stall_timeout
        expired: list[tuple[ClientSession, str, str]] = []
        for session, watched in self._watched.items():
            state = session.waiting_on_client()
            chunks = watched.endpoint.chunks_received
            if state != watched.state or chunks != watched.chunks:
                watched.state, watched.chunks, watched.since = state, chunks, now
            if state == limits.LOGGING_IN:
                if login and now - watched.accepted_at >= login:
                    expired.append((session, limits.LOGIN_TIMEOUT, _login_message(login)))
            elif state == limits.INCOMPLETE:
                if stall and now - watched.since >= stall:
                    expired.append((session, limits.STALL_TIMEOUT, _stall_message(session, stall)))
            elif state == limits.IDLE and session.pool is not None:
                idle = session.pool.config.client_idle_timeout
                if idle and now - watched.since >= idle:
                    expired.append((session, limits.IDLE_TIMEOUT, _idle_message(session.pool, idle)))
        for session, limit, message in expired:
            self.remove(session)
            log.info("client %s: %s", session.peer, message)
            self.count(session.pool, limit)
            session.end_for_limit(limit, message)

    def count(self, pool: Pool | None, limit: str) -> None:
        if pool is not None:
            pool.metrics.close(limit)
        else:
            self.closed_total[limit] = self.closed_total.get(limit, 0) + 1


def _login_message(timeout: float) -> str:
    return (
        "terminating connection: the login did not complete within client_login_timeout "
        f"({format_seconds(timeout)})"
    )


def _stall_message(session: ClientSession, timeout: float) -> str:
    prefix = f'pool "{session.pool.name}": ' if session.pool is not None else ""
    return (
        f"{prefix}terminating connection: the rest of a message did not arrive within "
        f"client_stall_timeout ({format_seconds(timeout)})"
    )


def _idle_message(pool: Pool, timeout: float) -> str:
    return (
        f'pool "{pool.name}": terminating connection: idle for longer than client_idle_timeout '
        f"({format_seconds(timeout)})"
    )


def admission(pool: Pool, caller: PeerCredentials | None) -> tuple[str, str] | None:
    """Why a client may not use ``pool`` (limit, message), or None: a caller the pool's
    ``[pool.clients]`` does not allow, or the pool's own ``max_client_connections`` reached."""
    clients = pool.config.clients
    if clients.restricted:
        allowed = caller is not None and (
            (clients.allow_uids is not None and caller.uid in clients.allow_uids)
            or (clients.allow_gids is not None and not caller.groups.isdisjoint(clients.allow_gids))
        )
        if not allowed:
            who = f"uid {caller.uid}" if caller is not None else "a caller whose uid is unknown"
            return limits.CALLER_NOT_ALLOWED, (
                f'pool "{pool.name}": {who} may not connect (not in [pool.clients] allow_uids / allow_gids)'
            )
    maximum = pool.config.max_client_connections
    if maximum and pool.metrics.clients >= maximum:
        return limits.TOO_MANY_CLIENTS, (
            f'pool "{pool.name}": sorry, too many clients already: the pool\'s max_client_connections '
            f"({maximum}) reached"
        )
    return None


class Refusal(asyncio.Protocol):
    """A connection turned away at accept: it gets ``error`` and, once it has had time to
    read it, is closed (closing at once, with its startup packet unread, would reset it and
    could lose the error)."""

    def __init__(self, error: bytes) -> None:
        self._error = error
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        stream = cast(asyncio.Transport, transport)
        stream.write(self._error)
        if stream.can_write_eof():
            stream.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER, stream.close)

    def data_received(self, data: bytes) -> None:
        pass  # a startup packet or handshake nobody will read

    def eof_received(self) -> bool:
        return False  # the client read the error and left: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
