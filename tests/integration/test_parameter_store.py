"""SSM Parameter Store as a credential source, against moto's SSM in the suite's standalone moto
server (through aioboto3): real clients through pools on a parameter, a new parameter version and
alternating-users rotation under load, Parameter Store down under load, every error case, and
the values never shown."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import asyncpg
import pytest

from proxy.config import AwsConfig, CredentialsConfig
from proxy.credentials.aws import AwsClients
from proxy.credentials.base import CredentialsError
from proxy.credentials.parameter_store import ParameterStoreSource
from proxy.credentials.sources import make_source
from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import free_port
from proxy.local.secrets_manager import LocalSecretsManager
from tests.conftest import ProxyLauncher, Secrets, get_json, pool_toml, rds_mysql_secret, rds_secret
from tests.integration.test_credentials import assert_no_leak
from tests.integration.test_rotation_under_load import (
    CLIENTS,
    DRAIN_DEADLINE,
    POOL_SIZE,
    Accounts,
    Engine,
    Load,
    logs_contain,
    make_accounts,
    run_load,
    wait_until,
)

SECURE = "SecureString"


@pytest.fixture(scope="session")
async def ssm_client(sm: LocalSecretsManager) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("ssm", **sm.client_kwargs()) as client:
        yield client


@pytest.fixture
async def clients(sm: LocalSecretsManager) -> AsyncIterator[AwsClients]:
    clients = AwsClients(AwsConfig(endpoint_url=sm.endpoint_url, region=sm.region))
    yield clients
    await clients.close()


def new_name(prefix: str = "/test") -> str:
    return f"{prefix}/{secrets.token_hex(4)}/db"


async def put_json(
    ssm: Any, name: str, value: dict[str, object] | str, *, overwrite: bool = False, kind: str = SECURE
) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    response = await ssm.put_parameter(Name=name, Value=text, Type=kind, Overwrite=overwrite)
    return str(response["Version"])


async def put_fields(ssm: Any, path: str, fields: dict[str, object]) -> None:
    """The path layout: one parameter per field, the password a SecureString."""
    for leaf, value in fields.items():
        await ssm.put_parameter(
            Name=f"{path}/{leaf}", Value=str(value), Type=SECURE if leaf == "password" else "String"
        )


async def remember_all_passwords(ssm: Any, name: str, known: Secrets) -> None:
    """Every password any version of ``name`` held joins the suite's log scan."""
    history = await ssm.get_parameter_history(Name=name, WithDecryption=True)
    for item in history["Parameters"]:
        known.values.add(str(json.loads(item["Value"])["password"]))


def parameter_pool_toml(name: str, parameter: str, *, poll_interval: str = "30s", **settings: object) -> str:
    """``pool_toml`` with Parameter Store credentials instead of a secret."""
    return pool_toml(name, "-", poll_interval=poll_interval, **settings).replace(
        'secret_id = "-"', f'source = "parameterstore"\nparameter = "{parameter}"'
    )


def ps_source(name: str, clients: AwsClients) -> ParameterStoreSource:
    source = make_source(CredentialsConfig(source="parameterstore", parameter=name), clients)
    assert isinstance(source, ParameterStoreSource)
    return source


# --- the source, in process ---------------------------------------------------------------------


async def test_a_securestring_of_rds_json_is_read_decrypted_and_polled_by_version(
    ssm_client: Any, clients: AwsClients, known_secrets: Secrets
) -> None:
    name, first, second = new_name(), known_secrets.new_password(), known_secrets.new_password()
    await put_json(ssm_client, name, {"username": "app", "password": first, "host": "db", "port": 5432})
    source = ps_source(name, clients)

    credentials = await source.current()
    assert (credentials.username, credentials.password, credentials.host, credentials.port) == (
        "app",
        first,
        "db",
        5432,
    )
    assert credentials.version_id == "1" and source.layout == "parameter"
    assert await source.poll() is False  # same version: nothing decoded, nothing moved

    await put_json(ssm_client, name, {"username": "app", "password": second}, overwrite=True)
    assert await source.poll() is True
    assert (source.cached and source.cached.password, source.cached and source.cached.version_id) == (
        second,
        "2",
    )
    assert first not in json.dumps(source.state()) and second not in json.dumps(source.state())
    await source.close()


