"""Wire a client endpoint to a server endpoint until one side ends; for every engine.

The engine supplies two callbacks: ``from_client`` forwards (and inspects) what the client
sent, returning a reason when the session should end there (Terminate, COM_QUIT);
``from_server`` observes what the server sent, which is already on its way to the client.
A protocol violation on either side ends the relay with a reason that says whose it was.
The caller may also end it from outside by completing the ``done`` future it passed in (a
session that reached a safe idle point during shutdown or reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from protocols.errors import ProtocolViolation
from protocols.events import NEED_DATA, NeedData
from proxy.core.endpoint import ConnectionClosed, Endpoint

log = logging.getLogger(__name__)

CLIENT_CLOSED = "client closed"
CLIENT_TERMINATED = "client terminated"  # PostgreSQL's Terminate message
SERVER_CLOSED = "server closed"
CLIENT_VIOLATION = "client protocol violation"
SERVER_VIOLATION = "server protocol violation"
GOODBYE = "goodbye"  # shutdown or reload: the session ends at a safe idle point, the client is told
# How long a goodbye waits for the client's next request, so that it can be the answer to it.
GOODBYE_LINGER = 0.25


async def relay(
    client: Endpoint,
    upstream: Endpoint,
    from_client: Callable[[bytes], str | None],
    from_server: Callable[[bytes], None],
    *,
    client_name: str,
    server_name: str,
    done: asyncio.Future[str] | None = None,
) -> str:
    """Relay both ways; return why it ended. Both endpoints are back in control mode after.

    ``done``, when given, ends the relay when its result is set (with the reason to return).
    """
    ended: asyncio.Future[str] = done if done is not None else asyncio.get_running_loop().create_future()

    def finish(reason: str) -> None:
        if not ended.done():
            ended.set_result(reason)

    def to_server(data: bytes) -> None:
        if ended.done():
            return
        try:
            reason = from_client(data)
        except ProtocolViolation as exc:
            log.info("client %s broke the protocol: %s", client_name, exc)
            finish(CLIENT_VIOLATION)
            return
        if reason is not None:
            finish(reason)

    def to_client(data: bytes) -> None:
        client.write(data)
        try:
            from_server(data)
        except ProtocolViolation as exc:
            log.warning("upstream %s broke the protocol: %s", server_name, exc)
            finish(SERVER_VIOLATION)

    client.peer, upstream.peer = upstream, client
    upstream.start_relay(to_client)
    client.start_relay(to_server)
    client.on_lost(lambda _: finish(CLIENT_CLOSED))
    upstream.on_lost(lambda _: finish(SERVER_CLOSED))
    try:
        return await ended
    finally:
        client.stop_relay()
        upstream.stop_relay()


async def await_next_request(client: Endpoint, pending: int = 0) -> None:
    """Before a goodbye: until the client sends something (or leaves), at most GOODBYE_LINGER.

    ``client`` is in control mode; ``pending`` counts request bytes a relay already holds.
    A goodbye written right after the answer before it reaches the driver in the same read,
    and libpq takes an error that arrives while no query runs for a notice: the application
    would see only "server closed the connection unexpectedly". Sent as the answer to the
    next request, it is that request's error (57P01, or MySQL's 1053). A client that sends
    nothing gets it unasked after the linger, as PostgreSQL tells an idle backend's client.
    """
    if pending or len(client.reader) or client.closed:
        return

    def sent_something() -> bool | NeedData:
        return True if len(client.reader) else NEED_DATA

    with contextlib.suppress(TimeoutError, ConnectionClosed):
        await asyncio.wait_for(client.receive(sent_something), GOODBYE_LINGER)
