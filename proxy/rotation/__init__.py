"""Rotating the database password a Secrets Manager secret holds: the four-step contract of a
rotation Lambda (createSecret, setSecret, testSecret, finishSecret), for PostgreSQL and
MySQL/MariaDB, single-user or alternating-users, as a Lambda handler, ``rotaproxy rotate`` or code.

Theory of operation. A rotation is identified by its ClientRequestToken, which becomes the new
secret version's id. Every step first looks the token up (DescribeSecret): a version already
AWSCURRENT means the rotation is over and the step does nothing; otherwise the version must
hold AWSPENDING. Each step then checks whether its work is already done before doing it, so
any step may run any number of times (Lambda retries, an interrupted ``rotaproxy rotate``).

- createSecret: the AWSPENDING version gets the AWSCURRENT JSON with a new password (and, for
  alternating-users, the other username of the pair ``user`` / ``user_clone``).
- setSecret: the database learns the pending password: single-user as the user itself (with
  its AWSCURRENT, else AWSPREVIOUS, password); alternating-users as the master user named by
  the secret's ``masterarn``, creating the clone and giving it the user's privileges.
- testSecret: the pending credentials log in and run ``SELECT 1``.
- finishSecret: AWSCURRENT moves to the new version (the old one becomes AWSPREVIOUS) and
  AWSPENDING is taken off it.

With alternating users the previous credentials keep working until the next rotation, so
clients and pools that still hold them never see a login failure.

Secret values never reach logs, exception messages or reprs. PostgreSQL gets a SCRAM verifier
computed here, so the cleartext password never travels in SQL; MySQL has no portable
equivalent and gets ``IDENTIFIED BY``.

Secrets Manager reads always name a VersionStage or VersionId (moto can answer an unqualified
read with an old version), and Secrets Manager's own RotateSecret is not used: without a
Lambda, moto leaves an empty AWSCURRENT behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import string
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar, cast, get_args

from protocols.errors import ProtocolViolation
from protocols.mysql.constants import SERVER_STATUS_NO_BACKSLASH_ESCAPES
from proxy.config import (
    UPSTREAM_DEFAULT_PORTS,
    Address,
    CredentialsConfig,
    Engine,
    PoolConfig,
    TlsMode,
)
from proxy.core.errors import PoolError, UpstreamLoginError
from proxy.credentials import Credentials
from proxy.mysql.server import MySqlConnector, MySqlServerConnection
from proxy.postgres.server import PgConnector, PgServerConnection
from proxy.redaction import redact, register_secret

log = logging.getLogger(__name__)

Strategy = Literal["single-user", "alternating-users"]

CREATE_SECRET = "createSecret"
SET_SECRET = "setSecret"
TEST_SECRET = "testSecret"
FINISH_SECRET = "finishSecret"
STEPS = (CREATE_SECRET, SET_SECRET, TEST_SECRET, FINISH_SECRET)

AWSCURRENT = "AWSCURRENT"
AWSPENDING = "AWSPENDING"
AWSPREVIOUS = "AWSPREVIOUS"

CLONE_SUFFIX = "_clone"
PASSWORD_LENGTH = 32
# Letters, digits and punctuation that need no quoting in SQL string literals, URLs or
# connection strings: no quotes, backslash, '@', '/', ':', '%' or spaces.
PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_.~"
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)

ENGINES: dict[str, Engine] = {
    "postgres": "postgres",
    "aurora-postgresql": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
    "aurora-mysql": "mysql",
    "aurora": "mysql",
}
# Where to log in when the secret names no database: one every user may connect to.
DEFAULT_DATABASES: dict[Engine, str] = {"postgres": "postgres", "mysql": "information_schema"}
# The host part of MySQL accounts; a secret may name another with this key.
MYSQL_USER_HOST_KEY = "user_host"
DEFAULT_MYSQL_USER_HOST = "%"

# Environment of the Lambda handler.
ENV_STRATEGY = "ROTAPROXY_STRATEGY"
ENV_TLS = "ROTAPROXY_TLS"
ENV_TLS_CA_FILE = "ROTAPROXY_TLS_CA_FILE"
ENV_UPSTREAM_HOST = "ROTAPROXY_UPSTREAM_HOST"
ENV_ENDPOINT = "SECRETS_MANAGER_ENDPOINT"  # the variable AWS's rotation templates read


class RotationError(Exception):
    """A rotation step failed; the message names the step, the secret and the cause, never a value."""

    def __init__(self, problem: str, *, step: str | None = None, secret_id: str | None = None) -> None:
        where = f"{step} for secret {secret_id!r}: " if step and secret_id else ""
        super().__init__(where + problem)
        self.problem = problem
        self.step = step
        self.secret_id = secret_id


@dataclass(frozen=True)
class RotationSettings:
    strategy: Strategy = "single-user"
    tls: TlsMode = "verify-full"
    tls_ca_file: Path | None = None
    connect_timeout: float = 5.0
    upstream_host: str | None = None  # instead of the secret's host (tests: 127.0.0.1)

    def __post_init__(self) -> None:
        if self.strategy not in get_args(Strategy):
            raise ValueError(
                f"strategy must be one of {', '.join(get_args(Strategy))}; got {self.strategy!r}"
            )
        if self.tls not in get_args(TlsMode):
            raise ValueError(f"tls must be one of {', '.join(get_args(TlsMode))}; got {self.tls!r}")
        if self.tls_ca_file is not None and not self.tls_ca_file.is_file():
            raise ValueError(f"tls_ca_file {self.tls_ca_file} does not exist or is not a file")


# --- pure helpers ------------------------------------------------------------------------------


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A random password from PASSWORD_ALPHABET with at least one letter and one digit."""
    while True:
        password = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
        if any(ch.isalpha() for ch in password) and any(ch.isdigit() for ch in password):
            return password


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (what pg_authid holds)."""
    from scramp import ScramMechanism

    salt, stored_key, server_key, count = ScramMechanism("SCRAM-SHA-256").make_auth_info(
        password, iteration_count=iterations
    )

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${count}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def alternate_username(username: str) -> str:
    """``user`` ↔ ``user_clone``."""
    return base_username(username) if username.endswith(CLONE_SUFFIX) else username + CLONE_SUFFIX


def base_username(username: str) -> str:
    return username[: -len(CLONE_SUFFIX)] if username.endswith(CLONE_SUFFIX) else username


def pg_identifier(name: str) -> str:
    if not name or "\x00" in name:
        raise RotationError(f"{name!r} cannot be a PostgreSQL role name")
    return '"' + name.replace('"', '""') + '"'


def pg_literal(value: str) -> str:
    """A string literal that means the same whatever standard_conforming_strings says."""
    if "\x00" in value:
        raise RotationError("a PostgreSQL string cannot contain NUL")
    quoted = value.replace("'", "''")
    if "\\" in value:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


def mysql_literal(value: str, *, backslash_escapes: bool = True) -> str:
    """A MySQL string literal; with NO_BACKSLASH_ESCAPES a backslash is an ordinary character."""
    if "\x00" in value:
        raise RotationError("a MySQL string cannot contain NUL")
    if backslash_escapes:
        value = value.replace("\\", "\\\\")
    return "'" + value.replace("'", "''") + "'"


def mysql_account(user: str, host: str, *, backslash_escapes: bool = True) -> str:
    return (
        f"{mysql_literal(user, backslash_escapes=backslash_escapes)}@"
        f"{mysql_literal(host, backslash_escapes=backslash_escapes)}"
    )


def clone_grant(statement: str, user: str, host: str, clone_account: str) -> str:
    """A SHOW GRANTS line for ``user@host`` rewritten to grant the same to ``clone_account``.

    The grantee is found as the servers print it (MySQL 8 and MariaDB: `user`@`host`;
    MySQL 5.7: 'user'@'host'); an IDENTIFIED clause (MariaDB shows the password hash there)
    is dropped, REQUIRE / WITH options are kept.
    """
    forms = [
        "`{}`@`{}`".format(user.replace("`", "``"), host.replace("`", "``")),
        "'{}'@'{}'".format(user.replace("'", "\\'"), host.replace("'", "\\'")),
    ]
    for form in forms:
        index = statement.rfind(f" TO {form}")
        if index >= 0:
            head, tail = statement[:index], statement[index + len(f" TO {form}") :]
            break
    else:
        raise RotationError(f"cannot find the grantee {user}@{host} in a SHOW GRANTS line")
    if tail.startswith(" IDENTIFIED "):
        ends = [position for keyword in (" REQUIRE ", " WITH ") if (position := tail.find(keyword)) >= 0]
        tail = tail[min(ends) :] if ends else ""
    return f"{head} TO {clone_account}{tail}"


# --- one version of a secret ---------------------------------------------------------------------


@dataclass(frozen=True)
class SecretValue:
    """One version of an RDS-style JSON secret; the JSON stays out of the repr."""

    secret_id: str
    version_id: str
    stage: str
    data: Mapping[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, secret_id: str, version_id: str, stage: str, text: str | None) -> SecretValue:
        where = f"the {stage} version of secret {secret_id!r}"
        if text is None:
            raise RotationError(f"{where} has no SecretString (binary secrets are not supported)")
        try:
            data = json.loads(text)
        except ValueError:
            raise RotationError(f"{where} is not valid JSON") from None
        if not isinstance(data, dict):
            raise RotationError(f"{where} is JSON but not an object")
        for key in ("username", "password"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise RotationError(f"{where} lacks a string {key!r}")
        register_secret(data["password"])
        return cls(secret_id, version_id, stage, data)

    @property
    def where(self) -> str:
        return f"the {self.stage} version of secret {self.secret_id!r}"

    @property
    def username(self) -> str:
        return cast(str, self.data["username"])

    @property
    def password(self) -> str:
        return cast(str, self.data["password"])

    @property
    def host(self) -> str | None:
        host = self.data.get("host")
        return host if isinstance(host, str) and host else None

    @property
    def engine(self) -> Engine:
        name = self.data.get("engine")
        if not isinstance(name, str) or name not in ENGINES:
            raise RotationError(
                f"{self.where} has engine {name!r}; expected one of {', '.join(sorted(ENGINES))}"
            )
        return ENGINES[name]

    @property
    def port(self) -> int:
        value = self.data.get("port")
        if value is None:
            return UPSTREAM_DEFAULT_PORTS[self.engine]
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
            return value
        raise RotationError(f"{self.where} has a 'port' that is not a port number")

    @property
    def dbname(self) -> str:
        name = self.data.get("dbname")
        return name if isinstance(name, str) and name else DEFAULT_DATABASES[self.engine]

    @property
    def master_arn(self) -> str:
        arn = self.data.get("masterarn")
        if not isinstance(arn, str) or not arn:
            raise RotationError(f"{self.where} has no 'masterarn': alternating-users needs the master secret")
        return arn

    @property
    def mysql_user_host(self) -> str:
        host = self.data.get(MYSQL_USER_HOST_KEY)
        return host if isinstance(host, str) and host else DEFAULT_MYSQL_USER_HOST

    def credentials(self) -> Credentials:
        return Credentials(
            username=self.username,
            password=self.password,
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            engine=self.engine,
            version_id=self.version_id,
            stage=self.stage,
        )


# --- the databases -----------------------------------------------------------------------------


class _AdminConnection(Protocol):
    async def fetch_rows(self, sql: str) -> list[tuple[str | None, ...]]: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=_AdminConnection)
T = TypeVar("T")


class _Database(ABC, Generic[C]):
    """Logs in with a secret's credentials (rotaproxy's own connectors) and sets passwords.

    Connections stay inside: every operation logs in, does its work and closes.
    """

    engine: Engine

    def __init__(self, settings: RotationSettings) -> None:
        self.settings = settings

    def pool_config(self, secret: SecretValue) -> PoolConfig:
        host = self.settings.upstream_host or secret.host
        if host is None:
            raise RotationError(f"{secret.where} has no 'host' (and no upstream host was given)")
        return PoolConfig(
            name=secret.secret_id,
            engine=self.engine,
            listen=Address("127.0.0.1", 0),  # not used: nothing listens during a rotation
            credentials=CredentialsConfig(source="secretsmanager", secret_id=secret.secret_id),
            upstream=Address(host, secret.port),
            database=secret.dbname,
            connect_timeout=self.settings.connect_timeout,
            tls=self.settings.tls,
            tls_ca_file=self.settings.tls_ca_file,
        )

    @abstractmethod
    async def _connect(self, config: PoolConfig, credentials: Credentials) -> C:
        """Log in; raise PoolError (UpstreamLoginError when the server refuses)."""

    @abstractmethod
    async def _set_own_password(self, connection: C, pending: SecretValue) -> None: ...

    @abstractmethod
    async def _set_password_as_master(self, connection: C, pending: SecretValue) -> None: ...

    @contextlib.asynccontextmanager
    async def session(self, secret: SecretValue) -> AsyncIterator[C]:
        connection = await self._connect(self.pool_config(secret), secret.credentials())
        try:
            yield connection
        finally:
            connection.close()

    async def can_log_in(self, secret: SecretValue) -> bool:
        """True if ``secret`` logs in, False if the server refuses it; other failures raise."""
        try:
            async with self.session(secret):
                return True
        except UpstreamLoginError as exc:
            if exc.is_auth_failure:
                return False
            raise

    async def select_one(self, secret: SecretValue) -> None:
        async with self.session(secret) as connection:
            rows = await connection.fetch_rows("SELECT 1")
        if rows != [("1",)]:
            raise RotationError(f"SELECT 1 as {secret.username!r} answered {rows!r}")

    async def set_own_password(self, login: SecretValue, pending: SecretValue) -> None:
        """Logged in as the user (with ``login``), give it ``pending``'s password.

        Raises UpstreamLoginError when ``login`` is refused, so the caller may try another.
        """
        async with self.session(login) as connection:
            await self._set_own_password(connection, pending)

    async def set_password_as_master(self, master: SecretValue, pending: SecretValue) -> None:
        """Logged in as the master user, make ``pending``'s user (base or clone) log in with its password."""
        async with self.session(master) as connection:
            await self._set_password_as_master(connection, pending)