async def test_a_path_of_field_parameters_is_read_with_getparametersbypath(
    ssm_client: Any, clients: AwsClients, known_secrets: Secrets
) -> None:
    path, password = new_name(), known_secrets.new_password()
    await put_fields(
        ssm_client, path, {"username": "app", "password": password, "port": "5433", "dbname": "d"}
    )
    source = ps_source(path, clients)

    credentials = await source.current()

    assert (credentials.username, credentials.password, credentials.port, credentials.dbname) == (
        "app",
        password,
        5433,
        "d",
    )
    assert credentials.version_id == "dbname:1,password:1,port:1,username:1"
    assert source.layout == "path"
    new_password = known_secrets.new_password()
    await ssm_client.put_parameter(Name=f"{path}/password", Value=new_password, Type=SECURE, Overwrite=True)
    assert await source.poll() is True
    assert source.cached is not None and source.cached.password == new_password
    assert source.cached.version_id == "dbname:1,password:2,port:1,username:1"


@pytest.mark.parametrize(
    ("layout", "build", "problem"),
    [
        ("none", None, "the parameter does not exist (ParameterNotFound)"),
        ("json", lambda m: f"username=app password={m}", "the parameter's value is not valid JSON"),
        ("json", lambda m: json.dumps(["app", m]), "the parameter's value is JSON but not an object"),
        (
            "json",
            lambda m: json.dumps({"username": "app", "host": m}),
            "the parameter's JSON lacks a string 'password'",
        ),
        ("json", lambda m: json.dumps({"password": m}), "the parameter's JSON lacks a string 'username'"),
        (
            "json",
            lambda m: json.dumps({"username": "app", "password": m, "port": "x"}),
            "the parameter's 'port' is not a valid port number",
        ),
        ("path", lambda m: {"username": "app", "host": m}, "the path has no parameter 'password'"),
    ],
)
async def test_every_bad_parameter_names_the_parameter_and_the_cause_never_the_value(
    ssm_client: Any, clients: AwsClients, known_secrets: Secrets, layout: str, build: Any, problem: str
) -> None:
    name, marker = new_name(), known_secrets.new_password()
    if layout == "json":
        await put_json(ssm_client, name, build(marker))
    elif layout == "path":
        await put_fields(ssm_client, name, build(marker))
    source = ps_source(name, clients)

    with pytest.raises(CredentialsError) as info:
        await source.current()

    assert str(info.value) == f"cannot get credentials from parameter {name!r}: {info.value.problem}"
    assert info.value.problem.startswith(problem)
    assert_no_leak(info.value, marker)
    assert source.last_error is not None and marker not in source.last_error


async def test_access_denied_names_the_parameter_and_the_policy(
    sm: LocalSecretsManager, ssm_client: Any, known_secrets: Secrets
) -> None:
    """moto's IAM enforcement (server-wide, so switched on only around the one read): a user
    whose policy allows another parameter only."""
    name, allowed = new_name(), new_name()
    await put_json(ssm_client, name, {"username": "app", "password": known_secrets.new_password()})
    async with aioboto3.Session().client("iam", **sm.client_kwargs()) as iam:
        user = f"reader-{secrets.token_hex(3)}"
        await iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "ssm:GetParameter",
                    "Resource": f"arn:aws:ssm:*:*:parameter{allowed}",
                }
            ],
        }
        await iam.put_user_policy(UserName=user, PolicyName="read-one", PolicyDocument=json.dumps(policy))
        key = (await iam.create_access_key(UserName=user))["AccessKey"]
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = (
        key["AccessKeyId"],
        key["SecretAccessKey"],
    )
    limited = AwsClients(AwsConfig(endpoint_url=sm.endpoint_url, region=sm.region))

    def reset_auth(value: str) -> None:
        request = urllib.request.Request(
            f"{sm.endpoint_url}/moto-api/reset-auth",
            data=value.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would be parsed away
        )
        urllib.request.urlopen(request, timeout=5).close()

    try:
        await asyncio.to_thread(reset_auth, "0")
        with pytest.raises(CredentialsError) as info:
            await ps_source(name, limited).current()
    finally:
        await asyncio.to_thread(reset_auth, "inf")
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value
        await limited.close()
    assert info.value.source == f"parameter {name!r}"
    assert info.value.problem.startswith("access denied (check the IAM policy: ssm:GetParameter")
    assert "is not authorized to perform: ssm:GetParameter" in info.value.problem
    assert "<" not in info.value.problem  # AWS's words, not its XML


