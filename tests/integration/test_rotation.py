"""Secrets Manager rotation (proxy/rotation/) against the throwaway PostgreSQL and MariaDB and
the local Secrets Manager: single-user and alternating-users, idempotent steps, the CLI, the
Lambda handler, and no secret value in any output."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from protocols.mysql import sql as mysql_sql
from protocols.postgres import sql as pg_sql
from proxy.credentials.secrets_manager import AWSCURRENT, AWSPENDING, AWSPREVIOUS
from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.secrets_manager import LocalSecretsManager, put_secret_json
from proxy.local.tls import TlsFiles
from proxy.rotation import lambda_handler  # the dotted path the Lambda's Handler names
from proxy.rotation.errors import RotationError
from proxy.rotation.mysql import clone_grant
from proxy.rotation.postgres import scram_verifier
from proxy.rotation.secret import PASSWORD_ALPHABET, alternate_username, generate_password
from proxy.rotation.settings import RotationSettings
from proxy.rotation.steps import STEPS, Rotator
from tests.conftest import Secrets, rds_mysql_secret, rds_secret

# --- the two databases behind one interface ----------------------------------------------------


@dataclass
class Account:
    """A user of our own with a database it owns (table ``notes``) and a secret for it."""

    user: str
    password: str
    database: str
    secret_id: str


class Backend:
    name: str
    login_error: type[Exception]

    def __init__(self, server: Any, known: Secrets) -> None:
        self.server = server
        self.known = known
        self.master_arn: str | None = None

    def connect(self, user: str, password: str, database: str) -> Any:
        raise NotImplementedError

    def secret(self, user: str, password: str, database: str) -> dict[str, object]:
        raise NotImplementedError

    def create_user(self, user: str, password: str, database: str) -> None:
        raise NotImplementedError

    def create_admin(self, user: str, password: str) -> None:
        raise NotImplementedError

    def can_log_in(self, user: str, password: str, database: str) -> bool:
        try:
            self.connect(user, password, database).close()
        except self.login_error:
            return False
        return True

    def write_and_read(self, user: str, password: str, database: str) -> int:
        """Insert a note as ``user`` and return how many notes there are."""
        connection = self.connect(user, password, database)
        try:
            cursor = connection.cursor()
            cursor.execute("INSERT INTO notes (body) VALUES ('written by " + user + "')")
            cursor.execute("SELECT count(*) FROM notes")
            return int(cursor.fetchone()[0])
        finally:
            connection.close()

    async def create_account(self, sm_client: Any, *, master: bool = False) -> Account:
        user = f"rot_{self.name[:2]}_{secrets.token_hex(4)}"
        password = self.known.new_password()
        self.create_user(user, password, user)
        value = self.secret(user, password, user)
        if master:
            value["masterarn"] = await self.master(sm_client)
        secret_id = f"rotation/{user}"
        await sm_client.create_secret(Name=secret_id, SecretString=json.dumps(value))
        return Account(user, password, user, secret_id)

    async def master(self, sm_client: Any) -> str:
        """The ARN of a master secret (an admin user of our own), made once per backend."""
        if self.master_arn is None:
            user = f"rot_admin_{secrets.token_hex(4)}"
            password = self.known.new_password()
            self.create_admin(user, password)
            value = self.secret(user, password, "")
            value.pop("dbname")
            response = await sm_client.create_secret(Name=f"rotation/{user}", SecretString=json.dumps(value))
            self.master_arn = str(response["ARN"])
        return self.master_arn


class PostgresBackend(Backend):
    name = "postgres"
    login_error = psycopg.OperationalError
    server: ThrowawayPostgres

    def connect(self, user: str, password: str, database: str) -> Any:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.server.port,
            user=user,
            password=password,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def secret(self, user: str, password: str, database: str) -> dict[str, object]:
        return rds_secret(self.server, user, password, dbname=database)

    def create_user(self, user: str, password: str, database: str) -> None:
        self.server.create_user(user, password)
        self.server.create_database(database, owner=user)
        self.server.sql(
            "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);"
            f'ALTER TABLE notes OWNER TO "{user}";',
            database=database,
        )

    def create_admin(self, user: str, password: str) -> None:
        # The fixture's own superuser logs in only over the socket (trust): masters need a password.
        self.server.create_user(user, password, superuser=True)


class MariaDBBackend(Backend):
    name = "mariadb"
    login_error = pymysql.err.OperationalError
    server: ThrowawayMariaDB

    def connect(self, user: str, password: str, database: str) -> Any:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.server.port,
            user=user,
            password=password,
            database=database,
            autocommit=True,
            connect_timeout=5,
        )

    def secret(self, user: str, password: str, database: str) -> dict[str, object]:
        return rds_mysql_secret(self.server, user, password) | {"dbname": database}

    def create_user(self, user: str, password: str, database: str) -> None:
        self.server.create_user(user, password)
        self.server.create_database(database, owner=user)
        self.server.sql(
            "CREATE TABLE notes (id INT AUTO_INCREMENT PRIMARY KEY, body VARCHAR(200) NOT NULL)",
            database=database,
        )

    def create_admin(self, user: str, password: str) -> None:
        self.server.create_user(user, password)
        self.server.sql(f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%' WITH GRANT OPTION")


_backends: dict[str, Backend] = {}


@pytest.fixture(params=["postgres", "mariadb"])
def backend(request: pytest.FixtureRequest, known_secrets: Secrets) -> Backend:
    if request.param not in _backends:
        if request.param == "postgres":
            _backends["postgres"] = PostgresBackend(request.getfixturevalue("pg"), known_secrets)
        else:
            _backends["mariadb"] = MariaDBBackend(request.getfixturevalue("mariadb"), known_secrets)
    return _backends[request.param]


@pytest.fixture
def postgres(pg: ThrowawayPostgres, known_secrets: Secrets) -> Backend:
    return _backends.setdefault("postgres", PostgresBackend(pg, known_secrets))


@pytest.fixture(scope="module")
def settings(tls: TlsFiles) -> RotationSettings:
    # The secrets say host "localhost"; the certificate names 127.0.0.1 as well.
    return RotationSettings(tls="verify-full", tls_ca_file=tls.ca_file, upstream_host="127.0.0.1")


@pytest.fixture
def rotator(sm_client: Any, settings: RotationSettings) -> Rotator:
    return Rotator(sm_client, settings)


@pytest.fixture
def alternating(sm_client: Any, settings: RotationSettings) -> Rotator:
    return Rotator(sm_client, dataclasses.replace(settings, strategy="alternating-users"))


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture, known_secrets: Secrets) -> Iterator[None]:
    """Whatever a test does, no password it or the rotation made shows up in a log record."""
    caplog.set_level(logging.DEBUG, logger="proxy")
    yield
    text = caplog.text
    leaked = [value for value in known_secrets.values if value in text]
    assert not leaked, "a secret value reached the log"


# --- reading the secret ------------------------------------------------------------------------


async def stages(sm_client: Any, secret_id: str) -> dict[str, list[str]]:
    metadata = await sm_client.describe_secret(SecretId=secret_id)
    return {version: sorted(labels) for version, labels in metadata["VersionIdsToStages"].items()}


async def read(sm_client: Any, secret_id: str, known: Secrets, **selector: str) -> tuple[str, dict[str, Any]]:
    """(version id, JSON) of one version; its password joins the suite's log scan."""
    response = await sm_client.get_secret_value(
        SecretId=secret_id, **(selector or {"VersionStage": AWSCURRENT})
    )
    value = json.loads(response["SecretString"])
    known.values.add(value["password"])
    return response["VersionId"], value


