"""Transaction mode's hold on the pool: a client attaches a server connection when it needs
one and gives it back at the next idle point.

Attaching takes an idle connection at once when the pool has one (the common case: no task,
no wait), else queues for the next one released or borrows it in a task; the client's
settings are brought onto it first with one ``set_config`` query when the pooling core asks
(``BringSettings``). Detaching keeps the connection attached while the pool lets it (nobody
waits), which saves the release and borrow a busy client would pay per transaction; the
pool takes it back at need. Shutdown and reload act here too: a detached client moves to the
pool that replaced its own, or leaves. ``TransactionRelay`` (``proxy.postgres.transaction``)
builds on this with the message flow; what to do is the core's
(``protocols.postgres.pooling``) to say.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from typing import Any, Protocol

from protocols.endings import EndReason
from protocols.postgres.messages import (
    SQLSTATE_CANNOT_CONNECT,
    SQLSTATE_CONNECTION_FAILURE,
    SQLSTATE_TOO_MANY_CONNECTIONS,
)
from protocols.postgres.pooling import BringSettings, Command, PooledClient
from proxy.core.counters import ClientMeter
from proxy.core.endpoint import Endpoint
from proxy.core.errors import BorrowTimeout, PoolError
from proxy.core.server import ServerConnection
from proxy.pool.pool import Pool
from proxy.postgres.server import PgServerConnection
from proxy.postgres.settings import set_config_query

# Transaction mode logs under one name, whichever of its modules speaks.
log = logging.getLogger("proxy.postgres.transaction")


class TransactionSession(Protocol):
    """What transaction mode may ask of the client session it serves (``PgClientSession``).

    The session's fields stay the session's: the relay tells it what happened through these
    methods, and the session asks the relay what it needs (``cancel_target``).
    """

    @property
    def peer(self) -> str: ...

    def moved_to(self, pool: Pool) -> None:
        """A reload replaced the client's pool; the client now belongs to ``pool``."""

    async def say_goodbye_at_idle(self, pending: int = 0) -> None: ...