async def test_an_unreachable_parameter_store_keeps_the_cached_credentials(
    sm: LocalSecretsManager, ssm_client: Any, clients: AwsClients, known_secrets: Secrets
) -> None:
    name, password = new_name(), known_secrets.new_password()
    await put_json(ssm_client, name, {"username": "app", "password": password})
    source = ps_source(name, clients)
    cached = await source.current()

    sm.stop()
    try:
        with pytest.raises(CredentialsError) as info:
            await source.poll()
        assert info.value.problem == "Parameter Store unreachable (EndpointConnectionError)"
        assert await source.current() is cached  # stale-while-revalidate
    finally:
        sm.start()
    assert await source.poll() is False


# --- real clients through pools on a parameter --------------------------------------------------


async def test_psql_and_asyncpg_through_a_pool_on_a_parameter(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Any, ssm_client: Any
) -> None:
    name = new_name()
    await put_json(ssm_client, name, rds_secret(pg, "app", users.app))
    running = launcher.start(
        parameter_pool_toml(
            "ps_pg", name, engine="postgres", database="appdb", tls="disable", upstream=f"127.0.0.1:{pg.port}"
        )
        + "\n"
        + parameter_pool_toml(
            "ps_missing",
            new_name("/missing"),
            engine="postgres",
            tls="disable",
            upstream=f"127.0.0.1:{pg.port}",
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = await asyncio.to_thread(
        subprocess.run,
        [
            "psql",
            "-X",
            "-w",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            str(running.port),
            "-U",
            "x",
            "-d",
            "ps_pg",
            "-c",
            "SELECT current_user",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"
    conn = await asyncpg.connect(host="127.0.0.1", port=running.port, user="x", database="ps_pg")
    try:
        assert await conn.fetchval("SELECT current_user") == "app"
    finally:
        await conn.close()
    with pytest.raises(asyncpg.PostgresError) as info:
        await asyncpg.connect(
            host="127.0.0.1", port=running.port, user="x", database="ps_missing", timeout=10
        )
    assert info.value.sqlstate == "08001"
    assert "parameter '/missing/" in str(info.value) and "ParameterNotFound" in str(info.value)


async def test_the_mariadb_client_through_a_pool_on_a_parameter_path(
    launcher: ProxyLauncher, mariadb: ThrowawayMariaDB, mysql_users: Any, ssm_client: Any
) -> None:
    path = new_name()
    await put_fields(ssm_client, path, rds_mysql_secret(mariadb, "app", mysql_users.app))
    running = launcher.start(
        parameter_pool_toml(
            "ps_my",
            path,
            engine="mysql",
            database="appdb",
            tls="disable",
            upstream=f"127.0.0.1:{mariadb.port}",
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSQL")}
    result = await asyncio.to_thread(
        subprocess.run,
        [
            "mariadb",
            "-h",
            "127.0.0.1",
            "-P",
            str(running.port),
            "-u",
            "x",
            "--batch",
            "--skip-column-names",
            "appdb",
            "-e",
            "SELECT CURRENT_USER()",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app@%"


async def test_an_auth_failure_rereads_the_parameter_at_once(
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    mariadb: ThrowawayMariaDB,
    ssm_client: Any,
    known_secrets: Secrets,
) -> None:
    """The poll is an hour away; the password changes under the pool and the parameter names
    a user that works: the next login that is refused re-reads and moves on, unnoticed."""
    accounts = make_accounts("postgres", pg, mariadb, known_secrets)
    name = new_name()
    await put_json(
        ssm_client, name, {**accounts.base, "username": accounts.user, "password": accounts.password}
    )
    running = launcher.start(
        parameter_pool_toml(
            "ps_auth",
            name,
            poll_interval="1h",
            engine="postgres",
            database="appdb",
            tls="disable",
            upstream=f"127.0.0.1:{pg.port}",
        )
    )
    conn = await asyncpg.connect(host="127.0.0.1", port=running.port, user="x", database="appdb")
    await conn.close()
    clone, clone_password = await add_clone(accounts, known_secrets)
    version = await put_json(
        ssm_client, name, {**accounts.base, "username": clone, "password": clone_password}, overwrite=True
    )
    pg.sql(f"ALTER ROLE {accounts.user} PASSWORD '{known_secrets.new_password()}'")
    pg.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{accounts.user}'")
    await asyncio.sleep(0.3)

    conn = await asyncpg.connect(host="127.0.0.1", port=running.port, user="x", database="appdb")
    try:
        assert await conn.fetchval("SELECT current_user") == clone
    finally:
        await conn.close()
    assert f"moved from version 1 to {version}" in running.logs()


# --- under load -------------------------------------------------------------------------------


async def add_clone(accounts: Accounts, known_secrets: Secrets) -> tuple[str, str]:
    """What an operator (or the rotation) does before pointing the parameter at another user."""
    clone, password = f"{accounts.user}_clone", known_secrets.new_password()
    server = accounts.server
    if isinstance(server, ThrowawayPostgres):
        server.create_user(clone, password)
        server.sql(f"GRANT {accounts.user} TO {clone}")
    else:
        server.create_user(clone, password)
        server.sql(f"GRANT ALL ON appdb.* TO '{clone}'@'%'")
    return clone, password


async def start_load_setup(
    kind: str,
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    mariadb: ThrowawayMariaDB,
    ssm_client: Any,
    known_secrets: Secrets,
    admin_port: int | None = None,
) -> tuple[Accounts, Engine, str]:
    accounts = make_accounts(kind, pg, mariadb, known_secrets)
    master = new_name("/master")
    await put_json(
        ssm_client, master, {**accounts.base, "username": accounts.admin, "password": accounts.admin_password}
    )
    name = new_name()
    value = {
        **accounts.base,
        "username": accounts.user,
        "password": accounts.password,
        "masterparameter": master,
    }
    await put_json(ssm_client, name, value)
    running = launcher.start(
        parameter_pool_toml(
            f"ps_{kind}",
            name,
            poll_interval="1s",
            engine="mysql" if kind == "mysql" else "postgres",
            database="appdb",
            tls="disable",
            max_server_connections=POOL_SIZE,
            borrow_timeout="10s",
        ),
        admin_port=admin_port,
    )
    return accounts, Engine(kind, running.port, name, accounts.user, accounts.server, accounts.table), name


async def finish(load: Load, runner: asyncio.Task[None], engine: Engine) -> None:
    load.stop.set()
    await runner
    assert load.errors == []
    assert len(load.acknowledged) > 100
    assert load.acknowledged - await asyncio.to_thread(engine.stored_rows) == set()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
async def test_a_new_parameter_version_under_load_costs_no_client_an_error(
    kind: str,
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    mariadb: ThrowawayMariaDB,
    ssm_client: Any,
    known_secrets: Secrets,
) -> None:
    accounts, engine, name = await start_load_setup(kind, launcher, pg, mariadb, ssm_client, known_secrets)
    running = launcher.started[-1]
    load = Load()
    runner = asyncio.create_task(run_load(engine, load, clients=CLIENTS))
    try:
        await asyncio.sleep(1.0)
        clone, clone_password = await add_clone(accounts, known_secrets)
        value = {**accounts.base, "username": clone, "password": clone_password}
        version = await put_json(ssm_client, name, value, overwrite=True)
        await wait_until(logs_contain(running, f"to {version} (generation"), 5.0)
        # Make before break: every connection of the old version closes (idle at once, busy
        # when released), while the clients go on.
        await wait_until(lambda: _no_sessions(engine, accounts.user), DRAIN_DEADLINE)
        assert await asyncio.to_thread(engine.session_ids, clone)
        await asyncio.sleep(0.5)
    finally:
        await finish(load, runner, engine)


async def _no_sessions(engine: Engine, username: str) -> bool:
    return not await asyncio.to_thread(engine.session_ids, username)


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
async def test_alternating_users_rotation_of_a_parameter_under_load_costs_no_client_an_error(
    kind: str,
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    mariadb: ThrowawayMariaDB,
    ssm_client: Any,
    sm: LocalSecretsManager,
    known_secrets: Secrets,
) -> None:
    accounts, engine, name = await start_load_setup(kind, launcher, pg, mariadb, ssm_client, known_secrets)
    load = Load()
    runner = asyncio.create_task(run_load(engine, load, clients=CLIENTS))
    try:
        await asyncio.sleep(1.0)
        for old_user, new_user in [
            (accounts.user, f"{accounts.user}_clone"),
            (f"{accounts.user}_clone", accounts.user),
        ]:
            output = await rotate_cli(sm, name)
            await remember_all_passwords(ssm_client, name, known_secrets)
            assert output.splitlines()[:3] == [
                f"setPassword: done for parameter {name}",
                f"testPassword: done for parameter {name}",
                f"putParameter: done for parameter {name}",
            ]
            assert known_secrets.values.isdisjoint(output.split())
            await wait_until(lambda old_user=old_user: _no_sessions(engine, old_user), DRAIN_DEADLINE)
            assert await asyncio.to_thread(engine.session_ids, new_user)
    finally:
        await finish(load, runner, engine)
    history = await ssm_client.get_parameter_history(Name=name, WithDecryption=True)
    assert [item["Version"] for item in history["Parameters"]] == [1, 2, 3]
    assert all(item["Type"] == SECURE for item in history["Parameters"])


async def rotate_cli(sm: LocalSecretsManager, name: str) -> str:
    """``rotaproxy rotate --source parameterstore`` as a user runs it; its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "rotate",
        "--source",
        "parameterstore",
        "--parameter",
        name,
        "--strategy",
        "alternating-users",
        "--endpoint-url",
        sm.endpoint_url,
        "--region",
        sm.region,
        "--tls",
        "disable",
        "--upstream-host",
        "127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **sm.environ()},
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
async def test_parameter_store_down_for_10s_under_load_costs_no_client_an_error(
    kind: str,
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    mariadb: ThrowawayMariaDB,
    ssm_client: Any,
    sm: LocalSecretsManager,
    known_secrets: Secrets,
) -> None:
    admin_port = free_port()
    _, engine, _ = await start_load_setup(kind, launcher, pg, mariadb, ssm_client, known_secrets, admin_port)
    running = launcher.started[-1]
    load = Load()
    runner = asyncio.create_task(run_load(engine, load, clients=CLIENTS))
    try:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(sm.stop)
        try:
            await asyncio.sleep(10.0)
            during = (await asyncio.to_thread(get_json, admin_port, "/pools"))[f"ps_{kind}"]["credentials"]
            assert during["poll_failures"] >= 2
            assert "Parameter Store unreachable" in during["last_poll_error"]
            assert (await asyncio.to_thread(get_json, admin_port, "/readyz"))["status"] == "ready"
        finally:
            await asyncio.to_thread(sm.start)
        await wait_until(logs_contain(running, "Parameter Store answers again"), 40.0)
    finally:
        await finish(load, runner, engine)