def holder(version_stages: dict[str, list[str]], stage: str) -> list[str]:
    return [version for version, labels in version_stages.items() if stage in labels]


# --- pure helpers ------------------------------------------------------------------------------


def test_generated_passwords_are_long_random_and_safe_to_quote() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert len(password) == 32
        assert set(password) <= set(PASSWORD_ALPHABET)
    assert not set(PASSWORD_ALPHABET) & set("'\"\\@/:% `$")


def test_scram_verifier_has_postgres_layout_and_a_fresh_salt() -> None:
    pattern = re.compile(r"^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}$")
    first, second = scram_verifier("pw-example"), scram_verifier("pw-example")
    assert pattern.match(first) and pattern.match(second)
    assert first != second
    assert "pw-example" not in first


def test_usernames_alternate_between_user_and_clone() -> None:
    assert alternate_username("app") == "app_clone"
    assert alternate_username("app_clone") == "app"
    assert alternate_username(alternate_username("app")) == "app"


def test_literals_are_quoted_for_either_backslash_mode() -> None:
    assert pg_sql.literal("it's") == "'it''s'"
    assert pg_sql.literal("a\\b") == "E'a\\\\b'"
    assert mysql_sql.literal("it's a\\b") == "'it''s a\\\\b'"
    assert mysql_sql.literal("it's a\\b", backslash_escapes=False) == "'it''s a\\b'"


