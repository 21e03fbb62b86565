"""A PostgreSQL client session: passwordless startup, pool selection, session-mode relay.

Theory of operation: the client's startup packet picks a pool by database name; the session
borrows a server connection, replays the client's startup parameters on it with
``set_config`` (so the server normalises them exactly as at login; skipped when the pool has
seen them answered and the connection already reports that answer, see ``already_set``), and
only then tells the client it is authenticated, replaying the server's ParameterStatus values and the server's
real backend PID. From there bytes are relayed both ways while trackers watch the message
headers; when the client leaves, the connection goes back to the pool (and is reset) only
if it sits at a safe point, otherwise it is cancelled and closed so that nothing a client
left half-done can reach the next one.

Shutdown and reload ask a session to end gracefully (``close_gracefully``): before it holds
anything it is told FATAL 57P01 at once; in the relay it is told at the next point where the
server owes it nothing and no transaction is open, never in the middle of a result.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets

from protocols.endings import EndReason
from protocols.errors import MessageTooLarge, ProtocolViolation
from protocols.postgres.framing import StartupReader
from protocols.postgres.messages import (
    AUTH_OK_MESSAGE,
    SQLSTATE_ADMIN_SHUTDOWN,
    SQLSTATE_CANNOT_CONNECT,
    SQLSTATE_CONNECTION_FAILURE,
    SQLSTATE_FEATURE_NOT_SUPPORTED,
    SQLSTATE_INVALID_AUTHORIZATION,
    SQLSTATE_INVALID_CATALOG_NAME,
    SQLSTATE_PROTOCOL_VIOLATION,
    SQLSTATE_TOO_MANY_CONNECTIONS,
    SSL_REFUSED,
    STATUS_IDLE,
    BackendKeyData,
    CancelRequest,
    ErrorResponse,
    GSSENCRequest,
    NegotiateProtocolVersion,
    ParameterStatus,
    ReadyForQuery,
    SSLRequest,
    StartupMessage,
)
from protocols.postgres.tracker import BackendTracker, FrontendTracker, at_safe_point
from proxy.core import limits
from proxy.core.counters import REJECTED_CLIENT, REJECTED_UNKNOWN_DATABASE, ClientMeter
from proxy.core.endpoint import ConnectionClosed, Endpoint
from proxy.core.errors import BorrowTimeout, PoolError
from proxy.core.relay import await_next_request
from proxy.engine import SessionHost
from proxy.pool.known_logins import KnownLogins
from proxy.pool.pool import Pool
from proxy.postgres.client_auth import DIRECT_TLS, PgClientSecurity
from proxy.postgres.limits import limit_error, sqlstate
from proxy.postgres.server import PgServerConnection
from proxy.postgres.settings import ClientError, session_settings, set_config_query
from proxy.postgres.transaction import TransactionRelay
from proxy.session_mode import SessionRelay, borrow_for_client

log = logging.getLogger(__name__)

# Where a session is, for close_gracefully: in the first two nothing is held and nothing of
# the client's is running, so the session can be told goodbye and stopped at once.
PHASE_STARTUP = "startup"  # reading the startup packet
PHASE_BORROWING = "borrowing"  # waiting for the server connection its login needs
PHASE_LOGIN = "login"  # applying the client's settings on that connection
PHASE_RELAY = "relay"


class PgClientSession:
    def __init__(self, endpoint: Endpoint, listener: SessionHost) -> None:
        assert isinstance(endpoint.reader, StartupReader)
        self.endpoint = endpoint
        self.reader = endpoint.reader
        self.listener = listener
        self.server: PgServerConnection | None = None
        self.cancel_key: tuple[int, int] | None = None
        self.pool: Pool | None = None
        self.meter: ClientMeter | None = None  # set once the pool is chosen; relays report into it
        peer = endpoint.transport.get_extra_info("peername") if endpoint.transport else None
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "local"
        self.closing: str | None = None  # why, once asked to end at the next idle point
        self.security = PgClientSecurity(
            endpoint, self.reader, listener.access, self.peer, listener.reject
        )  # TLS, login
        self._phase = PHASE_STARTUP
        self._task: asyncio.Task[None] | None = None
        # Once logged in, one of the two serves the client.
        self._transaction_relay: TransactionRelay | None = None
        self._session_relay: PgSessionRelay | None = None

    def __repr__(self) -> str:
        return f"PgClientSession(peer={self.peer}, pool={self.pool.name if self.pool else None})"

    # --- shutdown and reload ---------------------------------------------------------------
    def goodbye_message(self) -> str:
        assert self.closing is not None
        prefix = f'pool "{self.pool.name}": ' if self.pool is not None else ""
        return f"{prefix}terminating connection: {self.closing}"

    def say_goodbye(self) -> None:
        """FATAL 57P01 (admin_shutdown), what PostgreSQL itself says on a fast shutdown."""
        self._fatal(SQLSTATE_ADMIN_SHUTDOWN, self.goodbye_message())

    async def say_goodbye_at_idle(self, pending: int = 0) -> None:
        """The goodbye of a session that reached an idle point: as the answer to the client's
        next request when it comes soon (see ``await_next_request``)."""
        await await_next_request(self.endpoint, pending)
        self.say_goodbye()

    def close_gracefully(self, why: str) -> None:
        self.closing = why
        if self._phase in (PHASE_STARTUP, PHASE_BORROWING):
            self.say_goodbye()
            if self._task is not None:
                self._task.cancel()
        elif self._phase == PHASE_RELAY:
            if self._transaction_relay is not None:
                self._transaction_relay.close_gracefully()
            elif self._session_relay is not None:
                self._session_relay.close_gracefully()
        # PHASE_LOGIN: looked at once the client's settings are on the connection.

    # --- client limits (proxy/client_watch.py) -----------------------------------------------
    def waiting_on_client(self) -> int:
        if self._phase == PHASE_STARTUP:
            return limits.LOGGING_IN
        relay = self._transaction_relay or self._session_relay
        if self._phase == PHASE_RELAY and relay is not None:
            return relay.waiting_on_client()
        return limits.BUSY

    def end_for_limit(self, limit: str, message: str) -> None:
        self.endpoint.write(limit_error(limit, message))
        self.endpoint.close()  # a relay sees the client gone and gives its connection back
        if self._phase in (PHASE_STARTUP, PHASE_BORROWING) and self._task is not None:
            self._task.cancel()

    def moved_to(self, pool: Pool) -> None:
        """Transaction mode: a reload replaced the client's pool and the client moved on to
        ``pool``; the goodbye it was due is off."""
        self.pool = pool
        self.closing = None
        self.listener.session_changed()

    async def run(self) -> None:
        self._task = asyncio.current_task()
        try:
            startup = await self._read_startup()
            if startup is not None:
                await self._serve(startup)
        except ClientError as refused:  # (a name per type: mypyc types one name once)
            self._fatal(refused.code, str(refused))
        except ProtocolViolation as exc:
            log.info("client %s broke the protocol: %s", self.peer, exc)
            self._fatal(SQLSTATE_PROTOCOL_VIOLATION, f"invalid message from client: {exc}")
        except ConnectionClosed:
            pass
        finally:
            self.endpoint.close()

    def _fatal(self, code: str, message: str) -> None:
        self.endpoint.write(ErrorResponse.build("FATAL", code, message).encode())

    async def _read_startup(self) -> StartupMessage | None:
        while True:
            event = await self.endpoint.receive(self.security.next_event)
            if isinstance(event, SSLRequest | GSSENCRequest):
                if len(self.reader):
                    raise ProtocolViolation("data sent after an encryption request before the answer")
                if isinstance(event, SSLRequest):
                    await self.security.ssl_request()  # S and TLS where offered, else N
                else:
                    self.endpoint.write(SSL_REFUSED)
            elif event is DIRECT_TLS:
                await self.security.direct_tls()
            elif isinstance(event, CancelRequest):
                await self._forward_cancel(event)
                return None
            else:
                assert isinstance(event, StartupMessage)
                self.security.startup()
                return event

    async def _serve(self, startup: StartupMessage) -> None:
        parameters = startup.parameters
        if startup.minor > 0 or any(name.startswith("_pq_.") for name in parameters):
            unknown = tuple(name for name in parameters if name.startswith("_pq_."))
            self.endpoint.write(NegotiateProtocolVersion(0, unknown).encode())
        if "replication" in parameters and parameters["replication"].lower() not in (
            "false",
            "off",
            "0",
            "no",
        ):
            raise ClientError(
                SQLSTATE_FEATURE_NOT_SUPPORTED,
                "replication connections are not supported by rotaproxy",
            )
        user = parameters.get("user")
        if not user:
            raise ClientError(
                SQLSTATE_INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            )
        await self.security.authenticate(user)  # (trust, a password, a certificate)
        database = parameters.get("database") or user
        pool = self.listener.pool_for(database)
        if pool is None:
            self.listener.reject(REJECTED_UNKNOWN_DATABASE)
            raise ClientError(SQLSTATE_INVALID_CATALOG_NAME, f'database "{database}" does not exist')
        refusal = self.listener.admit(pool, self.endpoint)  # [pool.clients], the pool's client limit
        if refusal is not None:
            raise ClientError(sqlstate(refusal[0]), refusal[1])
        self.pool = pool
        with pool.metrics.client() as self.meter:
            await self._serve_on(pool, parameters, user)

    async def _serve_on(self, pool: Pool, parameters: dict[str, str], user: str) -> None:
        settings = session_settings(parameters)
        transaction_mode = pool.config.mode == "transaction"
        if transaction_mode and pool.open_connections:
            known = pool.known_logins.answer(pool.generation, settings)
            if known is not None:
                # Answered as the server answered this login before: no connection needed.
                await self._serve_transactions(pool, known)
                return
        self._phase = PHASE_BORROWING
        server = await borrow_for_client(pool, self._refused)
        assert isinstance(server, PgServerConnection)
        self._phase = PHASE_LOGIN
        server.dirty = True  # the client's settings and whatever it does stay on it: reset later
        try:
            if transaction_mode or not already_set(server, settings, pool.known_logins):
                parameters = await self._apply_settings(server, settings)
                pool.known_logins.remember(server.generation, settings, parameters)
            else:
                parameters = dict(server.parameters)
        except BaseException as exc:
            if isinstance(exc, ClientError):
                pool.metrics.reject(REJECTED_CLIENT)
            # Cut (cancelled) mid-query, the connection owes answers nobody will read.
            cut = isinstance(exc, asyncio.CancelledError)
            pool.release(server, reusable=not server.is_closed and not cut)
            raise
        if transaction_mode:
            pool.release(server, reusable=True)  # the client's settings travel with it from here on
            await self._serve_transactions(pool, parameters)
            return
        if not self._admitted(pool, transaction_mode=False):
            pool.release(server, reusable=not server.is_closed)
            return
        assert self.meter is not None
        try:
            self.server = server
            self._greet(server.parameters, server.transaction_status, server.backend_pid)
            log.debug('pool "%s": client %s (user %r) attached to %r', pool.name, self.peer, user, server)
            self._session_relay = PgSessionRelay(self.endpoint, pool, server, self.meter, self.peer)
            try:
                reason = await self._session_relay.run()
            finally:
                self.server = None
            if reason is EndReason.GOODBYE:
                await self.say_goodbye_at_idle()
        finally:
            self.listener.forget_key(self.cancel_key)

    async def _serve_transactions(self, pool: Pool, parameters: dict[str, str]) -> None:
        """Transaction mode, from the greeting on: ``parameters`` are what the client is told."""
        if not self._admitted(pool, transaction_mode=True):
            return
        assert self.meter is not None
        try:
            self._greet(parameters, STATUS_IDLE, process_id=secrets.randbits(31))
            self._transaction_relay = TransactionRelay(self, self.endpoint, pool, self.meter, parameters)
            await self._transaction_relay.run(closing=self.closing is not None)
        finally:
            self.listener.forget_key(self.cancel_key)

    def _admitted(self, pool: Pool, transaction_mode: bool) -> bool:
        """Let the logged-in client in, unless it was asked to end while logging in: then the
        login is refused as a server shutting down would (a transaction-mode client of a
        changed pool is let in, and moves to the new pool)."""
        if self.closing is not None and not (transaction_mode and pool.live_successor() is not None):
            self.say_goodbye()
            return False
        self._phase = PHASE_RELAY
        pool.metrics.clients_accepted += 1
        return True

    def _refused(self, exc: PoolError) -> ClientError:
        """What a client is told when no server connection can be had for its login."""
        if isinstance(exc, BorrowTimeout):
            return ClientError(SQLSTATE_TOO_MANY_CONNECTIONS, str(exc))
        log.warning("client %s refused: %s", self.peer, exc)
        return ClientError(SQLSTATE_CANNOT_CONNECT, str(exc))

    async def _apply_settings(self, server: PgServerConnection, settings: dict[str, str]) -> dict[str, str]:
        """The client's startup settings, normalised by the server; its ParameterStatus after."""
        if settings:
            errors = await server.run_queries(set_config_query(settings))
            if errors:
                raise ClientError(errors[0].code, errors[0].message)
        return dict(server.parameters)

    def _greet(self, parameters: dict[str, str], status: bytes, process_id: int) -> None:
        """AuthenticationOk, the server's settings, our cancel key, ReadyForQuery.

        Session mode hands out the real backend PID; transaction mode, whose client moves
        between backends, one of our own.
        """
        self.cancel_key = self._claim_cancel_key(process_id)
        self.endpoint.write(
            AUTH_OK_MESSAGE
            + parameter_statuses(tuple(parameters.items()))
            + BackendKeyData(*self.cancel_key).encode()
            + ReadyForQuery(status).encode()
        )

    def _claim_cancel_key(self, process_id: int) -> tuple[int, int]:
        """The key the client will cancel with: the server's real PID and a secret of ours."""
        while True:
            key = (process_id, secrets.randbits(32))
            if self.listener.register_key(key, self):
                return key

    async def _forward_cancel(self, request: CancelRequest) -> None:
        session = self.listener.session_for_key((request.process_id, request.secret_key))
        if not isinstance(session, PgClientSession):
            log.info("cancel request with an unknown key ignored")
            return
        try:
            await session.cancel_current_query()
        except Exception as exc:
            log.warning("cancel for client %s failed: %s", session.peer, exc)

    async def cancel_current_query(self) -> None:
        relay = self._transaction_relay
        server = relay.running_on if relay is not None else self.server
        if server is not None:
            await server.cancel_query()


