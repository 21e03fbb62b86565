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
import contextlib
import logging

from protocols.endings import EndReason
from protocols.pooling import (
    MAY_DETACH,
    ArmIdleTimer,
    CloseWithError,
    DisarmIdleTimer,
    Ended,
    MayDetach,
    NeedConnection,
    Pinned,
    SendToClient,
    SendToServer,
)
from protocols.postgres.messages import STATUS_IDLE
from protocols.postgres.pooling import Command
from proxy.config import format_seconds
from proxy.core.counters import ClientMeter
from proxy.core.endpoint import CONTROL_BUFFER_LIMIT, Endpoint
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
        self.client.start_relay(self._on_client_data)
        self.client.on_lost(lambda _: self._finish(EndReason.CLIENT_CLOSED))
        if closing:
            self.close_gracefully()
        try:
            reason = await self._done
        except asyncio.CancelledError:
            # Cut (shutdown_timeout passed): a transaction still open dies with its connection.
            if self.server is not None:
                self.pool.release(self._unhook(), reusable=False)
            raise
        finally:
            self.client.stop_relay()
            self._disarm_idle_timer()
            if self._attaching is not None:
                self._attaching.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._attaching
        await self._leave(reason)
        if reason is EndReason.GOODBYE:
            await self.session.say_goodbye_at_idle(pending=self.core.pending)

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

    # --- the core's commands ---------------------------------------------------------------
    def _run(self, commands: list[Command]) -> None:
        for command in commands:
            # By type, most frequent first: this runs for every chunk either way.
            if type(command) is SendToServer:
                server = self.server
                assert server is not None
                server.endpoint.write(command.data)
            elif type(command) is SendToClient:
                self.metrics.bytes_out += len(command.data)
                self.client.write(command.data)
            elif type(command) is MayDetach:
                self._may_detach(command.clean)
            elif type(command) is NeedConnection:
                if self._attaching is None:
                    self._start_attaching()
                if self.server is None and self.core.pending > CONTROL_BUFFER_LIMIT:
                    self.client.pause_reading()  # resumed once attached
            elif type(command) is ArmIdleTimer:
                timeout = self.pool.config.idle_transaction_timeout
                if timeout:
                    self._idle_timer = asyncio.get_running_loop().call_later(timeout, self._idle_too_long)
            elif type(command) is DisarmIdleTimer:
                self._disarm_idle_timer()
            elif type(command) is Pinned:
                self._pinned(command)
            elif type(command) is Ended:
                if command.reason is EndReason.CLIENT_VIOLATION:
                    log.info("client %s broke the protocol: %s", self.session.peer, command.detail)
                elif command.reason is EndReason.SERVER_VIOLATION:
                    log.warning("upstream %r broke the protocol: %s", self.server, command.detail)
                self._finish(command.reason)
            elif type(command) is CloseWithError:
                self.client.write(command.error)
                self._finish(command.reason)
            else:  # BringSettings: only ever the answer to attached(), see _take
                raise AssertionError(f"unexpected command {command!r}")

    def _pinned(self, pin: Pinned) -> None:
        self.meter.pinned = True
        self.pool.pins_total[pin.kind] = self.pool.pins_total.get(pin.kind, 0) + 1
        log.info(
            'pool "%s": client %s pinned to %r (%s)',
            self.pool.name,
            self.session.peer,
            self.server,
            pin.reason,
        )

    def _disarm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
