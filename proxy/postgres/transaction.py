"""PostgreSQL transaction pooling: a client holds a server connection only while it needs one.

Theory of operation: this is the driver of the sans-IO pooling core
(``protocols.postgres.pooling``), which makes every protocol decision. The driver feeds it
the client's and the server's bytes and carries out the commands it returns: writes to either
side (one write per batch), attaching a connection when it asks for one (borrowing and the
``set_config`` round trip are ``ServerAttachment``'s, ``proxy.postgres.attachment``),
giving the connection back (or keeping it) when it may detach, counting and logging pins,
and the idle-in-transaction timer. When the server reports idle (``I``) and owes the client
nothing, the connection goes back to the pool, unreset (nothing session-scoped happened on
it) and usable by the next client at once.

Shutdown and reload (``close_gracefully``) act at the detach point: a client that holds no
server connection is told FATAL 57P01 there, or, when a reload replaced its pool, moves to
the new pool and notices nothing. A pinned client is told once the server is idle (``I``)
and owes it nothing. A client already waiting for a connection is served first.
"""

from __future__ import annotations

import asyncio
import logging

from protocols.endings import EndReason
from protocols.pooling import (
    MAY_DETACH,
    ArmIdleTimer,
    DisarmIdleTimer,
)
from protocols.postgres.messages import STATUS_IDLE
from proxy.config import format_seconds
from proxy.core.counters import ClientMeter
from proxy.core.endpoint import Endpoint
from proxy.pool.pool import Pool
from proxy.postgres.attachment import ServerAttachment, TransactionSession

log = logging.getLogger(__name__)

# The core's endings in the relay's words.


class TransactionRelay(ServerAttachment):
    """Serves one logged-in client in transaction mode until it leaves."""

    def __init__(
        self,
        session: TransactionSession,
        client: Endpoint,
        pool: Pool,
        meter: ClientMeter,
        parameters: dict[str, str],
    ) -> None:
        super().__init__(session, client, pool, meter, parameters)
        self._idle_timer: asyncio.TimerHandle | None = None  # armed while idle in a transaction

    def __repr__(self) -> str:
        return f"TransactionRelay({self.session.peer}, server={self.server!r}, pinned={self.core.pinned!r})"

    async def run(self, *, closing: bool = False) -> None:
        """Relay until the client leaves; ``closing``: it was asked to while logging in."""
        reason = await self.relay(closing=closing)
        if reason is EndReason.GOODBYE:
            await self.session.say_goodbye_at_idle(pending=self.core.pending)

    def _stopped(self) -> None:
        self._disarm_idle_timer()

    # --- events into the core --------------------------------------------------------------
    def _on_client_data(self, data: bytes) -> None:
        self.metrics.bytes_in += len(data)
        server = self.server
        if self.kept and server is not None:
            self._use_again(server)
        self._run(self.core.receive_client(data))

    def _on_server_data(self, data: bytes) -> None:
        if self.kept:
            # Nothing was asked: a server about to close says why (FATAL). Not the client's
            # business; the connection is done.
            log.info("upstream %r spoke while idle; closing it", self.server)
            self._take_back(reusable=False)
            return
        core = self.core
        plan = core.plan
        ready, idle = plan.ready_count, plan.idle_count
        commands = core.receive_server(data)
        if plan.ready_count != ready:
            self.metrics.queries += plan.ready_count - ready
            self.metrics.transactions += plan.idle_count - idle
            self.meter.in_transaction = plan.status != STATUS_IDLE
        self._run(commands)
        # Detached or kept (the core says so with its one clean MayDetach): the client's next
        # request, sent before this answer came, goes on now.
        if commands and commands[-1] is MAY_DETACH and core.pending:
            self._run(core.forward())

    def _on_server_lost(self, _: Endpoint) -> None:
        if self.kept:  # lost while the client was idle: it notices nothing
            self._take_back(reusable=False)
            return
        self._run([self.core.connection_lost()])

    def _idle_too_long(self) -> None:
        self._idle_timer = None
        timeout = format_seconds(self.pool.config.idle_transaction_timeout)
        log.warning(
            'pool "%s": client %s idle in a transaction for %s: disconnected',
            self.pool.name,
            self.session.peer,
            timeout,
        )
        self._run([self.core.idle_timer_fired(timeout)])

    # --- the core's commands (the rest are the skeleton's: TransactionClient._run) --------
    def _engine_command(self, command: object) -> None:
        if type(command) is ArmIdleTimer:
            timeout = self.pool.config.idle_transaction_timeout
            if timeout:
                self._idle_timer = asyncio.get_running_loop().call_later(timeout, self._idle_too_long)
        elif type(command) is DisarmIdleTimer:
            self._disarm_idle_timer()
        else:  # BringSettings: only ever the answer to attached(), see _take
            raise AssertionError(f"unexpected command {command!r}")

    def _disarm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
