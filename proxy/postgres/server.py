"""PostgreSQL upstream connections: connect, TLS, log in, reset, liveness, cancel.

``PgConnector`` is the pool's connector for one pool; it opens ``PgServerConnection``s
under the credentials it is handed. Upstream errors keep their SQLSTATE so the pool and
the client session can tell an authentication failure from an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Hashable

from protocols.errors import ProtocolViolation
from protocols.postgres.auth import AuthenticationFailed, UpstreamAuthenticator
from protocols.postgres.framing import MessageReader
from protocols.postgres.messages import (
    SQLSTATE_INVALID_AUTHORIZATION,
    SQLSTATE_INVALID_PASSWORD,
    SSL_ACCEPTED,
    SSL_REQUEST_MESSAGE,
    STATUS_IDLE,
    TERMINATE_MESSAGE,
    AuthenticationRequest,
    BackendKeyData,
    BackendMessage,
    CancelRequest,
    ErrorResponse,
    ParameterStatus,
    RawMessage,
    ReadyForQuery,
    StartupMessage,
    decode_backend,
    query_message,
)
from protocols.postgres.server_state import ServerState
from proxy.config import PoolConfig
from proxy.core.endpoint import ConnectionClosed, Endpoint
from proxy.core.errors import PoolError, UpstreamLoginError
from proxy.core.upstream import Target, dial, start_tls, upstream_ssl_context
from proxy.core.upstream_connection import UpstreamConnection
from proxy.credentials.base import Credentials

log = logging.getLogger(__name__)

CANCEL_ON_EXIT_TIMEOUT = 2.0

# Backend messages only fetch_rows reads (the relay never decodes rows).
DATA_ROW = b"D"
_DATA_ROW_COUNT = struct.Struct("!h")
_DATA_ROW_LENGTH = struct.Struct("!i")


class UpstreamError(UpstreamLoginError):
    """The upstream server answered with an ErrorResponse while we logged in."""

    def __init__(self, pool: str, error: ErrorResponse) -> None:
        super().__init__(f'pool "{pool}": upstream refused the connection: {error.message} ({error.code})')
        self.error = error

    @property
    def is_auth_failure(self) -> bool:
        return self.error.code in (SQLSTATE_INVALID_PASSWORD, SQLSTATE_INVALID_AUTHORIZATION)


async def _negotiate_tls(endpoint: Endpoint, reader: MessageReader, target: Target) -> None:
    """Unless tls = disable: the SSLRequest exchange, then the TLS handshake."""
    if target.ssl_context is None:
        return
    endpoint.write(SSL_REQUEST_MESSAGE)
    answer = await endpoint.receive(lambda: reader.take_bytes(1))
    if answer != SSL_ACCEPTED:
        raise PoolError(f'pool "{target.pool.name}": upstream {target} does not accept TLS')
    if len(reader):
        # Bytes sent before the handshake would be trusted as if encrypted (CVE-2021-23222).
        raise ProtocolViolation("upstream sent unencrypted data after accepting TLS")
    await start_tls(endpoint, target)


class PgServerConnection(UpstreamConnection[MessageReader]):
    farewell = TERMINATE_MESSAGE

    def __init__(
        self,
        endpoint: Endpoint,
        reader: MessageReader,
        target: Target,
        pool: str,
        generation: int,
        username: str,
    ) -> None:
        super().__init__(endpoint, reader, target, pool, generation)
        self.username = username
        self.backend_key: BackendKeyData | None = None
        # Its settings, transaction status and (transaction mode) prepared statements.
        self.server_state = ServerState()

    def __repr__(self) -> str:
        pid = self.backend_key.process_id if self.backend_key else None
        return f"PgServerConnection({self.target}, user={self.username!r}, pid={pid}, gen={self.generation})"

    @property
    def parameters(self) -> dict[str, str]:
        return self.server_state.parameters

    @parameters.setter
    def parameters(self, parameters: dict[str, str]) -> None:
        self.server_state.parameters = parameters

    @property
    def transaction_status(self) -> bytes:
        return self.server_state.transaction_status

    @transaction_status.setter
    def transaction_status(self, status: bytes) -> None:
        self.server_state.transaction_status = status

    @property
    def backend_pid(self) -> int:
        return self.backend_key.process_id if self.backend_key else 0

    async def read_message(self) -> BackendMessage:
        raw = await self.endpoint.receive(self.reader.next_event)
        return decode_backend(raw)

    async def run_queries(self, *queries: str) -> list[ErrorResponse]:
        """Pipeline simple queries; read until each has its ReadyForQuery; return the errors."""
        self.endpoint.write(b"".join(query_message(sql) for sql in queries))
        errors: list[ErrorResponse] = []
        remaining = len(queries)
        while remaining:
            message = await self.read_message()
            if isinstance(message, ReadyForQuery):
                remaining -= 1
                self.transaction_status = message.status
            elif isinstance(message, ParameterStatus):
                self.parameters[message.name] = message.value
            elif isinstance(message, ErrorResponse) and not message.notice:
                errors.append(message)
        return errors

    @property
    def needs_reset(self) -> bool:
        # Transaction mode between unpinned clients: nothing session-scoped happened.
        return self.dirty or self.transaction_status != STATUS_IDLE

    async def reset(self) -> None:
        if not self.needs_reset:
            return
        self.dirty = False
        self.server_state.statements_dropped()  # DISCARD ALL drops them
        queries = ["DISCARD ALL"]
        if self.transaction_status != STATUS_IDLE:
            queries.insert(0, "ROLLBACK")
        errors = await self.run_queries(*queries)
        if errors or self.transaction_status != STATUS_IDLE:
            reason = errors[0].message if errors else "still inside a transaction"
            raise PoolError(f"reset failed: {reason}")

    async def check_alive(self) -> None:
        errors = await self.run_queries("")
        if errors:
            raise PoolError(f"liveness check failed: {errors[0].message}")

    async def fetch_rows(self, sql: str) -> list[tuple[str | None, ...]]:
        """Run one simple query and return its rows as text (admin work, e.g. rotation).

        Raises PoolError carrying the server's message if the query fails.
        """
        self.endpoint.write(query_message(sql))
        rows: list[tuple[str | None, ...]] = []
        error: ErrorResponse | None = None
        while True:
            message = await self.read_message()
            if isinstance(message, RawMessage) and message.type == DATA_ROW:
                rows.append(_decode_data_row(message.payload))
            elif isinstance(message, ReadyForQuery):
                self.transaction_status = message.status
                break
            elif isinstance(message, ParameterStatus):
                self.parameters[message.name] = message.value
            elif isinstance(message, ErrorResponse) and not message.notice and error is None:
                error = message
        if error is not None:
            raise PoolError(f"{error.message} ({error.code})")
        return rows

    async def cancel_abandoned(self, client: str) -> None:
        """A client left with a query running: stop it (best effort, bounded) before the
        connection is closed, so that a transaction it left half-done cannot commit later."""
        log.info('pool "%s": client %s left mid-query; cancelling it on %r', self.pool, client, self)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CANCEL_ON_EXIT_TIMEOUT):
                await self.cancel_query()

    async def cancel_query(self) -> None:
        """Ask the server to cancel what this backend runs now (a new connection, as libpq)."""
        key = self.backend_key
        if key is None:
            return
        self.interrupted = True

        async def send_cancel(endpoint: Endpoint) -> None:
            assert isinstance(endpoint.reader, MessageReader)
            await _negotiate_tls(endpoint, endpoint.reader, self.target)
            endpoint.write(CancelRequest(key.process_id, key.secret_key).encode())
            # The server answers a cancel by closing; waiting for that makes sure it was read.
            with contextlib.suppress(ConnectionClosed):
                await endpoint.wait_closed()

        await dial(self.target, MessageReader(), send_cancel)


class PgConnector:
    """Opens logged-in server connections for one pool."""

    default_variant: Hashable = None  # PostgreSQL connections come in one flavour

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.ssl_context = upstream_ssl_context(config)

    async def __call__(
        self, credentials: Credentials, generation: int, variant: Hashable = None
    ) -> PgServerConnection:
        target = Target.resolve(self.config, credentials, self.ssl_context, default_port=5432)
        # Before dialling: an RDS IAM token is signed for this host:port, and only over TLS
        # (_negotiate_tls fails the login if the server will not encrypt).
        password = await credentials.login_password(
            target.host, target.port, encrypted=target.ssl_context is not None
        )

        async def login(endpoint: Endpoint) -> PgServerConnection:
            assert isinstance(endpoint.reader, MessageReader)
            await _negotiate_tls(endpoint, endpoint.reader, target)
            connection = PgServerConnection(
                endpoint, endpoint.reader, target, self.config.name, generation, credentials.username
            )
            await self._login(connection, credentials.username, password)
            return connection

        return await dial(target, MessageReader(), login, (AuthenticationFailed,))

    async def _login(self, connection: PgServerConnection, username: str, password: str) -> None:
        startup = StartupMessage({"user": username, "database": connection.target.database})
        connection.endpoint.write(startup.encode())
        authenticator = UpstreamAuthenticator(username, password)
        while True:
            message = await connection.read_message()
            if isinstance(message, AuthenticationRequest):
                answer = authenticator.respond(message)
                if answer is not None:
                    connection.endpoint.write(answer)
            elif isinstance(message, ErrorResponse) and not message.notice:
                raise UpstreamError(self.config.name, message)
            elif isinstance(message, ParameterStatus):
                connection.parameters[message.name] = message.value
            elif isinstance(message, BackendKeyData):
                connection.backend_key = message
            elif isinstance(message, ReadyForQuery):
                if not authenticator.done:
                    raise ProtocolViolation("upstream sent ReadyForQuery before authentication")
                connection.transaction_status = message.status
                return


def _decode_data_row(payload: bytes) -> tuple[str | None, ...]:
    """A DataRow in text format: int16 column count, then per column int32 length (-1 = NULL) + bytes."""
    try:
        (count,) = _DATA_ROW_COUNT.unpack_from(payload)
        offset = _DATA_ROW_COUNT.size
        values: list[str | None] = []
        for _ in range(count):
            (length,) = _DATA_ROW_LENGTH.unpack_from(payload, offset)
            offset += _DATA_ROW_LENGTH.size
            if length < 0:
                values.append(None)
                continue
            if offset + length > len(payload):
                raise ProtocolViolation("DataRow column runs past the message")
            values.append(payload[offset : offset + length].decode("utf-8", errors="replace"))
            offset += length
    except struct.error as exc:
        raise ProtocolViolation("truncated DataRow") from exc
    return tuple(values)
