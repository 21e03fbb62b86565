"""MySQL/MariaDB upstream connections: connect, TLS after the greeting, log in, reset, ping, kill.

``MySqlConnector`` opens ``MySqlServerConnection``s for one pool. The capability flags a
connection is opened with are its pool *variant*: the behavioural flags the client asked
for (multi-statements, found-rows, local infile, ...) on top of a fixed base, so the bytes
the server sends are exactly what that client expects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from dataclasses import dataclass
from typing import cast

from protocols.errors import ProtocolViolation
from protocols.mysql import constants as c
from protocols.mysql.auth import AuthenticationFailed, UpstreamAuthenticator, UpstreamAuthError
from protocols.mysql.messages import (
    EofPacket,
    ErrPacket,
    HandshakeResponse41,
    HandshakeV10,
    OkPacket,
    SslRequest,
    is_eof_packet,
)
from protocols.mysql.packets import (
    LENENC_NULL,
    PacketReader,
    decode_lenenc_int,
    decode_lenenc_str,
    frame,
)
from protocols.mysql.pooling import MySqlServerState
from protocols.mysql.session_track import TRACK_EVERYTHING
from proxy.config import PoolConfig
from proxy.core.endpoint import Endpoint
from proxy.core.errors import PoolError, UpstreamLoginError
from proxy.core.upstream import Target, dial, start_tls, upstream_ssl_context
from proxy.core.upstream_connection import UpstreamConnection
from proxy.credentials.base import Credentials

log = logging.getLogger(__name__)

# Flags every upstream connection has: they fix the wire format the proxy relays. Flags that
# change the format (DEPRECATE_EOF, SESSION_TRACK, QUERY_ATTRIBUTES, MariaDB's extended
# metadata, compression) are never negotiated, on either side.
BASE_CAPABILITIES = (
    c.CLIENT_LONG_PASSWORD
    | c.CLIENT_LONG_FLAG
    | c.CLIENT_CONNECT_WITH_DB
    | c.CLIENT_PROTOCOL_41
    | c.CLIENT_TRANSACTIONS
    | c.CLIENT_SECURE_CONNECTION
    | c.CLIENT_PLUGIN_AUTH
    | c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | c.CLIENT_CONNECT_ATTRS
)
# Behavioural flags a client may choose; they become the connection's variant.
VARIANT_CAPABILITIES = (
    c.CLIENT_FOUND_ROWS
    | c.CLIENT_NO_SCHEMA
    | c.CLIENT_ODBC
    | c.CLIENT_LOCAL_FILES
    | c.CLIENT_IGNORE_SPACE
    | c.CLIENT_INTERACTIVE
    | c.CLIENT_MULTI_STATEMENTS
    | c.CLIENT_MULTI_RESULTS
    | c.CLIENT_PS_MULTI_RESULTS
)
# Transaction mode: clients share connections, so only the flags that change what the
# server does with a client's statements tell connections apart. Multi-statements is switched
# per client (COM_SET_OPTION); multi-results are always on (a client that did not ask for them
# gets more than one result only from a CALL of a procedure that returns several).
TRANSACTION_ALWAYS = c.CLIENT_MULTI_RESULTS | c.CLIENT_PS_MULTI_RESULTS
TRANSACTION_VARIANTS = VARIANT_CAPABILITIES & ~(c.CLIENT_MULTI_STATEMENTS | TRANSACTION_ALWAYS)
# What the proxy offers its own clients in its greeting.
OFFERED_CAPABILITIES = BASE_CAPABILITIES | VARIANT_CAPABILITIES
DEFAULT_VARIANT = c.CLIENT_MULTI_RESULTS | c.CLIENT_PS_MULTI_RESULTS
MAX_PACKET_SIZE = 1 << 30
VARIANT_MEMORY = 1000  # logins of one variant after which every count is halved
CONNECT_ATTRIBUTES = {"_client_name": "rotaproxy", "program_name": "rotaproxy"}
QUIT_PACKET = frame(bytes([c.COM_QUIT]), 0)[0]  # what a connection says before it closes


def collation_query(collation_id: int) -> str:
    return (
        f"SET character_set_client = {collation_id}, character_set_results = {collation_id}, "
        f"character_set_connection = {collation_id}, collation_connection = {collation_id}"
    )


class UpstreamError(UpstreamLoginError):
    """The upstream answered with an ERR packet while we logged in."""

    def __init__(self, pool: str, error: ErrPacket) -> None:
        super().__init__(f'pool "{pool}": upstream refused the connection: {error.message} ({error.code})')
        self.error = error

    @property
    def is_auth_failure(self) -> bool:
        return self.error.code == c.ER_ACCESS_DENIED_ERROR


@dataclass(frozen=True, slots=True)
class Greeting:
    """What the proxy's own greeting repeats from the upstream's."""

    server_version: str
    character_set: int
    status_flags: int
    capabilities: int


class MySqlServerConnection(UpstreamConnection[PacketReader]):
    farewell = QUIT_PACKET

    def __init__(
        self,
        endpoint: Endpoint,
        reader: PacketReader,
        target: Target,
        pool: str,
        generation: int,
        capabilities: int,
        greeting: HandshakeV10,
        connector: MySqlConnector,
        credentials: Credentials,
    ) -> None:
        super().__init__(endpoint, reader, target, pool, generation)
        self.capabilities = capabilities
        self.thread_id = greeting.connection_id
        self.status_flags = greeting.status_flags
        self.database = target.database
        self.login_collation_id = greeting.character_set  # what our handshake response asked for
        self.collation_id: int | None = self.login_collation_id
        self._connector = connector
        self._credentials = credentials
        # Transaction mode: the session as the server reports it (tracking is on), which the
        # pooling core of whichever client is attached reads and updates.
        self.server_state: MySqlServerState | None = None
        self.rollback_only = False  # (transaction mode) the reset due is a ROLLBACK, nothing more

    def __repr__(self) -> str:
        return f"MySqlServerConnection({self.target}, thread={self.thread_id}, gen={self.generation})"

    @property
    def in_transaction(self) -> bool:
        return bool(self.status_flags & c.SERVER_STATUS_IN_TRANS)

    @property
    def needs_reset(self) -> bool:
        """Session mode resets every released connection; transaction mode only one a client
        left dirty (its session otherwise moves with the client)."""
        return self.server_state is None or self.dirty

    async def track_sessions(self) -> None:
        """Transaction mode: turn on session tracking, and start the server state from here."""
        await self.query(TRACK_EVERYTHING)
        self.server_state = MySqlServerState(
            self.capabilities, self.login_collation_id, self.database or None, self.status_flags
        )

    async def commands(self, *payloads: bytes) -> list[ErrPacket]:
        """Pipeline commands each answered by one OK or ERR; return the errors, in order."""
        self.endpoint.write(b"".join(frame(payload, 0)[0] for payload in payloads))
        errors = []
        for _ in payloads:
            packet = await self.endpoint.receive(self.reader.next_event)
            answer = packet.payload
            if answer[:1] == bytes([c.OK]):
                self.status_flags = OkPacket.decode(answer, self.capabilities).status_flags
            elif answer[:1] == bytes([c.ERR]):
                errors.append(ErrPacket.decode(answer))
            else:
                raise ProtocolViolation(f"expected OK or ERR, got packet type {answer[:1].hex()}")
        return errors

    async def query(self, sql: str) -> None:
        """A statement that returns no rows (SET, ROLLBACK, KILL ...); raise on ERR."""
        errors = await self.commands(bytes([c.COM_QUERY]) + sql.encode())
        if errors:
            raise PoolError(f"{errors[0].message} ({errors[0].code})")

    async def set_collation(self, collation_id: int) -> None:
        """SET NAMES by number (numeric values name a collation id, as in the handshake)."""
        await self.query(collation_query(collation_id))
        self.collation_id = collation_id

    async def reset(self) -> None:
        if self.server_state is not None and self.rollback_only:
            # Transaction mode: a client left only a transaction open (its session moves with
            # it, and the next client's is brought): rolling it back is all the reset there is.
            self.rollback_only = False
            await self.query("ROLLBACK")
            self.server_state.status_flags = self.status_flags
            self.server_state.autocommit_open = False
            self.dirty = False
            return
        # One round trip: the server runs pipelined commands in order.
        # (Transaction mode follows the status in server_state, not here: roll back anyway.)
        rollback = self.in_transaction or self.server_state is not None
        commands = [bytes([c.COM_QUERY]) + b"ROLLBACK"] if rollback else []
        commands.append(bytes([c.COM_RESET_CONNECTION]))
        commands.append(bytes([c.COM_QUERY]) + collation_query(self.login_collation_id).encode())
        if self.database:
            commands.append(bytes([c.COM_INIT_DB]) + self.database.encode())
        if self.server_state is not None:
            commands.append(bytes([c.COM_QUERY]) + TRACK_EVERYTHING.encode())
        errors = await self.commands(*commands)
        if errors:
            raise PoolError(f"reset failed: {errors[0].message} ({errors[0].code})")
        self.collation_id = self.login_collation_id
        if self.server_state is not None:
            self.server_state = MySqlServerState(
                self.capabilities, self.login_collation_id, self.database or None, self.status_flags
            )
            self.dirty = False

    async def check_alive(self) -> None:
        errors = await self.commands(bytes([c.COM_PING]))
        if errors:
            raise PoolError(f"ping failed: {errors[0].message}")

    async def fetch_rows(self, sql: str) -> list[tuple[str | None, ...]]:
        """Run one statement with the text protocol and return its rows (admin work, e.g. rotation).

        Reads: column count, column definitions, EOF, rows (length-encoded strings, 0xFB =
        NULL), EOF or ERR; a statement without a result set answers OK and gives no rows.
        Raises PoolError carrying the server's message on ERR.
        """
        self.endpoint.write(frame(bytes([c.COM_QUERY]) + sql.encode(), 0)[0])
        rows: list[tuple[str | None, ...]] = []
        while True:
            payload = (await self.endpoint.receive(self.reader.next_event)).payload
            if payload[:1] == bytes([c.ERR]):
                error = ErrPacket.decode(payload)
                raise PoolError(f"{error.message} ({error.code})")
            if payload[:1] == bytes([c.OK]):
                self.status_flags = OkPacket.decode(payload, self.capabilities).status_flags
            else:
                columns, _ = decode_lenenc_int(payload, 0)
                if columns is None:  # 0xFB: the server asks for a LOCAL INFILE upload
                    raise ProtocolViolation("fetch_rows got a LOCAL INFILE request")
                for _ in range(columns):  # column definitions: not needed for text values
                    await self.endpoint.receive(self.reader.next_event)
                if not is_eof_packet((await self.endpoint.receive(self.reader.next_event)).payload):
                    raise ProtocolViolation("expected EOF after the column definitions")
                while True:
                    payload = (await self.endpoint.receive(self.reader.next_event)).payload
                    if payload[:1] == bytes([c.ERR]):
                        error = ErrPacket.decode(payload)
                        raise PoolError(f"{error.message} ({error.code})")
                    if is_eof_packet(payload):
                        self.status_flags = EofPacket.decode(payload).status_flags
                        break
                    rows.append(_decode_text_row(payload, columns))
            if not self.status_flags & c.SERVER_MORE_RESULTS_EXISTS:
                return rows

    async def kill_query(self) -> None:
        """Stop what this connection's thread runs, from a side connection (as the mysql CLI)."""
        side = await self._connector(self._credentials, self.generation, self.variant)
        try:
            await side.query(f"KILL QUERY {int(self.thread_id)}")
        finally:
            side.close()


