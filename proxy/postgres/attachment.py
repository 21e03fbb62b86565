"""PostgreSQL transaction mode's hold on the pool: the engine's part of the skeleton in
``proxy.transaction_mode`` (attach, detach, keep, leave, move on reload).

A borrowed connection lacking the client's settings gets them first, with one
``set_config`` query, when the pooling core asks (``BringSettings``); no connection within
borrow_timeout is 53300, none at all 08006. ``TransactionRelay``
(``proxy.postgres.transaction``) builds on this with the message flow; what to do is the
core's (``protocols.postgres.pooling``) to say.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from protocols.postgres.messages import (
    SQLSTATE_CANNOT_CONNECT,
    SQLSTATE_CONNECTION_FAILURE,
    SQLSTATE_TOO_MANY_CONNECTIONS,
)
from protocols.postgres.pooling import BringSettings, PooledClient
from proxy.core.counters import ClientMeter
from proxy.core.endpoint import Endpoint
from proxy.core.server import ServerConnection
from proxy.pool.pool import Pool
from proxy.postgres.server import PgServerConnection
from proxy.postgres.settings import set_config_query
from proxy.transaction_mode import TransactionClient
from proxy.transaction_mode import TransactionSession as BaseSession

# Transaction mode logs under one name, whichever of its modules speaks.
log = logging.getLogger("proxy.postgres.transaction")


class TransactionSession(BaseSession, Protocol):
    """What PostgreSQL transaction mode may ask of its client session (``PgClientSession``)."""

    async def say_goodbye_at_idle(self, pending: int = 0) -> None: ...


class ServerAttachment(TransactionClient[PgServerConnection, PooledClient, TransactionSession]):
    """One transaction-mode PostgreSQL client's server connection, attached while it needs
    one (``proxy.transaction_mode``), with the client's settings brought onto it first.

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
        super().__init__(
            session,
            PooledClient(parameters, pool.name, pool.config.max_client_message_size),
            client,
            pool,
            meter,
            None,
        )

    def _take(self, server: ServerConnection) -> None:
        """A connection borrowed for us: attach it now if it has our settings, else bring
        them onto it first, in a task."""
        assert isinstance(server, PgServerConnection)
        commands = self.core.attached(server.server_state)
        if commands and isinstance(bring := commands[0], BringSettings):
            self._attaching = asyncio.create_task(self._bring(server, bring))
            return
        self._attached(server)
        self._run(commands)

    async def _bring(self, server: PgServerConnection, bring: BringSettings) -> None:
        """Bring our settings onto ``server`` (one ``set_config`` round trip), then attach."""
        try:
            errors = await server.run_queries(set_config_query(bring.settings))
        except BaseException as exc:
            self._attaching = None
            self.pool.release(server, reusable=False)  # its session is in an unknown state
            if not isinstance(exc, Exception):
                raise
            self._fail_with(SQLSTATE_CONNECTION_FAILURE, f'pool "{self.pool.name}": {exc}')
            return
        self._attaching = None
        if errors:
            log.warning(
                "could not bring settings %s onto %r: %s", sorted(bring.settings), server, errors[0].message
            )
        if self._done.done():
            self.pool.release(server, reusable=True)
            return
        self._attached(server)
        self._run(self.core.settings_brought(server.server_state))

    def _fail(self, message: str, timeout: bool) -> None:
        self._fail_with(SQLSTATE_TOO_MANY_CONNECTIONS if timeout else SQLSTATE_CANNOT_CONNECT, message)

    def _fail_with(self, code: str, message: str) -> None:
        log.warning("client %s: %s", self.session.peer, message)
        self._run([self.core.no_connection(code, message)])

    async def _stop_abandoned(self, server: PgServerConnection) -> None:
        await server.cancel_abandoned(self.session.peer)