def test_clone_grant_rewrites_the_grantee_and_drops_the_password_hash() -> None:
    clone = "'app_clone'@'%'"
    assert (
        clone_grant("GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*ABCDEF'", "app", "%", clone)
        == "GRANT USAGE ON *.* TO 'app_clone'@'%'"
    )
    assert (
        clone_grant("GRANT SELECT ON `db`.* TO `app`@`%` WITH GRANT OPTION", "app", "%", clone)
        == "GRANT SELECT ON `db`.* TO 'app_clone'@'%' WITH GRANT OPTION"
    )
    assert clone_grant("GRANT ALL PRIVILEGES ON `d`.* TO 'app'@'%'", "app", "%", clone).endswith(
        f"TO {clone}"
    )
    with pytest.raises(RotationError, match="cannot find the grantee"):
        clone_grant("GRANT USAGE ON *.* TO `other`@`%`", "app", "%", clone)


# --- single-user ---------------------------------------------------------------------------------


async def test_single_user_rotation_replaces_the_password(
    backend: Backend, rotator: Rotator, sm_client: Any, known_secrets: Secrets
) -> None:
    account = await backend.create_account(sm_client)
    old_version, _ = await read(sm_client, account.secret_id, known_secrets)

    token = await rotator.rotate(account.secret_id)

    version, value = await read(sm_client, account.secret_id, known_secrets)
    assert version == token
    assert value["username"] == account.user
    assert value["password"] != account.password
    assert backend.can_log_in(account.user, value["password"], account.database)
    assert not backend.can_log_in(account.user, account.password, account.database)
    assert await stages(sm_client, account.secret_id) == {token: [AWSCURRENT], old_version: [AWSPREVIOUS]}
    # Everything but the password is kept.
    assert {k: v for k, v in value.items() if k != "password"} == {
        k: v for k, v in backend.secret(account.user, "", account.database).items() if k != "password"
    }


async def test_whole_rotation_again_with_the_same_token_changes_nothing(
    backend: Backend, rotator: Rotator, sm_client: Any, known_secrets: Secrets
) -> None:
    account = await backend.create_account(sm_client)
    token = await rotator.rotate(account.secret_id)
    before = await stages(sm_client, account.secret_id)
    _, value = await read(sm_client, account.secret_id, known_secrets)

    assert await rotator.rotate(account.secret_id, token=token) == token

    assert await stages(sm_client, account.secret_id) == before
    assert (await read(sm_client, account.secret_id, known_secrets))[1] == value
    assert backend.can_log_in(account.user, value["password"], account.database)