class ServerAttachment(ABC):
    """One transaction-mode client's server connection, attached while it needs one.

    The subclass carries out the core's commands (``_run``) and feeds it the server's
    bytes (``_on_server_data``, ``_on_server_lost``).
    """

    def __init__(
        self,
        session: TransactionSession,
        client: Endpoint,
        pool: Pool,
        meter: ClientMeter,
        parameters: dict[str, str],
    ) -> None:
        self.session = session
        self.client = client
        self.pool = pool
        self.core = PooledClient(parameters, pool.name)
        self.server: PgServerConnection | None = None
        self.metrics = pool.metrics
        self.meter = meter
        # Idle, but still attached: the pool let us keep the connection (see Pool.keep).
        self.kept = False
        # Getting a connection: a place in the pool's queue, or a task borrowing one.
        self._attaching: asyncio.Future[Any] | None = None
        self._done: asyncio.Future[EndReason] = asyncio.get_running_loop().create_future()
        self.closing = False  # shutdown or reload: leave the pool at the next detach point

    @property
    def cancel_target(self) -> PgServerConnection | None:
        """What a CancelRequest from this client reaches: the connection running its request.
        Not a kept one: a late cancel must not reach whoever gets it next."""
        return None if self.kept else self.server

    @abstractmethod
    def _run(self, commands: list[Command]) -> None:
        """Carry out the core's commands, in order."""

    @abstractmethod
    def _on_server_data(self, data: bytes) -> None: ...

    @abstractmethod
    def _on_server_lost(self, _: Endpoint) -> None: ...

    def _finish(self, reason: EndReason) -> None:
        if not self._done.done():
            self._done.set_result(reason)
            self.core.stop()

    # --- attaching ---------------------------------------------------------------------------
    def _start_attaching(self) -> None:
        """Attach a connection: at once if the pool has an idle one with our settings.

        Otherwise queue for the next one released (a full pool) or borrow it in a task.
        """
        server = self.pool.borrow_now()
        if server is not None:
            self._take(server)  # the common case: no task, no wait
            return
        self._attaching = self.pool.queue_for_release(self._handed)
        if self._attaching is None:
            self._attaching = asyncio.create_task(self._attach())

    def _take(self, server: ServerConnection) -> None:
        """A connection borrowed for us: attach it now if it has our settings, else bring
        them onto it first, in a task."""
        assert isinstance(server, PgServerConnection)
        commands = self.core.attached(server.server_state)
        if commands and isinstance(bring := commands[0], BringSettings):
            self._attaching = asyncio.create_task(self._attach(server, bring))
            return
        self._attached(server)
        self._run(commands)

    def _handed(self, waiter: asyncio.Future[Any]) -> None:
        """The pool answered our place in its queue."""
        self._attaching = None
        if waiter.cancelled():  # the client left
            return
        if (exc := waiter.exception()) is not None:
            if not self._done.done():
                timeout = isinstance(exc, BorrowTimeout)
                self._fail(SQLSTATE_TOO_MANY_CONNECTIONS if timeout else SQLSTATE_CANNOT_CONNECT, str(exc))
            return
        server = waiter.result()
        if server is None:  # a slot freed up: open a connection the slow way
            if not self._done.done():
                self._attaching = asyncio.create_task(self._attach())
        elif self._done.done():
            self.pool.release(server, reusable=True)
        else:
            self._take(server)

    async def _attach(
        self, server: PgServerConnection | None = None, bring: BringSettings | None = None
    ) -> None:
        """Borrow a connection (unless handed ``server``), bring our settings onto it, attach."""
        try:
            if server is None:
                try:
                    borrowed = await self.pool.borrow()
                except BorrowTimeout as exc:
                    self._fail(SQLSTATE_TOO_MANY_CONNECTIONS, str(exc))
                    return
                except PoolError as exc:
                    self._fail(SQLSTATE_CANNOT_CONNECT, str(exc))
                    return
                assert isinstance(borrowed, PgServerConnection)
                server = borrowed
                if self._done.done():
                    self.pool.release(server, reusable=True)
                    return
                commands = self.core.attached(server.server_state)
                if not commands or not isinstance(commands[0], BringSettings):
                    self._attaching = None
                    self._attached(server)
                    self._run(commands)
                    return
                bring = commands[0]
            assert bring is not None
            try:
                await self._bring_settings(server, bring.settings)
            except BaseException as exc:
                self.pool.release(server, reusable=False)  # its session is in an unknown state
                if not isinstance(exc, Exception):
                    raise
                self._fail(SQLSTATE_CONNECTION_FAILURE, f'pool "{self.pool.name}": {exc}')
                return
        finally:
            self._attaching = None
        if self._done.done():
            self.pool.release(server, reusable=True)
            return
        self._attached(server)
        self._run(self.core.settings_brought(server.server_state))

    async def _bring_settings(self, server: PgServerConnection, settings: dict[str, str]) -> None:
        errors = await server.run_queries(set_config_query(settings))
        if errors:
            log.warning(
                "could not bring settings %s onto %r: %s",
                sorted(settings),
                server,
                errors[0].message,
            )

    def _attached(self, server: PgServerConnection) -> None:
        self.server = server
        self.client.peer, server.endpoint.peer = server.endpoint, self.client
        server.endpoint.start_relay(self._on_server_data)
        server.endpoint.on_lost(self._on_server_lost)
        self.client.resume_reading()

    def _fail(self, code: str, message: str) -> None:
        log.warning("client %s: %s", self.session.peer, message)
        self._run([self.core.no_connection(code, message)])

    # --- detaching ---------------------------------------------------------------------------
    def _unhook(self) -> PgServerConnection:
        """Undo what attaching did; the connection is the caller's to give back."""
        server = self.server
        assert server is not None
        self.server = None
        self.kept = False
        self.core.detached()
        server.endpoint.remove_on_lost(self._on_server_lost)
        server.endpoint.stop_relay()
        self.client.peer = None
        return server

    def _may_detach(self, clean: bool) -> bool:
        """The core says the client may let go of its connection: give it back (or keep it,
        while nobody waits); True if the client no longer runs on it."""
        if not clean:  # pinned: its session state cannot move
            if self.closing:
                self._finish(EndReason.GOODBYE)  # it ends here
            return False
        server = self.server
        assert server is not None
        if not self.closing and self.pool.keep(server, self._take_back):
            # Nobody waits: stay attached, and save the release and borrow a busy client would
            # otherwise pay per transaction. The pool takes it back the moment it needs it.
            self.kept = True
            return True
        self.pool.release(self._unhook(), reusable=True)
        if self.closing:
            self._leave_pool()
        return True

    def _use_again(self, server: PgServerConnection) -> None:
        self.kept = False
        self.pool.use_again(server)

    def _take_back(self, reusable: bool = True) -> None:
        """The pool takes back the connection this idle client kept: it needs it, or it failed."""
        self.pool.release(self._unhook(), reusable=reusable)

    async def _leave(self, reason: EndReason) -> None:
        """The client left: the connection goes back, reset if it must be, cancelled first
        if it still runs something of the client's."""
        self.core.forget_statements()  # closed upstream with the next work on each copy
        if self.server is None:
            return
        server = self._unhook()
        terms = self.core.release_terms()
        if reason is EndReason.SERVER_CLOSED or server.is_closed:
            self.pool.release(server, reusable=False)
            return
        if terms.cancel_first:
            await server.cancel_abandoned(self.session.peer)
        else:
            server.dirty = terms.needs_reset
        self.pool.release(server, reusable=terms.reusable)

    # --- shutdown and reload -----------------------------------------------------------------
    def close_gracefully(self) -> None:
        """Leave the pool at the next detach point (the session says why).

        A client waiting for a connection (``_attaching``) already sent its request: it is
        served, and leaves when that is answered.
        """
        self.closing = True
        if self._done.done():
            return
        if self.kept:
            self._take_back()
        if self.server is None:
            if self._attaching is None:
                self._leave_pool()
        elif self.core.pinned is not None and self.core.at_idle_point:
            self._finish(EndReason.GOODBYE)

    def _leave_pool(self) -> None:
        """Detached, while closing: move to the pool that replaced ours, or say goodbye."""
        successor = self.pool.live_successor()
        if (
            successor is None
            or successor.config.mode != "transaction"
            or successor.config.listen != self.pool.config.listen
        ):
            self._finish(EndReason.GOODBYE)  # said by run(), after the connection is back
            return
        # Nothing of the client lives on a server connection: its settings and statements
        # travel with it, so the next transaction simply runs on the new pool.
        log.debug('pool "%s": client %s moves to the reloaded pool', self.pool.name, self.session.peer)
        self.pool = successor
        self.core.pool_name = successor.name
        self.metrics = successor.metrics  # the same object: a reload hands it on (see Proxy.reload)
        self.closing = False
        self.session.moved_to(successor)
