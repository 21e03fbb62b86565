"""The MySQL/MariaDB engine as the core sees it."""

from protocols.mysql.packets import PacketReader
from proxy.engine import Engine
from proxy.mysql.client import MySqlClientSession
from proxy.mysql.limits import limit_error
from proxy.mysql.server import MAX_PACKET_SIZE, MySqlConnector

MYSQL = Engine(
    name="mysql",
    connector=MySqlConnector,
    client_reader=lambda: PacketReader(MAX_PACKET_SIZE),
    client_session=MySqlClientSession,
    limit_error=limit_error,
)