class MySqlConnector:
    """Opens logged-in server connections for one pool; remembers the upstream's greeting."""

    default_variant: Hashable = DEFAULT_VARIANT

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        if config.mode == "transaction":
            self.default_variant = 0  # (what most clients' flags come to: TRANSACTION_VARIANTS)
        self.ssl_context = upstream_ssl_context(config)
        self.greeting: Greeting | None = None
        self.learning = asyncio.Lock()  # held by the client that learns the greeting
        self._variant_counts: dict[Hashable, int] = {}

    def known_greeting(self) -> Greeting | None:
        """The upstream's greeting, once a login learned it."""
        return self.greeting

    def client_chose(self, variant: Hashable) -> None:
        """A client logged in with ``variant``: the pool warms up (and a one-pool listener
        greets with) what most of its recent clients chose."""
        counts = self._variant_counts
        counts[variant] = counts.get(variant, 0) + 1
        if counts[variant] > counts.get(self.default_variant, 0):
            self.default_variant = variant
        if counts[variant] >= VARIANT_MEMORY:  # recent clients count, not those of last week
            self._variant_counts = {each: count // 2 for each, count in counts.items() if count > 1}

    async def __call__(
        self, credentials: Credentials, generation: int, variant: Hashable = DEFAULT_VARIANT
    ) -> MySqlServerConnection:
        target = Target.resolve(self.config, credentials, self.ssl_context, default_port=3306)
        reader = PacketReader(MAX_PACKET_SIZE)
        # Before dialling: an RDS IAM token is signed for this host:port, and only over TLS
        # (_login fails if the server will not encrypt; the token then goes as
        # mysql_clear_password, or as any password plugin the server asks for).
        password = await credentials.login_password(
            target.host, target.port, encrypted=target.ssl_context is not None
        )

        async def login(endpoint: Endpoint) -> MySqlServerConnection:
            try:
                return await self._login(endpoint, reader, target, credentials, password, generation, variant)
            except UpstreamAuthError as exc:
                raise UpstreamError(self.config.name, exc.error) from None

        return await dial(target, reader, login, (AuthenticationFailed,))

    async def _login(
        self,
        endpoint: Endpoint,
        reader: PacketReader,
        target: Target,
        credentials: Credentials,
        password: str,
        generation: int,
        variant: Hashable,
    ) -> MySqlServerConnection:
        first = await endpoint.receive(reader.next_event)
        if first.payload[:1] == bytes([c.ERR]):
            raise UpstreamAuthError(ErrPacket.decode(first.payload))
        greeting = HandshakeV10.decode(first.payload)
        wanted = BASE_CAPABILITIES | (cast(int, variant) if variant is not None else DEFAULT_VARIANT)
        if self.config.mode == "transaction":
            # The session moves with its client: follow it. Multi-results always (clients that
            # share a connection differ in them; see TRANSACTION_VARIANTS).
            wanted |= c.CLIENT_SESSION_TRACK | TRANSACTION_ALWAYS
        capabilities = wanted & greeting.capabilities
        # MariaDB clears CLIENT_LONG_PASSWORD (its "CLIENT_MYSQL" bit) to announce its
        # extended capabilities; connect attributes are optional.
        required = BASE_CAPABILITIES & ~(c.CLIENT_CONNECT_ATTRS | c.CLIENT_LONG_PASSWORD)
        missing = required & ~greeting.capabilities
        if missing:
            raise ProtocolViolation(f"upstream lacks required capabilities {missing:#x}")
        sequence = first.last_sequence_id + 1
        if target.ssl_context is not None:
            if not greeting.capabilities & c.CLIENT_SSL:
                raise PoolError(
                    f'pool "{self.config.name}": upstream {target.host}:{target.port} does not accept TLS'
                )
            capabilities |= c.CLIENT_SSL
            request = SslRequest(capabilities, MAX_PACKET_SIZE, greeting.character_set)
            data, sequence = frame(request.encode(), sequence)
            endpoint.write(data)
            await start_tls(endpoint, target)
        authenticator = UpstreamAuthenticator(
            credentials.username, password, secure_transport=target.ssl_context is not None
        )
        plugin, auth_response = authenticator.first_response(
            greeting.auth_plugin_name, greeting.auth_plugin_data
        )
        response = HandshakeResponse41(
            capabilities=capabilities,
            max_packet_size=MAX_PACKET_SIZE,
            character_set=greeting.character_set,
            username=credentials.username,
            auth_response=auth_response,
            database=target.database or None,
            auth_plugin_name=plugin,
            connect_attributes=CONNECT_ATTRIBUTES,
        )
        data, sequence = frame(response.encode(), sequence)
        endpoint.write(data)
        while not authenticator.done:
            packet = await endpoint.receive(reader.next_event)
            answer = authenticator.respond(packet.payload)
            if answer is not None:
                data, _ = frame(answer, packet.last_sequence_id + 1)
                endpoint.write(data)
        self.greeting = Greeting(
            greeting.server_version, greeting.character_set, greeting.status_flags, greeting.capabilities
        )
        connection = MySqlServerConnection(
            endpoint, reader, target, self.config.name, generation, capabilities, greeting, self, credentials
        )
        if self.config.mode == "transaction":
            if not capabilities & c.CLIENT_SESSION_TRACK:
                raise PoolError(
                    f'pool "{self.config.name}": transaction mode needs session tracking '
                    "(MySQL 5.7 / MariaDB 10.2 or newer)"
                )
            await connection.track_sessions()
        return connection


def _decode_text_row(payload: bytes, columns: int) -> tuple[str | None, ...]:
    """One text-protocol row: a length-encoded string per column, 0xFB for NULL."""
    values: list[str | None] = []
    offset = 0
    for _ in range(columns):
        if offset < len(payload) and payload[offset] == LENENC_NULL:
            values.append(None)
            offset += 1
            continue
        value, offset = decode_lenenc_str(payload, offset)
        values.append(value.decode("utf-8", errors="replace"))
    if offset != len(payload):
        raise ProtocolViolation("trailing bytes in a text row")
    return tuple(values)
