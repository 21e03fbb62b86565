"""What every relay shares, session mode's and transaction mode's alike: how a goodbye waits
for the client's next request so that it can be the answer to it (``await_next_request``).
Why a relay ended is ``protocols.endings.EndReason``.
"""

from __future__ import annotations

import asyncio
import contextlib

from protocols.events import NEED_DATA, NeedData
from proxy.core.endpoint import ConnectionClosed, Endpoint

# How long a goodbye waits for the client's next request, so that it can be the answer to it.
GOODBYE_LINGER = 0.25


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
