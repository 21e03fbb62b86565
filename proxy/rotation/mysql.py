"""MySQL's and MariaDB's part of a rotation: set an account's password as itself or as the master
user, and make the clone account with the user's grants for alternating users."""

from __future__ import annotations

from protocols.mysql import sql as mysql_sql
from protocols.mysql.constants import SERVER_STATUS_NO_BACKSLASH_ESCAPES
from proxy.config import PoolConfig
from proxy.credentials.base import Credentials
from proxy.mysql.server import MySqlConnector, MySqlServerConnection
from proxy.rotation.database import Database
from proxy.rotation.errors import RotationError
from proxy.rotation.secret import SecretValue, base_username


def printed_grantees(user: str, host: str) -> tuple[str, ...]:
    """``user@host`` as SHOW GRANTS prints the grantee (not as SQL would quote it): MySQL 8 and
    MariaDB write `user`@`host`, MySQL 5.7 'user'@'host' with a backslash before a quote."""
    return (
        "`{}`@`{}`".format(user.replace("`", "``"), host.replace("`", "``")),
        "'{}'@'{}'".format(user.replace("'", "\\'"), host.replace("'", "\\'")),
    )


def clone_grant(statement: str, user: str, host: str, clone_account: str) -> str:
    """A SHOW GRANTS line for ``user@host`` rewritten to grant the same to ``clone_account``.

    An IDENTIFIED clause (MariaDB shows the password hash there) is dropped, REQUIRE / WITH
    options are kept.
    """
    for grantee in printed_grantees(user, host):
        index = statement.rfind(f" TO {grantee}")
        if index >= 0:
            head, tail = statement[:index], statement[index + len(f" TO {grantee}") :]
            break
    else:
        raise RotationError(f"cannot find the grantee {user}@{host} in a SHOW GRANTS line")
    if tail.startswith(" IDENTIFIED "):
        ends = [position for keyword in (" REQUIRE ", " WITH ") if (position := tail.find(keyword)) >= 0]
        tail = tail[min(ends) :] if ends else ""
    return f"{head} TO {clone_account}{tail}"


class MySqlDatabase(Database[MySqlServerConnection]):
    engine = "mysql"

    async def _connect(self, config: PoolConfig, credentials: Credentials) -> MySqlServerConnection:
        return await MySqlConnector(config)(credentials, 1, MySqlConnector.default_variant)

    @staticmethod
    def _escapes(connection: MySqlServerConnection) -> bool:
        return not connection.status_flags & SERVER_STATUS_NO_BACKSLASH_ESCAPES

    async def _set_own_password(self, connection: MySqlServerConnection, pending: SecretValue) -> None:
        password = mysql_sql.literal(pending.password, backslash_escapes=self._escapes(connection))
        version = await connection.fetch_rows("SELECT VERSION()")
        if version and "mariadb" in (version[0][0] or "").lower():
            # MariaDB (10.11) wants the CREATE USER privilege for ALTER USER even on oneself;
            # SET PASSWORD needs none and keeps the account's authentication plugin.
            await connection.query(f"SET PASSWORD = PASSWORD({password})")
        else:
            await connection.query(f"ALTER USER CURRENT_USER() IDENTIFIED BY {password}")

    async def _set_password_as_master(self, connection: MySqlServerConnection, pending: SecretValue) -> None:
        escapes = self._escapes(connection)
        target = pending.username
        base = base_username(target)
        host = pending.mysql_user_host
        account = mysql_sql.account(target, host, backslash_escapes=escapes)
        password = mysql_sql.literal(pending.password, backslash_escapes=escapes)
        if target != base:
            # Created with its password: the account never exists without one.
            await connection.query(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {password}")
            grants = await connection.fetch_rows(
                f"SHOW GRANTS FOR {mysql_sql.account(base, host, backslash_escapes=escapes)}"
            )
            for (grant,) in grants:
                if grant is not None:
                    await connection.query(clone_grant(grant, base, host, account))
        await connection.query(f"ALTER USER {account} IDENTIFIED BY {password}")