async def test_each_step_run_twice_is_harmless(
    backend: Backend, rotator: Rotator, sm_client: Any, known_secrets: Secrets
) -> None:
    account = await backend.create_account(sm_client)
    old_version, _ = await read(sm_client, account.secret_id, known_secrets)

    token = await rotator.start(account.secret_id)
    _, pending = await read(
        sm_client, account.secret_id, known_secrets, VersionId=token, VersionStage=AWSPENDING
    )
    await rotator.run_step(account.secret_id, token, "createSecret")
    assert (await read(sm_client, account.secret_id, known_secrets, VersionStage=AWSPENDING))[1] == pending
    assert await stages(sm_client, account.secret_id) == {old_version: [AWSCURRENT], token: [AWSPENDING]}

    for step in ("setSecret", "setSecret", "testSecret", "testSecret"):
        await rotator.run_step(account.secret_id, token, step)
        assert backend.can_log_in(account.user, pending["password"], account.database)
        assert not backend.can_log_in(account.user, account.password, account.database)
    for _ in range(2):
        await rotator.run_step(account.secret_id, token, "finishSecret")
        assert await stages(sm_client, account.secret_id) == {token: [AWSCURRENT], old_version: [AWSPREVIOUS]}
    assert (await read(sm_client, account.secret_id, known_secrets))[1] == pending


async def test_set_secret_logs_in_with_awsprevious_when_awscurrent_is_wrong(
    postgres: Backend, rotator: Rotator, sm_client: Any, known_secrets: Secrets
) -> None:
    account = await postgres.create_account(sm_client)
    wrong = postgres.secret(account.user, known_secrets.new_password(), account.database)
    await put_secret_json(sm_client, account.secret_id, wrong)  # the real password is now AWSPREVIOUS

    await rotator.rotate(account.secret_id)

    _, value = await read(sm_client, account.secret_id, known_secrets)
    assert postgres.can_log_in(account.user, value["password"], account.database)


# --- alternating users ---------------------------------------------------------------------------


async def test_alternating_users_flip_between_user_and_clone(
    backend: Backend, alternating: Rotator, sm_client: Any, known_secrets: Secrets
) -> None:
    account = await backend.create_account(sm_client, master=True)
    clone = account.user + "_clone"
    first_version, _ = await read(sm_client, account.secret_id, known_secrets)

    second_version = await alternating.rotate(account.secret_id)

    _, second = await read(sm_client, account.secret_id, known_secrets)
    assert second["username"] == clone
    assert second["masterarn"] == backend.master_arn
    assert backend.can_log_in(clone, second["password"], account.database)
    # The clone works with the user's tables, and the previous credentials keep working.
    assert backend.write_and_read(clone, second["password"], account.database) == 1
    assert backend.write_and_read(account.user, account.password, account.database) == 2
    assert await stages(sm_client, account.secret_id) == {
        second_version: [AWSCURRENT],
        first_version: [AWSPREVIOUS],
    }

    third_version = await alternating.rotate(account.secret_id)

    _, third = await read(sm_client, account.secret_id, known_secrets)
    assert third["username"] == account.user
    assert backend.write_and_read(account.user, third["password"], account.database) == 3
    assert not backend.can_log_in(account.user, account.password, account.database)
    assert backend.write_and_read(clone, second["password"], account.database) == 4  # now AWSPREVIOUS
    version_stages = await stages(sm_client, account.secret_id)
    assert holder(version_stages, AWSCURRENT) == [third_version]
    assert holder(version_stages, AWSPREVIOUS) == [second_version]
    assert holder(version_stages, AWSPENDING) == []

    fourth_version = await alternating.rotate(account.secret_id)  # back to the clone, which exists

    _, fourth = await read(sm_client, account.secret_id, known_secrets)
    assert fourth["username"] == clone
    assert backend.write_and_read(clone, fourth["password"], account.database) == 5
    assert not backend.can_log_in(clone, second["password"], account.database)
    assert holder(await stages(sm_client, account.secret_id), AWSCURRENT) == [fourth_version]


