"""The steps alternating-users rotation takes whatever stores the credentials (Secrets Manager,
Parameter Store): pick the engine's database, set the other user's password as the master user,
test the new credentials."""

from __future__ import annotations

from typing import Any

from proxy.core.errors import UpstreamLoginError
from proxy.rotation.database import Database
from proxy.rotation.errors import RotationError
from proxy.rotation.mysql import MySqlDatabase
from proxy.rotation.postgres import PostgresDatabase
from proxy.rotation.secret import SecretValue
from proxy.rotation.settings import RotationSettings


def database_for(secret: SecretValue, settings: RotationSettings) -> Database[Any]:
    """The database ``secret`` logs in to (its engine's SQL); an unknown engine raises."""
    if secret.engine == "postgres":
        return PostgresDatabase(settings)
    return MySqlDatabase(settings)


async def set_as_master(database: Database[Any], master: SecretValue, pending: SecretValue) -> None:
    """Logged in with ``master``, make ``pending``'s user (created as a clone if need be) log in
    with its password."""
    if master.engine != pending.engine or (master.host, master.port) != (pending.host, pending.port):
        raise RotationError(f"the master credentials ({master.where}) are for another server")
    try:
        await database.set_password_as_master(master, pending)
    except UpstreamLoginError as exc:
        raise RotationError(f"cannot log in with the master credentials ({master.where}): {exc}") from None


async def test_login(database: Database[Any], pending: SecretValue) -> None:
    """``pending`` logs in and runs SELECT 1."""
    try:
        await database.select_one(pending)
    except UpstreamLoginError as exc:
        raise RotationError(f"cannot log in as {pending.username!r} with {pending.where}: {exc}") from None
