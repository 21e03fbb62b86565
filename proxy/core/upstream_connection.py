"""What every engine's server connection shares: the endpoint it talks over, the sans-IO
reader behind it, where it goes, and how it notices (and says) the end."""

from __future__ import annotations

from typing import ClassVar, Generic, TypeVar

from proxy.core.endpoint import Endpoint, Reader
from proxy.core.server import ServerConnection
from proxy.core.upstream import Target

R = TypeVar("R", bound=Reader)


class UpstreamConnection(ServerConnection, Generic[R]):
    """A logged-in connection to ``target`` over ``endpoint``, whose bytes ``reader`` parses."""

    # What the engine tells the server before it closes (Terminate, COM_QUIT).
    farewell: ClassVar[bytes]

    def __init__(self, endpoint: Endpoint, reader: R, target: Target, pool: str, generation: int) -> None:
        super().__init__(generation)
        self.endpoint = endpoint
        self.reader = reader
        self.target = target
        self.pool = pool  # the pool's name, for log lines and errors
        # Transaction mode: a client left session state or a transaction on it (or, MySQL, its
        # warnings): reset before anyone else gets it.
        self.dirty = False
        # Asked out of band to stop what runs on it (a PostgreSQL CancelRequest): the server may
        # signal the backend twice (the process and its group), and the second signal would stop
        # whatever runs next, another client's query in transaction mode. Not handed on.
        self.interrupted = False
        endpoint.on_lost(lambda _: self.connection_lost())

    @property
    def is_closed(self) -> bool:
        return self.endpoint.closed

    def close(self) -> None:
        if not self.endpoint.closed:
            self.endpoint.write(self.farewell)
            self.endpoint.close()