async def test_alternating_set_secret_is_idempotent(
    backend: Backend, alternating: Rotator, sm_client: Any, known_secrets: Secrets
) -> None:
    account = await backend.create_account(sm_client, master=True)
    token = await alternating.start(account.secret_id)
    _, pending = await read(sm_client, account.secret_id, known_secrets, VersionStage=AWSPENDING)

    await alternating.run_step(account.secret_id, token, "setSecret")
    await alternating.run_step(account.secret_id, token, "setSecret")
    await alternating.rotate(account.secret_id, token=token)

    assert backend.can_log_in(pending["username"], pending["password"], account.database)
    assert (await read(sm_client, account.secret_id, known_secrets))[1] == pending


# --- refusals and failures -----------------------------------------------------------------------


async def test_a_token_that_is_not_a_pending_version_is_refused(
    postgres: Backend, rotator: Rotator, sm_client: Any, known_secrets: Secrets
) -> None:
    account = await postgres.create_account(sm_client)
    stranger = str(uuid.uuid4())
    for step in STEPS:
        with pytest.raises(RotationError, match="is not a version of the secret") as caught:
            await rotator.run_step(account.secret_id, stranger, step)
        assert caught.value.step == step
        assert account.secret_id in str(caught.value)

    old_version, _ = await read(sm_client, account.secret_id, known_secrets)
    await rotator.rotate(account.secret_id)
    with pytest.raises(RotationError, match="neither AWSCURRENT nor AWSPENDING"):
        await rotator.run_step(account.secret_id, old_version, "setSecret")
    with pytest.raises(RotationError, match="unknown step"):
        await rotator.run_step(account.secret_id, old_version, "dropDatabase")


async def test_a_failed_step_names_itself_and_no_secret(
    postgres: Backend, rotator: Rotator, sm_client: Any, known_secrets: Secrets
) -> None:
    wrong = known_secrets.new_password()
    value = postgres.secret("rot_nobody_" + secrets.token_hex(4), wrong, "postgres")
    secret_id = f"rotation/broken-{secrets.token_hex(4)}"
    await sm_client.create_secret(Name=secret_id, SecretString=json.dumps(value))
    old_version, _ = await read(sm_client, secret_id, known_secrets)

    with pytest.raises(RotationError) as caught:
        await rotator.rotate(secret_id)

    _, pending = await read(sm_client, secret_id, known_secrets, VersionStage=AWSPENDING)
    message = str(caught.value)
    assert caught.value.step == "setSecret"
    assert message.startswith(f"setSecret for secret {secret_id!r}: cannot log in")
    assert wrong not in message and pending["password"] not in message
    assert wrong not in repr(caught.value) and caught.value.__cause__ is None
    assert holder(await stages(sm_client, secret_id), AWSCURRENT) == [old_version]


# --- pauses, the CLI, the Lambda handler ----------------------------------------------------------


async def test_pause_after_set_secret_leaves_the_new_password_live_but_not_yet_current(
    postgres: Backend, rotator: Rotator, sm_client: Any, known_secrets: Secrets
) -> None:
    account = await postgres.create_account(sm_client)
    old_version, _ = await read(sm_client, account.secret_id, known_secrets)
    set_done = asyncio.Event()

    def on_step(step: str) -> None:
        if step == "setSecret":
            set_done.set()

    began = time.monotonic()
    rotation = asyncio.create_task(
        rotator.rotate(account.secret_id, pause_after={"setSecret": 1.0}, on_step=on_step)
    )
    try:
        await asyncio.wait_for(set_done.wait(), 10)
        # During the pause: the database already takes the pending password, the secret still
        # hands out the old version.
        assert holder(await stages(sm_client, account.secret_id), AWSCURRENT) == [old_version]
        _, pending = await read(sm_client, account.secret_id, known_secrets, VersionStage=AWSPENDING)
        assert await asyncio.to_thread(
            postgres.can_log_in, account.user, pending["password"], account.database
        )
        assert not rotation.done()
        token = await rotation
    finally:
        rotation.cancel()
    assert time.monotonic() - began >= 1.0
    assert holder(await stages(sm_client, account.secret_id), AWSCURRENT) == [token]