class PgSessionRelay(SessionRelay[PgServerConnection]):
    """Session mode for PostgreSQL: trackers follow the message headers both ways."""

    def __init__(
        self, client: Endpoint, pool: Pool, server: PgServerConnection, meter: ClientMeter, peer: str
    ) -> None:
        super().__init__(client, pool, server, meter, peer)
        self.upstream = server.endpoint
        self.frontend = FrontendTracker(pool.config.max_client_message_size)
        self.backend = BackendTracker(server.parameters)

    def from_client(self, data: bytes) -> EndReason | None:
        frontend = self.frontend
        count = frontend.send(data)
        self.upstream.write(data if count == len(data) else data[:count])
        return EndReason.CLIENT_TERMINATED if frontend.terminated else None

    def from_server(self, data: bytes) -> int:
        backend = self.backend
        answered = backend.ready_count
        backend.receive_data(data)
        answered = backend.ready_count - answered
        if answered:  # a ReadyForQuery per answer
            self.metrics.queries += answered
            self.idle = backend.transaction_status == STATUS_IDLE
        return answered

    def at_idle_point(self) -> bool:
        backend = self.backend
        return backend.transaction_status == STATUS_IDLE and at_safe_point(self.frontend, backend)

    def incomplete(self) -> bool:
        return self.frontend.mid_message

    def too_large(self, exc: MessageTooLarge) -> bytes:
        return limit_error(limits.MESSAGE_TOO_LARGE, f"invalid message length: {exc}")

    def violation_error(self, exc: ProtocolViolation) -> bytes:
        message = f"invalid message from client: {exc}"
        return ErrorResponse.build("FATAL", SQLSTATE_PROTOCOL_VIOLATION, message).encode()

    async def reusable_after(self, reason: EndReason) -> bool:
        server, frontend, backend = self.server, self.frontend, self.backend
        server.transaction_status = backend.transaction_status
        server.parameters = backend.parameters
        safe = at_safe_point(frontend, backend)
        if reason is EndReason.GOODBYE:
            return safe
        if reason is EndReason.SERVER_CLOSED:
            if backend.at_boundary and not self.client.closed:
                message = f'pool "{server.pool}": the server connection was lost'
                self.client.write(ErrorResponse.build("FATAL", SQLSTATE_CONNECTION_FAILURE, message).encode())
            return False
        client_left = reason is EndReason.CLIENT_CLOSED or reason is EndReason.CLIENT_TERMINATED
        if not safe and client_left:
            await server.cancel_abandoned(self.peer)
            return False
        return safe and client_left


def already_set(server: PgServerConnection, settings: dict[str, str], known: KnownLogins) -> bool:
    """Session mode: whether the client's startup ``settings`` would change nothing on
    ``server``, so the login needs no round trip. True when the server answered such a login
    before (in this connection's generation) with exactly the parameters the connection
    reports now, and every setting is one it reports (what it does not report, it could
    not compare)."""
    if not settings:
        return True
    answer = known.answer(server.generation, settings)
    if answer is None or answer != server.parameters:
        return False
    reported = {name.lower() for name in answer}
    return all(name.lower() in reported for name in settings)


@functools.lru_cache(maxsize=256)
def parameter_statuses(parameters: tuple[tuple[str, str], ...]) -> bytes:
    """A greeting's ParameterStatus messages, encoded once per set of values: most logins of a
    pool are told the same few sets."""
    return b"".join(ParameterStatus(name, value).encode() for name, value in parameters)
