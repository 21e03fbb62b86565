"""The PostgreSQL engine as the core sees it."""

from protocols.postgres.framing import StartupReader
from proxy.engine import Engine
from proxy.postgres.client import PgClientSession
from proxy.postgres.limits import limit_error
from proxy.postgres.server import PgConnector

POSTGRES = Engine(
    name="postgres",
    connector=PgConnector,
    client_reader=StartupReader,
    client_session=PgClientSession,
    limit_error=limit_error,
)
