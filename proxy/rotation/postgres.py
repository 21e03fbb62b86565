"""PostgreSQL's part of a rotation: set a role's password as itself or as the master user, and
make the clone role for alternating users."""

from __future__ import annotations

import base64

from protocols.postgres import sql as pg_sql
from proxy.config import PoolConfig
from proxy.core.errors import PoolError
from proxy.credentials.base import Credentials
from proxy.postgres.server import PgConnector, PgServerConnection
from proxy.rotation.database import Database
from proxy.rotation.secret import SecretValue, base_username

SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (what pg_authid holds)."""
    from scramp import ScramMechanism

    salt, stored_key, server_key, count = ScramMechanism("SCRAM-SHA-256").make_auth_info(
        password, iteration_count=iterations
    )

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${count}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class PostgresDatabase(Database[PgServerConnection]):
    engine = "postgres"

    async def _connect(self, config: PoolConfig, credentials: Credentials) -> PgServerConnection:
        return await PgConnector(config)(credentials, 1, None)

    @staticmethod
    async def _run(connection: PgServerConnection, sql: str) -> None:
        errors = await connection.run_queries(sql)
        if errors:
            raise PoolError(f"{errors[0].message} ({errors[0].code})")

    async def _set_own_password(self, connection: PgServerConnection, pending: SecretValue) -> None:
        # A verifier, not the password: the cleartext never reaches SQL or the server's logs.
        verifier = pg_sql.literal(scram_verifier(pending.password))
        role = pg_sql.identifier(pending.username)
        await self._run(connection, f"ALTER ROLE {role} WITH PASSWORD {verifier}")

    async def _set_password_as_master(self, connection: PgServerConnection, pending: SecretValue) -> None:
        target = pending.username
        base = base_username(target)
        statements = []
        if target != base:
            exists = await connection.fetch_rows(
                f"SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {pg_sql.literal(target)}"
            )
            if not exists:
                statements.append(f"CREATE ROLE {pg_sql.identifier(target)} WITH LOGIN")
            # Membership gives the clone the user's privileges and the use of what it owns;
            # granting again is harmless (a notice) and repairs a clone that lost it.
            statements.append(f"GRANT {pg_sql.identifier(base)} TO {pg_sql.identifier(target)}")
        verifier = pg_sql.literal(scram_verifier(pending.password))
        statements.append(f"ALTER ROLE {pg_sql.identifier(target)} WITH PASSWORD {verifier}")
        # One simple query is one transaction: a clone never exists half made.
        await self._run(connection, "; ".join(statements))
