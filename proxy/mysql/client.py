"""A MySQL client session: the proxy's own greeting, passwordless login, session-mode relay.

Theory of operation: the proxy greets first (repeating the upstream's version string,
character set and status flags, offering only capabilities that keep the wire format
fixed), accepts whatever authentication response the client sends (local trust, as for
PostgreSQL; a MySQL 8 client preferring caching_sha2_password gets in too), picks the pool
(the listener's only one, else by user name, then by schema: a pool is an upstream account),
borrows a server connection of the client's capability *variant*, applies the client's
character set and schema, and answers OK.
A listener's only pool lends the connection before the greeting instead, whose connection
id is then the server's thread id (``_serve_greeted_on``).
Then packets are relayed: client commands are read whole (so COM_QUIT, COM_CHANGE_USER and
KILL of a proxy connection id can be handled here), server bytes are forwarded as they come
while a tracker follows where each response ends. When the client leaves, the connection
is reset and reused only if no response was outstanding; a query still running is killed.

Shutdown and reload ask a session to end gracefully (``close_gracefully``): before it holds
anything it gets ERR 1053 (ER_SERVER_SHUTDOWN) at once; in the relay, once no response is
outstanding and the server reports no open transaction, never in the middle of a result.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
from collections.abc import Coroutine
from typing import Any

from protocols.endings import EndReason
from protocols.errors import MessageTooLarge, ProtocolViolation
from protocols.mysql import constants as c
from protocols.mysql.messages import ErrPacket, HandshakeResponse41, HandshakeV10, OkPacket
from protocols.mysql.packets import Packet, PacketReader, frame
from protocols.mysql.tracker import ResponseTracker
from proxy.core import limits
from proxy.core.counters import REJECTED_UNKNOWN_DATABASE, ClientMeter
from proxy.core.endpoint import ConnectionClosed, Endpoint
from proxy.core.errors import BorrowTimeout, PoolError
from proxy.core.relay import await_next_request
from proxy.engine import SessionHost
from proxy.mysql.client_auth import LoginError, MySqlClientSecurity
from proxy.mysql.limits import limit_error, limit_packet
from proxy.mysql.server import (
    MAX_PACKET_SIZE,
    OFFERED_CAPABILITIES,
    TRANSACTION_VARIANTS,
    VARIANT_CAPABILITIES,
    Greeting,
    MySqlConnector,
    MySqlServerConnection,
)
from proxy.mysql.transaction import MySqlTransactionRelay
from proxy.pool.pool import Pool
from proxy.session_mode import SessionRelay, borrow_for_client, give_back

log = logging.getLogger(__name__)

# Proxy connection ids start far above the thread ids a server hands out, so a KILL can tell
# "one of ours" (translated) from an upstream thread id (passed through).
FIRST_CONNECTION_ID = 1 << 30
_connection_ids = itertools.count(FIRST_CONNECTION_ID)
FALLBACK_GREETING = Greeting(
    "8.0.36-rotaproxy", c.UTF8MB4_GENERAL_CI, c.SERVER_STATUS_AUTOCOMMIT, OFFERED_CAPABILITIES
)
KILL_STATEMENT = re.compile(rb"^\s*KILL\s+(?:(QUERY)\s+|CONNECTION\s+)?(\d+)\s*;?\s*$", re.IGNORECASE)
SQLSTATE_GENERAL = "HY000"
KILL_TIMEOUT = 5.0
HANDSHAKE_LIMIT = 64 * 1024
# A client greeted while a server connection waits for it answers at once; one that does not
# within MariaDB's own connect_timeout (10 s) is refused, and the connection freed.
HELD_HANDSHAKE_TIMEOUT = 10.0
ER_SERVER_SHUTDOWN = 1053  # what a MySQL server tells its clients when it shuts down
SQLSTATE_SHUTDOWN = "08S01"

# Where a session is, for close_gracefully: in the first three nothing is held and nothing
# of the client's is running, so the session can be told goodbye and stopped at once.
PHASE_GREETING = "greeting"  # learning the upstream's greeting, before ours is sent
PHASE_HANDSHAKE = "handshake"  # ours is sent; waiting for the client's handshake response
PHASE_BORROWING = "borrowing"  # waiting for the server connection
PHASE_LOGIN = "login"  # applying the client's character set on it
PHASE_RELAY = "relay"


def native_nonce() -> bytes:
    """20 random bytes, none of them NUL (the nonce's tail is NUL-terminated on the wire)."""
    return bytes(secrets.choice(range(1, 128)) for _ in range(20))


class ClientError(Exception):
    def __init__(self, code: int, message: str, sql_state: str = SQLSTATE_GENERAL) -> None:
        super().__init__(message)
        self.packet = ErrPacket(code, message, sql_state)


class MySqlClientSession:
    def __init__(self, endpoint: Endpoint, listener: SessionHost) -> None:
        assert isinstance(endpoint.reader, PacketReader)
        self.endpoint = endpoint
        self.reader: PacketReader = endpoint.reader
        self.listener = listener
        self.connection_id = next(_connection_ids)
        self.server: MySqlServerConnection | None = None
        self.pool: Pool | None = None
        self.meter: ClientMeter | None = None  # set once the pool is chosen; the relay reports into it
        self._tasks: set[asyncio.Task[None]] = set()
        self._sequence = 0
        peer = endpoint.transport.get_extra_info("peername") if endpoint.transport else None
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "local"
        self.closing: str | None = None  # why, once asked to end at the next idle point
        self.security = MySqlClientSecurity(
            endpoint, self.reader, listener.access, self.peer, listener.reject
        )  # TLS, login
        self._phase = PHASE_GREETING
        self._task: asyncio.Task[None] | None = None
        self._relay: MySqlSessionRelay | None = None  # once logged in
        self._alias: int | None = None  # a closed connection's thread id the client was told
        self._transactions: MySqlTransactionRelay | None = None  # transaction mode, once logged in

    def __repr__(self) -> str:
        return f"MySqlClientSession(id={self.connection_id}, peer={self.peer})"

    # --- shutdown and reload ---------------------------------------------------------------
    def close_gracefully(self, why: str) -> None:
        self.closing = why
        if self._phase in (PHASE_GREETING, PHASE_HANDSHAKE, PHASE_BORROWING):
            if self._phase == PHASE_HANDSHAKE:
                self._sequence = 2  # the answer to the handshake response the client sends next
            self._say_goodbye()
            if self._task is not None:
                self._task.cancel()
        elif self._phase == PHASE_RELAY and self._relay is not None:
            self._relay.close_gracefully()
        elif self._phase == PHASE_RELAY and self._transactions is not None:
            self._transactions.close_gracefully()
        # PHASE_LOGIN: looked at once the character set is applied.

    def _say_goodbye(self) -> None:
        assert self.closing is not None
        prefix = f'pool "{self.pool.name}": ' if self.pool is not None else ""
        message = f"{prefix}terminating connection: {self.closing}"
        self._send(ErrPacket(ER_SERVER_SHUTDOWN, message, SQLSTATE_SHUTDOWN).encode())

    # --- client limits (proxy/client_watch.py) -----------------------------------------------
    def waiting_on_client(self) -> int:
        if self._phase == PHASE_HANDSHAKE:
            return limits.LOGGING_IN
        relay = self._relay or self._transactions
        if self._phase == PHASE_RELAY and relay is not None:
            return relay.waiting_on_client()
        return limits.BUSY

    def end_for_limit(self, limit: str, message: str) -> None:
        # Unasked, as the answer to the handshake response or command the client is due to send.
        self._sequence = 2 if self._phase == PHASE_HANDSHAKE else 1
        self._send(limit_packet(limit, message).encode())
        self.endpoint.close()  # a relay sees the client gone and gives its connection back
        if self._phase in (PHASE_GREETING, PHASE_HANDSHAKE, PHASE_BORROWING) and self._task is not None:
            self._task.cancel()

    def _admit(self, pool: Pool) -> None:
        """Refuse a caller ``[pool.clients]`` does not allow, or one over the pool's client limit."""
        refusal = self.listener.admit(pool, self.endpoint)
        if refusal is not None:
            packet = limit_packet(*refusal)
            raise ClientError(packet.code, packet.message, packet.sql_state)

    @property
    def running_on(self) -> MySqlServerConnection | None:
        """The connection running this client's command, for KILL: its session's own, or in
        transaction mode the one it holds at this moment (not one it merely keeps)."""
        if self._transactions is not None:
            return self._transactions.running_on
        return self.server

    def moved_to(self, pool: Pool) -> None:
        """Transaction mode: a reload replaced the client's pool and the client moved on to
        ``pool``; the goodbye it was due is off."""
        self.pool = pool
        self.closing = None
        self.listener.session_changed()

    async def run(self) -> None:
        self._task = asyncio.current_task()
        self.listener.register_key(self.connection_id, self)
        try:
            await self._serve()
        except ClientError as refused:  # (a name per type: mypyc types one name once)
            self._send(refused.packet.encode())
        except ProtocolViolation as exc:
            log.info("client %s broke the protocol: %s", self.peer, exc)
            self._send(ErrPacket(c.ER_HANDSHAKE_ERROR, f"Bad handshake: {exc}", "08S01").encode())
        except ConnectionClosed:
            pass
        finally:
            self.listener.forget_key(self.connection_id)
            self.listener.forget_key(self._alias)
            for task in self._tasks:
                task.cancel()
            self.endpoint.close()

    def _send(self, payload: bytes) -> None:
        data, self._sequence = frame(payload, self._sequence)
        self.endpoint.write(data)

    async def _serve(self) -> None:
        pools = self.listener.pools
        clients = pools[0].config.clients
        # The greeting carries the server's own thread id where the session's connection is
        # borrowed first: not for a client that has still to prove who it is (logins that
        # never finish hold no server connection), nor for callers a pool may refuse.
        if (
            len(pools) == 1
            and pools[0].config.mode == "session"
            and not clients.restricted
            and not clients.authenticates
        ):
            self._admit(pools[0])  # over the pool's client limit: ERR 1040 instead of the greeting
            # An idle connection of the kind most clients choose, at once (no wait on a guess).
            server = pools[0].borrow_now(pools[0].connector.default_variant)
            if server is not None:
                assert isinstance(server, MySqlServerConnection)
                pool = self.pool = pools[0]
                with pool.metrics.client() as self.meter:
                    await self._serve_greeted_on(pool, server)
                return
        await self._greet_then_serve(pools[0])

    async def _greet_then_serve(self, first_pool: Pool) -> None:
        """Greet with the proxy's id, log the client in, then serve it on the pool it picks."""
        greeting = await self._upstream_greeting(first_pool)
        response = await self._handshake(greeting, self.connection_id)
        pool = self._choose_pool(response)
        self._admit(pool)
        self.pool = pool
        with pool.metrics.client() as self.meter:
            variant = response.capabilities & VARIANT_CAPABILITIES
            connector = pool.connector
            assert isinstance(connector, MySqlConnector)
            if pool.config.mode == "transaction":
                variant &= TRANSACTION_VARIANTS  # (what clients sharing a connection may differ in)
            connector.client_chose(variant)
            if pool.config.mode == "transaction":
                await self._serve_transactions(pool, response, variant, greeting)
                return
            self._phase = PHASE_BORROWING
            server = await borrow_for_client(pool, self._refused, variant)
            assert isinstance(server, MySqlServerConnection)
            await self._serve_on(pool, response, server)

    async def _serve_greeted_on(self, pool: Pool, server: MySqlServerConnection) -> None:
        """The listener's only pool, in session mode, had an idle connection: the session
        holds it from before the greeting, whose thread id is then the server's own, as
        ``CONNECTION_ID()``, ``SHOW PROCESSLIST`` and ``KILL`` know it. It has the capabilities
        most of the pool's clients choose (``client_chose``); a client choosing others gets a
        connection of its own kind, and the first one is closed, so that the thread id the
        client was told names its session alone (``KILL`` of it is translated)."""
        connector = pool.connector
        assert isinstance(connector, MySqlConnector)
        try:
            response = await self._held_handshake(connector.greeting or FALLBACK_GREETING, server)
        except BaseException:
            give_back(pool, server, reusable=True)  # nothing of the client's reached it
            raise
        variant = response.capabilities & VARIANT_CAPABILITIES
        connector.client_chose(variant)
        if variant != server.variant:
            give_back(pool, server, reusable=False)
            if self.listener.register_key(server.thread_id, self):  # KILL of it: this session
                self._alias = server.thread_id
            self._phase = PHASE_BORROWING
            own_kind = await borrow_for_client(pool, self._refused, variant)
            assert isinstance(own_kind, MySqlServerConnection)
            server = own_kind
        await self._serve_on(pool, response, server)

    async def _held_handshake(self, greeting: Greeting, server: MySqlServerConnection) -> HandshakeResponse41:
        """The handshake while ``server`` waits for the client: bounded, as the server's own."""
        try:
            async with asyncio.timeout(HELD_HANDSHAKE_TIMEOUT):
                return await self._handshake(greeting, server.thread_id)
        except TimeoutError:
            message = f"Bad handshake: no handshake response within {HELD_HANDSHAKE_TIMEOUT:g} s"
            raise ClientError(c.ER_HANDSHAKE_ERROR, message, "08S01") from None

    async def _handshake(self, greeting: Greeting, connection_id: int) -> HandshakeResponse41:
        """Our greeting, then the client's handshake response (refused if it asks for TLS)."""
        security = self.security
        nonce = native_nonce()
        hello = HandshakeV10(
            server_version=greeting.server_version,
            connection_id=connection_id & 0xFFFFFFFF,
            auth_plugin_data=nonce,
            capabilities=security.greeting_capabilities(OFFERED_CAPABILITIES & greeting.capabilities),
            character_set=greeting.character_set,
            status_flags=greeting.status_flags,
            auth_plugin_name=security.plugin,
        )
        self._sequence = 0
        self._send(hello.encode())
        self._phase = PHASE_HANDSHAKE
        # A handshake response is a few hundred bytes; do not buffer more for a stranger.
        self.reader.max_payload_size = HANDSHAKE_LIMIT
        packet = await self.endpoint.receive(self.reader.next_event)
        self._sequence = (packet.last_sequence_id + 1) % 256
        if packet.sequence_id != 1:
            raise ClientError(c.ER_NET_PACKETS_OUT_OF_ORDER, "Got packets out of order", "08S01")
        try:
            packet = await security.handshake_response(packet)  # (TLS first, after an SSLRequest)
            self._sequence = (packet.last_sequence_id + 1) % 256
            response = HandshakeResponse41.decode(packet.payload)
            await security.authenticate(response, nonce, self._send, self._receive_login)
        except LoginError as exc:
            raise ClientError(exc.packet.code, exc.packet.message, exc.packet.sql_state) from None
        self.reader.max_payload_size = MAX_PACKET_SIZE
        return response

    async def _receive_login(self) -> bytes:
        """The client's next packet during authentication (its answer to our last one)."""
        packet = await self.endpoint.receive(self.reader.next_event)
        self._sequence = (packet.last_sequence_id + 1) % 256
        return packet.payload

    async def _serve_on(
        self, pool: Pool, response: HandshakeResponse41, server: MySqlServerConnection
    ) -> None:
        self.server = server
        self._phase = PHASE_LOGIN
        try:
            await self._apply_character_set(server, response.character_set)
            await self._select_schema(pool, server, response.database)
        except BaseException as exc:
            self.server = None
            give_back(pool, server, reusable=isinstance(exc, ClientError))  # (a refusal leaves it intact)
            raise
        if self.closing is not None:
            self._say_goodbye()  # the answer to the login, as a server shutting down gives
            self.server = None
            give_back(pool, server, reusable=True)
            return
        self._phase = PHASE_RELAY
        self._send(OkPacket(0, 0, server.status_flags, 0).encode())
        pool.metrics.clients_accepted += 1
        log.debug(
            'pool "%s": client %s (id %d) attached to %r',
            pool.name,
            self.peer,
            self.connection_id,
            server,
        )
        assert self.meter is not None
        self._relay = MySqlSessionRelay(self, pool, server, self.meter)
        try:
            reason = await self._relay.run()
        finally:
            self.server = None
        if reason is EndReason.GOODBYE:
            await await_next_request(self.endpoint)
            # The answer to the client's next command (sequence 1), sent or not yet. MariaDB
            # sends it unasked with sequence 0, which drivers such as PyMySQL then report as a
            # lost connection instead of the error.
            self._sequence = 1
            self._say_goodbye()

    async def _serve_transactions(
        self, pool: Pool, response: HandshakeResponse41, variant: int, greeting: Greeting
    ) -> None:
        """Transaction mode: logged in without a server connection (the client's character set
        and schema travel with it, onto whichever connection serves each transaction)."""
        schema = response.database
        if not schema or schema == pool.name or schema == pool.config.database:
            schema = None  # the connections' own (the pool's database)
        else:
            await self._check_schema(pool, schema, variant)
        self._phase = PHASE_RELAY
        if self.closing is not None:
            self._say_goodbye()
            return
        assert self.meter is not None
        relay = MySqlTransactionRelay(
            self,
            self.endpoint,
            pool,
            self.meter,
            variant,
            response.character_set,
            schema,
            greeting.character_set,
            bool(response.capabilities & c.CLIENT_MULTI_STATEMENTS),
        )
        self._transactions = relay
        self._send(OkPacket(0, 0, greeting.status_flags, 0).encode())
        pool.metrics.clients_accepted += 1
        try:
            reason = await relay.relay()
        finally:
            self._transactions = None
            self.server = None
        if reason is EndReason.GOODBYE:
            await await_next_request(self.endpoint)
            self._sequence = 1
            self._say_goodbye()

    async def _check_schema(self, pool: Pool, schema: str, variant: int) -> None:
        """A schema the client names at login is checked there, as directly: one that is not the
        pool's gets the server's own refusal now, not at the client's first command. The
        connection that checked it stays in it (its server state says so) for whoever is next."""
        self._phase = PHASE_BORROWING
        server = await borrow_for_client(pool, self._refused, variant)
        assert isinstance(server, MySqlServerConnection)
        if schema == server.database:
            give_back(pool, server, reusable=True)
            return
        self._phase = PHASE_LOGIN
        try:
            errors = await server.commands(bytes([c.COM_INIT_DB]) + schema.encode())
        except BaseException:
            give_back(pool, server, reusable=False)
            raise
        if server.server_state is not None and not errors:
            server.server_state.schema = schema
        give_back(pool, server, reusable=True)
        if errors:
            raise ClientError(errors[0].code, errors[0].message, errors[0].sql_state)

    def _refused(self, exc: PoolError) -> ClientError:
        """What a client is told when no server connection can be had for its login."""
        if isinstance(exc, BorrowTimeout):
            return ClientError(c.ER_CON_COUNT_ERROR, str(exc), "08004")
        log.warning("client %s refused: %s", self.peer, exc)
        return ClientError(c.ER_UNKNOWN_ERROR, str(exc))

    async def _upstream_greeting(self, pool: Pool) -> Greeting:
        connector = pool.connector
        assert isinstance(connector, MySqlConnector)
        if connector.known_greeting() is None:  # (a method: no narrowing that outlives the await)
            # Learn the upstream's version and character set before the first greeting,
            # so drivers see the server they will talk to; the connection is kept pooled.
            # One client learns it; the others that came at once wait for that one.
            async with connector.learning:
                if connector.known_greeting() is None:
                    try:
                        server = await pool.borrow(connector.default_variant)
                    except PoolError as exc:
                        log.info('pool "%s": greeting without upstream details: %s', pool.name, exc)
                    else:
                        pool.release(server, reusable=True)
        return connector.greeting or FALLBACK_GREETING

    def _choose_pool(self, response: HandshakeResponse41) -> Pool:
        """A pool is an upstream account: a listener's only pool takes every client; among
        several, the client's user name picks one (a pool's name), then, as before, the schema
        (a pool's ``database``)."""
        pools = self.listener.pools
        if len(pools) == 1:
            return pools[0]
        named = [pool for pool in pools if pool.name == response.username]
        if named:
            return named[0]
        schema = response.database
        if schema:
            pool = self.listener.pool_for(schema)
            if pool is None:
                self.listener.reject(REJECTED_UNKNOWN_DATABASE)
                raise ClientError(c.ER_BAD_DB_ERROR, f"Unknown database '{schema}'", "42000")
            return pool
        names = ", ".join(pool.name for pool in pools)
        self.listener.reject(REJECTED_UNKNOWN_DATABASE)
        raise ClientError(
            c.ER_NO_DB_ERROR,
            f"No database selected: rotaproxy picks the pool by user name, then by schema ({names})",
            "3D000",
        )

    async def _select_schema(self, pool: Pool, server: MySqlServerConnection, schema: str | None) -> None:
        """The client's handshake schema becomes its current one (COM_INIT_DB), unless the
        connection is there already (the pool's ``database``, where each reset puts it back)
        or the schema is the pool's name (how clients have picked pools: the pool's schema).
        A schema the account may not use gets the server's own error."""
        if not schema or schema == server.database or schema == pool.name:
            return
        errors = await server.commands(bytes([c.COM_INIT_DB]) + schema.encode())
        if errors:
            raise ClientError(errors[0].code, errors[0].message, errors[0].sql_state)

    async def _apply_character_set(self, server: MySqlServerConnection, collation_id: int) -> None:
        if collation_id == server.collation_id:
            return  # the common case: a reset connection already speaks the client's charset
        try:
            await server.set_collation(collation_id)
        except PoolError as exc:
            # A MySQL 8 collation MariaDB lacks (255 = utf8mb4_0900_ai_ci): same character set.
            log.debug("collation %d not known upstream (%s); using utf8mb4", collation_id, exc)
            await server.query("SET NAMES utf8mb4")
            server.collation_id = None

    # --- what the proxy answers itself -------------------------------------------------------
    def answers(self, payload: bytes) -> bool:
        """Answer a command the server must not get; True if it was one: COM_CHANGE_USER
        (refused) or a KILL of one of the proxy's connection ids (translated)."""
        command = payload[0]
        if command == c.COM_CHANGE_USER and self._transactions is None:  # (transaction mode: the core's)
            self._sequence = 1
            self._send(
                ErrPacket(
                    c.ER_NOT_SUPPORTED_YET,
                    "COM_CHANGE_USER is not supported by rotaproxy: connect again instead",
                ).encode()
            )
            return True
        if command == c.COM_PROCESS_KILL and len(payload) == 5:
            connection_id = int.from_bytes(payload[1:5], "little")
            query_only = False
        elif command == c.COM_QUERY and (match := KILL_STATEMENT.match(payload[1:])):
            connection_id = int(match.group(2))
            query_only = match.group(1) is not None
        else:
            return False
        if connection_id < FIRST_CONNECTION_ID and self.listener.session_for_key(connection_id) is None:
            if not self._between_sessions(connection_id):
                return False  # an upstream thread id: the server kills it (as the client knows it)
            # A pooled connection between two sessions is nobody's session: as directly, where
            # it would not exist, there is no such thread.
            self._sequence = 1
            self._send(ErrPacket(c.ER_NO_SUCH_THREAD, f"Unknown thread id: {connection_id}").encode())
            return True
        self._spawn(self._kill(connection_id, query_only))
        return True

    def _between_sessions(self, thread_id: int) -> bool:
        """Whether ``thread_id`` is a connection of this listener's pools that is no client's
        session: in session mode one no client holds; in transaction mode any but the one
        running this client's command (another client's transaction is never its to kill)."""
        for pool in self.listener.pools:
            transactions = pool.config.mode == "transaction"
            for connection in pool.connections() if transactions else pool.unheld():
                if isinstance(connection, MySqlServerConnection) and connection.thread_id == thread_id:
                    return not (transactions and connection is self.running_on)
        return False

    async def _kill(self, connection_id: int, query_only: bool) -> None:
        self._sequence = 1
        target = self.listener.session_for_key(connection_id)
        if not isinstance(target, MySqlClientSession):
            self._send(ErrPacket(c.ER_NO_SUCH_THREAD, f"Unknown thread id: {connection_id}").encode())
            return
        try:
            running = target.running_on
            if running is not None:
                async with asyncio.timeout(KILL_TIMEOUT):
                    await running.kill_query()
            if not query_only:
                target.endpoint.close()
        except Exception as exc:
            self._send(ErrPacket(c.ER_UNKNOWN_ERROR, f"KILL {connection_id} failed: {exc}").encode())
            return
        log.info(
            "client %s killed %s of client %s",
            self.peer,
            "the query" if query_only else "the connection",
            target.peer,
        )
        self._send(OkPacket(0, 0, self.server.status_flags if self.server else 0, 0).encode())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class MySqlSessionRelay(SessionRelay[MySqlServerConnection]):
    """Session mode for MySQL: client commands read whole (COM_QUIT, COM_CHANGE_USER and KILL
    are handled here), server bytes forwarded as they come while a tracker follows where
    each response ends."""

    def __init__(
        self, session: MySqlClientSession, pool: Pool, server: MySqlServerConnection, meter: ClientMeter
    ) -> None:
        super().__init__(session.endpoint, pool, server, meter, session.peer)
        self.session = session
        self.reader = session.reader
        self.upstream = server.endpoint
        self.tracker = ResponseTracker(server.capabilities, status_flags=server.status_flags)
        self.reader.max_payload_size = pool.config.max_client_message_size
        self.reader.limit_name = limits.MESSAGE_TOO_LARGE
        self.reusable_variant = True  # False once COM_SET_OPTION changed what the variant promises
        self.commands_pending = False  # a command was sent whose response has not fully arrived

    def from_client(self, data: bytes) -> EndReason | None:
        reader = self.reader
        reader.receive_data(data)
        while isinstance(packet := reader.next_event(), Packet):
            if (reason := self._command(packet)) is not None:
                return reason
        return None

    def _command(self, packet: Packet) -> EndReason | None:
        payload = packet.payload
        if packet.sequence_id == 0 and payload:
            command = payload[0]
            if command == c.COM_QUIT:
                return EndReason.CLIENT_QUIT
            if self.session.answers(payload):
                return None
            if command == c.COM_SET_OPTION:
                self.reusable_variant = False  # the connection no longer matches its variant
            self.tracker.send(packet)
            self.commands_pending = True
            self.metrics.queries += 1
        else:
            self.tracker.send(packet)
        data, _ = frame(payload, packet.sequence_id)
        self.upstream.write(data)
        return None

    def from_server(self, data: bytes) -> int:
        tracker = self.tracker
        tracker.receive_data(data)
        if self.commands_pending and not tracker.awaiting_response:
            self.commands_pending = False
            self.idle = not tracker.in_transaction
            return 1  # pipelined commands answered in one chunk count as one transaction here
        return 0

    def at_idle_point(self) -> bool:
        """No response outstanding, no half-received command, no transaction open."""
        tracker = self.tracker
        return tracker.at_safe_point and not tracker.in_transaction and len(self.reader) == 0

    def incomplete(self) -> bool:
        return self.reader.incomplete

    def too_large(self, exc: MessageTooLarge) -> bytes:
        return limit_error(limits.MESSAGE_TOO_LARGE, str(exc), exc.sequence_id)

    async def reusable_after(self, reason: EndReason) -> bool:
        server, tracker = self.server, self.tracker
        server.status_flags = tracker.status_flags
        if reason is EndReason.GOODBYE:
            return tracker.at_safe_point and self.reusable_variant
        if reason is EndReason.SERVER_CLOSED:
            return False
        safe = tracker.at_safe_point and len(self.reader) == 0
        client_left = reason is EndReason.CLIENT_CLOSED or reason is EndReason.CLIENT_QUIT
        if not safe and client_left and tracker.awaiting_response:
            log.info('pool "%s": client %s left mid-query; killing it on %r', server.pool, self.peer, server)
            try:
                async with asyncio.timeout(KILL_TIMEOUT):
                    await server.kill_query()
            except Exception as exc:
                log.warning("could not kill the abandoned query on %r: %s", server, exc)
            return False
        return safe and self.reusable_variant and client_left
