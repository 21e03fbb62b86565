"""Wire a client endpoint to a server endpoint until one side ends; for every engine.

The engine supplies two callbacks: ``from_client`` forwards (and inspects) what the client
sent, returning a reason when the session should end there (Terminate, COM_QUIT);
``from_server`` observes what the server sent, which is already on its way to the client.
A protocol violation on either side ends the relay with a reason that says whose it was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from protocols.errors import ProtocolViolation
from proxy.endpoint import Endpoint

log = logging.getLogger(__name__)

CLIENT_CLOSED = "client closed"
CLIENT_TERMINATED = "client terminated"  # PostgreSQL's Terminate message
SERVER_CLOSED = "server closed"
CLIENT_VIOLATION = "client protocol violation"
SERVER_VIOLATION = "server protocol violation"


async def relay(
    client: Endpoint,
    upstream: Endpoint,
    from_client: Callable[[bytes], str | None],
    from_server: Callable[[bytes], None],
    *,
    client_name: str,
    server_name: str,
) -> str:
    """Relay both ways; return why it ended. Both endpoints are back in control mode after."""
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def finish(reason: str) -> None:
        if not done.done():
            done.set_result(reason)

    def to_server(data: bytes) -> None:
        if done.done():
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
        return await done
    finally:
        client.stop_relay()
        upstream.stop_relay()
