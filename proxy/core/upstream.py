"""What every engine shares when it dials an upstream: where to (``Target``), the TLS context
per pool, the TLS upgrade of a live connection, and one translation of connect and login
failures into pool errors that name the pool and the cause."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, cast

from protocols.errors import ProtocolViolation
from proxy.config import PoolConfig
from proxy.core.endpoint import ConnectionClosed, Endpoint, Reader
from proxy.core.errors import PoolError, UpstreamUnavailable
from proxy.credentials.base import Credentials

T = TypeVar("T")


def upstream_ssl_context(pool: PoolConfig) -> ssl.SSLContext | None:
    """The context for ``pool.tls``; ``None`` for "disable".

    require: encrypt, verify nothing; verify-ca: the chain must lead to the CA;
    verify-full: and the certificate must name the host we dialled (libpq's semantics).
    """
    if pool.tls == "disable":
        return None
    cafile = str(pool.tls_ca_file) if pool.tls_ca_file else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if pool.tls == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif pool.tls == "verify-ca":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream database as a pool reaches it."""

    host: str
    port: int
    database: str
    ssl_context: ssl.SSLContext | None
    pool: PoolConfig

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.database}"

    @classmethod
    def resolve(
        cls, pool: PoolConfig, credentials: Credentials, ssl_context: ssl.SSLContext | None, default_port: int
    ) -> Target:
        """The configured upstream, else the secret's host/port; the database likewise."""
        if pool.upstream is not None:
            host, port = pool.upstream.host, pool.upstream.port
        elif credentials.host:
            host, port = credentials.host, credentials.port or default_port
        else:
            raise PoolError(f'pool "{pool.name}": no upstream configured and the secret has no "host"')
        return cls(host, port, pool.database or credentials.dbname or pool.name, ssl_context, pool)


async def start_tls(endpoint: Endpoint, target: Target) -> None:
    """Upgrade the endpoint's transport in place; the protocol object stays the same."""
    assert endpoint.transport is not None and target.ssl_context is not None
    transport = await asyncio.get_running_loop().start_tls(
        endpoint.transport, endpoint, target.ssl_context, server_hostname=target.host
    )
    # uvloop's transports implement asyncio.Transport without subclassing it.
    endpoint.transport = cast(asyncio.Transport, transport)


async def dial(
    target: Target,
    reader: Reader,
    login: Callable[[Endpoint], Awaitable[T]],
    login_errors: tuple[type[Exception], ...] = (),
) -> T:
    """Connect and run the engine's ``login`` within connect_timeout; failures become pool errors.

    ``login_errors`` are the engine's "the server could not be verified" exceptions.
    """
    pool = target.pool
    endpoint = Endpoint(reader)
    unverifiable: tuple[type[Exception], ...] = (ProtocolViolation, *login_errors)
    try:
        async with asyncio.timeout(pool.connect_timeout):
            await asyncio.get_running_loop().create_connection(lambda: endpoint, target.host, target.port)
            return await login(endpoint)
    except (PoolError, asyncio.CancelledError):
        endpoint.abort()
        raise
    except ssl.SSLCertVerificationError as exc:
        endpoint.abort()
        raise PoolError(
            f'pool "{pool.name}": TLS certificate of {target.host} rejected (tls = {pool.tls}): '
            f"{exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        endpoint.abort()
        raise PoolError(
            f'pool "{pool.name}": TLS handshake with {target.host} failed: {exc.reason}'
        ) from None
    except (OSError, ConnectionClosed) as exc:
        endpoint.abort()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "connection closed"
        raise UpstreamUnavailable(
            f'pool "{pool.name}": cannot reach upstream {target.host}:{target.port}: {reason}'
        ) from None
    except TimeoutError:
        endpoint.abort()
        raise UpstreamUnavailable(
            f'pool "{pool.name}": upstream {target.host}:{target.port} did not complete login within '
            f"connect_timeout {pool.connect_timeout:g}s"
        ) from None
    except unverifiable as exc:
        endpoint.abort()
        raise PoolError(f'pool "{pool.name}": upstream login failed: {exc}') from None
    except BaseException:
        endpoint.abort()
        raise