class _Postgres(_Database[PgServerConnection]):
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
        verifier = pg_literal(scram_verifier(pending.password))
        await self._run(connection, f"ALTER ROLE {pg_identifier(pending.username)} WITH PASSWORD {verifier}")

    async def _set_password_as_master(self, connection: PgServerConnection, pending: SecretValue) -> None:
        target = pending.username
        base = base_username(target)
        statements = []
        if target != base:
            exists = await connection.fetch_rows(
                f"SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {pg_literal(target)}"
            )
            if not exists:
                statements.append(f"CREATE ROLE {pg_identifier(target)} WITH LOGIN")
            # Membership gives the clone the user's privileges and the use of what it owns;
            # granting again is harmless (a notice) and repairs a clone that lost it.
            statements.append(f"GRANT {pg_identifier(base)} TO {pg_identifier(target)}")
        verifier = pg_literal(scram_verifier(pending.password))
        statements.append(f"ALTER ROLE {pg_identifier(target)} WITH PASSWORD {verifier}")
        # One simple query is one transaction: a clone never exists half made.
        await self._run(connection, "; ".join(statements))


class _MySql(_Database[MySqlServerConnection]):
    engine = "mysql"

    async def _connect(self, config: PoolConfig, credentials: Credentials) -> MySqlServerConnection:
        return await MySqlConnector(config)(credentials, 1, MySqlConnector.default_variant)

    @staticmethod
    def _escapes(connection: MySqlServerConnection) -> bool:
        return not connection.status_flags & SERVER_STATUS_NO_BACKSLASH_ESCAPES

    async def _set_own_password(self, connection: MySqlServerConnection, pending: SecretValue) -> None:
        password = mysql_literal(pending.password, backslash_escapes=self._escapes(connection))
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
        account = mysql_account(target, host, backslash_escapes=escapes)
        password = mysql_literal(pending.password, backslash_escapes=escapes)
        if target != base:
            # Created with its password: the account never exists without one.
            await connection.query(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {password}")
            grants = await connection.fetch_rows(
                f"SHOW GRANTS FOR {mysql_account(base, host, backslash_escapes=escapes)}"
            )
            for (grant,) in grants:
                if grant is not None:
                    await connection.query(clone_grant(grant, base, host, account))
        await connection.query(f"ALTER USER {account} IDENTIFIED BY {password}")


def _database_for(secret: SecretValue, settings: RotationSettings) -> _Database[Any]:
    if secret.engine == "postgres":
        return _Postgres(settings)
    return _MySql(settings)


# --- the rotation ------------------------------------------------------------------------------


class Rotator:
    """Runs rotation steps against one Secrets Manager client (an aioboto3 client)."""

    def __init__(self, client: Any, settings: RotationSettings) -> None:
        self.client = client
        self.settings = settings

    def __repr__(self) -> str:
        return f"Rotator(strategy={self.settings.strategy!r})"

    async def run_step(self, secret_id: str, token: str, step: str) -> None:
        """One step of the rotation Lambda contract; the token must be a version of the secret."""
        await self._run_step(secret_id, token, step, may_create=False)

    async def start(self, secret_id: str, token: str | None = None) -> str:
        """Begin a rotation as Secrets Manager's RotateSecret does: create the AWSPENDING version
        (createSecret) under ``token`` (a new uuid4 unless given). Returns the token."""
        token = token or str(uuid.uuid4())
        await self._run_step(secret_id, token, CREATE_SECRET, may_create=True)
        return token

    async def rotate(
        self,
        secret_id: str,
        *,
        token: str | None = None,
        pause_after: dict[str, float] | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> str:
        """All four steps in order; ``pause_after[step]`` seconds of sleep after a step.

        Returns the token, which is the new version's id. Running it again with the same
        token finishes an interrupted rotation, or does nothing after a complete one.
        """
        pauses = dict(pause_after or {})
        unknown = sorted(set(pauses) - set(STEPS))
        if unknown:
            raise ValueError(f"pause_after names unknown steps {unknown}; steps are {', '.join(STEPS)}")
        token = token or str(uuid.uuid4())
        for step in STEPS:
            await self._run_step(secret_id, token, step, may_create=step == CREATE_SECRET)
            if on_step is not None:
                on_step(step)
            if pauses.get(step, 0) > 0:
                await asyncio.sleep(pauses[step])
        return token

    # --- the frame every step shares ---------------------------------------------------------

    async def _run_step(self, secret_id: str, token: str, step: str, *, may_create: bool) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if step not in STEPS:
                raise RotationError(f"unknown step; expected one of {', '.join(STEPS)}")
            versions = await self._version_stages(secret_id)
            stages = versions.get(token)
            if stages is None and not may_create:
                raise RotationError(f"{token} is not a version of the secret")
            if stages is not None and AWSCURRENT in stages:
                if step == FINISH_SECRET and AWSPENDING in stages:
                    await self._remove_pending(secret_id, token)  # an earlier finishSecret stopped halfway
                log.info("%s: version %s of %s is already AWSCURRENT; nothing to do", step, token, secret_id)
                return
            if stages is not None and AWSPENDING not in stages:
                raise RotationError(f"version {token} is neither AWSCURRENT nor AWSPENDING")
            steps = {
                CREATE_SECRET: self._create_secret,
                SET_SECRET: self._set_secret,
                TEST_SECRET: self._test_secret,
                FINISH_SECRET: self._finish_secret,
            }
            await steps[step](secret_id, token, versions)
        except RotationError as exc:
            raise RotationError(redact(exc.problem), step=step, secret_id=secret_id) from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            # AWS messages describe the request, never a secret's value.
            words = " ".join(str(error.get("Message", "")).split())
            problem = f"Secrets Manager error {error.get('Code', 'unknown')}: {words}"
            raise RotationError(redact(problem), step=step, secret_id=secret_id) from None
        except (PoolError, ProtocolViolation) as exc:
            # An upstream error may echo the statement it refused: mask what could be a secret.
            raise RotationError(redact(str(exc)), step=step, secret_id=secret_id) from None
        except (BotoCoreError, OSError) as exc:
            # e.g. "Could not connect to the endpoint URL", "No such file or directory: 'ca.pem'"
            problem = f"{type(exc).__name__}: {exc}"
            raise RotationError(redact(problem), step=step, secret_id=secret_id) from None
        log.info("%s: done for %s (version %s)", step, secret_id, token)

    async def _version_stages(self, secret_id: str) -> dict[str, list[str]]:
        metadata = await self.client.describe_secret(SecretId=secret_id)
        return {version: list(stages) for version, stages in metadata.get("VersionIdsToStages", {}).items()}

    async def _get(self, secret_id: str, stage: str, version_id: str | None = None) -> SecretValue:
        selector = (
            {"VersionStage": stage}
            if version_id is None
            else {"VersionId": version_id, "VersionStage": stage}
        )
        response = await self.client.get_secret_value(SecretId=secret_id, **selector)
        return SecretValue.parse(secret_id, str(response["VersionId"]), stage, response.get("SecretString"))

    def _database(self, secret: SecretValue) -> _Database[Any]:
        return _database_for(secret, self.settings)

    # --- the steps --------------------------------------------------------------------------

    async def _create_secret(self, secret_id: str, token: str, versions: dict[str, list[str]]) -> None:
        from botocore.exceptions import ClientError

        if token in versions:
            try:
                await self._get(secret_id, AWSPENDING, token)
            except ClientError as exc:
                # AWS's RotateSecret makes the version without a value; createSecret fills it.
                if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                    raise
            else:
                log.info("createSecret: version %s of %s already holds the new secret", token, secret_id)
                return
        current = await self._get(secret_id, AWSCURRENT)
        self._database(current)  # an unknown engine fails now, before a version is written
        new = dict(current.data)
        if self.settings.strategy == "alternating-users":
            new["username"] = alternate_username(current.username)
            log.info(
                "createSecret: %s alternates %r -> %r (master secret %s)",
                secret_id,
                current.username,
                new["username"],
                current.master_arn,  # checked now: setSecret needs it
            )
        new["password"] = generate_password()
        register_secret(new["password"])
        await self.client.put_secret_value(
            SecretId=secret_id,
            ClientRequestToken=token,
            SecretString=json.dumps(new),
            VersionStages=[AWSPENDING],
        )

    async def _set_secret(self, secret_id: str, token: str, versions: dict[str, list[str]]) -> None:
        pending = await self._get(secret_id, AWSPENDING, token)
        database = self._database(pending)
        if await database.can_log_in(pending):
            log.info("setSecret: the AWSPENDING password of %s already works", secret_id)
            return
        current = await self._get(secret_id, AWSCURRENT)
        if self.settings.strategy == "alternating-users":
            await self._set_as_master(database, current, pending)
            return
        has_previous = any(AWSPREVIOUS in stages for stages in versions.values())
        await self._set_as_user(database, current, pending, has_previous=has_previous)

    async def _set_as_user(
        self, database: _Database[Any], current: SecretValue, pending: SecretValue, *, has_previous: bool
    ) -> None:
        if current.username != pending.username:
            raise RotationError(
                f"AWSPENDING is for user {pending.username!r} but AWSCURRENT for {current.username!r}: "
                "single-user rotation keeps the user (is the secret rotated with alternating-users?)"
            )
        try:
            await database.set_own_password(current, pending)
            return
        except UpstreamLoginError as exc:
            if not exc.is_auth_failure or not has_previous:
                raise RotationError(f"cannot log in as {current.username!r} with AWSCURRENT: {exc}") from None
        previous = await self._get(current.secret_id, AWSPREVIOUS)
        if previous.username != pending.username:
            raise RotationError(
                f"AWSCURRENT does not log in and AWSPREVIOUS is for another user ({previous.username!r})"
            )
        try:
            await database.set_own_password(previous, pending)
        except UpstreamLoginError as exc:
            raise RotationError(
                f"cannot log in as {previous.username!r} with AWSCURRENT or AWSPREVIOUS: {exc}"
            ) from None

    async def _set_as_master(
        self, database: _Database[Any], current: SecretValue, pending: SecretValue
    ) -> None:
        if alternate_username(current.username) != pending.username:
            raise RotationError(
                f"AWSPENDING is for user {pending.username!r}, which does not alternate with AWSCURRENT's "
                f"{current.username!r}"
            )
        master_arn = current.master_arn
        master = await self._get(master_arn, AWSCURRENT)
        if master.engine != pending.engine or (master.host, master.port) != (pending.host, pending.port):
            raise RotationError(f"the master secret {master_arn!r} is for another server than the secret")
        try:
            await database.set_password_as_master(master, pending)
        except UpstreamLoginError as exc:
            raise RotationError(f"cannot log in with the master secret {master_arn!r}: {exc}") from None

    async def _test_secret(self, secret_id: str, token: str, versions: dict[str, list[str]]) -> None:
        pending = await self._get(secret_id, AWSPENDING, token)
        try:
            await self._database(pending).select_one(pending)
        except UpstreamLoginError as exc:
            raise RotationError(f"cannot log in as {pending.username!r} with AWSPENDING: {exc}") from None

    async def _finish_secret(self, secret_id: str, token: str, versions: dict[str, list[str]]) -> None:
        current = next((version for version, stages in versions.items() if AWSCURRENT in stages), None)
        if current != token:
            await self.client.update_secret_version_stage(
                SecretId=secret_id,
                VersionStage=AWSCURRENT,
                MoveToVersionId=token,
                **({"RemoveFromVersionId": current} if current is not None else {}),
            )
        await self._remove_pending(secret_id, token)

    async def _remove_pending(self, secret_id: str, token: str) -> None:
        # AWS leaves AWSPENDING where it is, and moto too: a pending label next to
        # AWSCURRENT would look like a rotation in progress.
        await self.client.update_secret_version_stage(
            SecretId=secret_id, VersionStage=AWSPENDING, RemoveFromVersionId=token
        )


# --- entry points ------------------------------------------------------------------------------


def settings_from_environ(environ: Mapping[str, str]) -> RotationSettings:
    """RotationSettings from ROTAPROXY_STRATEGY, ROTAPROXY_TLS, ROTAPROXY_TLS_CA_FILE and
    ROTAPROXY_UPSTREAM_HOST (all optional)."""
    ca_file = environ.get(ENV_TLS_CA_FILE) or None
    return RotationSettings(
        strategy=cast(Strategy, environ.get(ENV_STRATEGY) or "single-user"),
        tls=cast(TlsMode, environ.get(ENV_TLS) or "verify-full"),
        tls_ca_file=Path(ca_file) if ca_file else None,
        upstream_host=environ.get(ENV_UPSTREAM_HOST) or None,
    )


async def _run_with_client(
    settings: RotationSettings,
    endpoint_url: str | None,
    region: str | None,
    work: Callable[[Rotator], Awaitable[T]],
) -> T:
    """``work`` with a Rotator on a Secrets Manager client made for it (and closed after)."""
    import aioboto3

    session = aioboto3.Session()
    kwargs: dict[str, Any] = {}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if region:
        kwargs["region_name"] = region
    elif session.region_name is None and endpoint_url:
        kwargs["region_name"] = "us-east-1"  # a local endpoint still needs a region to sign with
    from botocore.exceptions import BotoCoreError

    try:
        client_context = session.client("secretsmanager", **kwargs)
        client = await client_context.__aenter__()
    except BotoCoreError as exc:  # e.g. "You must specify a region."
        raise RotationError(f"cannot create a Secrets Manager client: {exc}") from None
    try:
        return await work(Rotator(client, settings))
    finally:
        await client_context.__aexit__(None, None, None)


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    """AWS Lambda entry point: one step, as Secrets Manager's rotation calls it."""
    try:
        secret_id, token, step = event["SecretId"], event["ClientRequestToken"], event["Step"]
    except KeyError as exc:
        raise RotationError(f"the event lacks {exc.args[0]!r}") from None
    settings = settings_from_environ(os.environ)
    endpoint = os.environ.get(ENV_ENDPOINT) or None
    log.info("lambda: %s for %s (version %s)", step, secret_id, token)
    asyncio.run(
        _run_with_client(settings, endpoint, None, lambda rotator: rotator.run_step(secret_id, token, step))
    )


async def rotate_command(
    secret_id: str,
    settings: RotationSettings,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    token: str | None = None,
    pause_after: dict[str, float] | None = None,
    out: Callable[[str], None] = print,
) -> str:
    """``rotaproxy rotate``: the four steps, one line of output per step (names and ids only)."""
    pauses = pause_after or {}

    def report(step: str) -> None:
        pause = f" (pausing {pauses[step]:g}s)" if pauses.get(step, 0) > 0 else ""
        out(f"{step}: done for secret {secret_id} version {chosen}{pause}")

    chosen = token or str(uuid.uuid4())
    await _run_with_client(
        settings,
        endpoint_url,
        region,
        lambda rotator: rotator.rotate(secret_id, token=chosen, pause_after=pauses, on_step=report),
    )
    return chosen