async def test_cli_rotates_and_prints_only_names_and_ids(
    backend: Backend, sm: LocalSecretsManager, sm_client: Any, tls: TlsFiles, known_secrets: Secrets
) -> None:
    account = await backend.create_account(sm_client)
    command = [
        sys.executable, "-m", "proxy", "--log-level", "debug", "rotate",
        "--secret-id", account.secret_id,
        "--endpoint-url", sm.endpoint_url, "--region", sm.region,
        "--tls", "verify-full", "--tls-ca-file", str(tls.ca_file), "--upstream-host", "127.0.0.1",
        "--pause-after", "testSecret", "100ms",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **sm.environ()},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 0, stderr.decode()
    token, value = await read(sm_client, account.secret_id, known_secrets)
    lines = stdout.decode().splitlines()
    assert [line.split(":")[0] for line in lines] == list(STEPS)
    assert all(account.secret_id in line and token in line for line in lines)
    assert "pausing 0.1s" in lines[2]
    output = stdout.decode() + stderr.decode()
    assert not [secret for secret in known_secrets.values if secret in output]
    assert backend.can_log_in(account.user, value["password"], account.database)


async def test_cli_failure_is_one_line_naming_the_step(sm: LocalSecretsManager, tls: TlsFiles) -> None:
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "proxy", "rotate", "--secret-id", "rotation/no-such-secret"],
        *["--endpoint-url", sm.endpoint_url, "--region", sm.region, "--tls-ca-file", str(tls.ca_file)],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **sm.environ()},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 1
    assert stdout == b""
    errors = [line for line in stderr.decode().splitlines() if line.startswith("rotaproxy:")]
    assert len(errors) == 1
    assert errors[0].startswith("rotaproxy: rotate: createSecret for secret 'rotation/no-such-secret':")
    assert "ResourceNotFoundException" in errors[0]


async def test_lambda_handler_runs_one_step(
    backend: Backend,
    rotator: Rotator,
    sm: LocalSecretsManager,
    sm_client: Any,
    tls: TlsFiles,
    known_secrets: Secrets,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    account = await backend.create_account(sm_client)
    old_version, _ = await read(sm_client, account.secret_id, known_secrets)
    token = await rotator.start(account.secret_id)  # as Secrets Manager's RotateSecret would
    _, pending = await read(sm_client, account.secret_id, known_secrets, VersionStage=AWSPENDING)
    monkeypatch.setenv("SECRETS_MANAGER_ENDPOINT", sm.endpoint_url)
    monkeypatch.setenv("ROTAPROXY_STRATEGY", "single-user")
    monkeypatch.setenv("ROTAPROXY_TLS", "verify-full")
    monkeypatch.setenv("ROTAPROXY_TLS_CA_FILE", str(tls.ca_file))
    monkeypatch.setenv("ROTAPROXY_UPSTREAM_HOST", "127.0.0.1")
    event = {"SecretId": account.secret_id, "ClientRequestToken": token, "Step": "setSecret"}

    # Its own asyncio.run, as in Lambda: from a thread, since this test's loop is running.
    await asyncio.to_thread(lambda_handler, event, None)

    assert backend.can_log_in(account.user, pending["password"], account.database)
    assert await stages(sm_client, account.secret_id) == {old_version: [AWSCURRENT], token: [AWSPENDING]}
    for step in ("testSecret", "finishSecret"):
        await asyncio.to_thread(lambda_handler, {**event, "Step": step}, None)
    assert await stages(sm_client, account.secret_id) == {token: [AWSCURRENT], old_version: [AWSPREVIOUS]}


def test_settings_reject_unknown_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="strategy"):
        RotationSettings(strategy="every-user")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not exist"):
        RotationSettings(tls_ca_file=tmp_path / "missing.pem")
