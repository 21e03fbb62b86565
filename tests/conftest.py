"""Shared fixtures: real throwaway PostgreSQL (TLS, SCRAM/MD5/cleartext users), a real local
Secrets Manager (moto's server through aioboto3), and rotaproxy run as a real subprocess.

Every password the suite creates is remembered; after the last test, every proxy log is
scanned and the run fails if any password appears in one.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from hypothesis import settings as hypothesis_settings
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from proxy.build import stale_modules
from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import free_port
from proxy.local.proxy_process import ProxyProcess
from proxy.local.secrets_manager import LocalSecretsManager, create_secret
from proxy.local.tls import TlsFiles, make_tls_files

# Property tests run a few dozen examples by default; `pytest --long` runs many more
# (tests/integration/test_pg_differential.py reads the profile's max_examples).
hypothesis_settings.register_profile("long", max_examples=1000)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="run property tests with many more examples")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--long"):
        hypothesis_settings.load_profile("long")
    stale = stale_modules()
    if stale:  # the compiled modules are imported first: the tests would run the old code
        pytest.exit(f"compiled modules older than their .py: {', '.join(stale)}; run `scripts/dev build`", 2)


@dataclass
class Secrets:
    """Every secret value the suite creates: the log scan looks for each of them."""

    values: set[str] = field(default_factory=set, repr=False)  # never in a failed test's output

    def new_password(self) -> str:
        value = "pw-" + secrets.token_urlsafe(18)
        self.values.add(value)
        return value


@dataclass(repr=False)  # passwords: never in a failed test's output
class Users:
    app: str
    app_md5: str
    app_clear: str

    def __repr__(self) -> str:
        return "Users(app=***, app_md5=***, app_clear=***)"


@pytest.fixture(scope="session")
def known_secrets() -> Secrets:
    return Secrets()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rotaproxy")


@pytest.fixture(scope="session")
def tls(workdir: Path) -> TlsFiles:
    return make_tls_files(workdir, "server")


@pytest.fixture(scope="session")
def wrong_tls(workdir: Path) -> TlsFiles:
    return make_tls_files(workdir, "other")


@pytest.fixture(scope="session")
def pg(workdir: Path, tls: TlsFiles) -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres(workdir, tls=tls) as server:
        yield server


@pytest.fixture(scope="session")
def users(pg: ThrowawayPostgres, known_secrets: Secrets) -> Users:
    passwords = Users(
        app=known_secrets.new_password(),
        app_md5=known_secrets.new_password(),
        app_clear=known_secrets.new_password(),
    )
    pg.create_user("app", passwords.app)
    pg.create_user("app_md5", passwords.app_md5, auth="md5")
    pg.create_user("app_clear", passwords.app_clear, auth="password")
    pg.create_database("appdb", owner="app")
    pg.sql(
        "CREATE TABLE items (id serial PRIMARY KEY, note text NOT NULL);"
        "ALTER TABLE items OWNER TO app;"
        "GRANT ALL ON items TO app_md5, app_clear;"
        "GRANT ALL ON SEQUENCE items_id_seq TO app_md5, app_clear;",
        database="appdb",
    )
    return passwords


@pytest.fixture(scope="session")
def sm() -> Iterator[LocalSecretsManager]:
    with LocalSecretsManager() as server:
        os.environ.update(server.environ())
        yield server


@pytest.fixture(scope="session")
async def sm_client(sm: LocalSecretsManager) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("secretsmanager", **sm.client_kwargs()) as client:
        yield client


def rds_secret(pg: ThrowawayPostgres, username: str, password: str, **extra: object) -> dict[str, object]:
    """The JSON layout RDS writes into a managed secret."""
    value: dict[str, object] = {
        "engine": "postgres",
        "host": "localhost",
        "port": pg.port,
        "username": username,
        "password": password,
        "dbname": "appdb",
    }
    value.update(extra)
    return value


async def new_secret(client: Any, value: dict[str, object] | str, prefix: str = "test") -> str:
    secret_id = f"{prefix}/{secrets.token_hex(4)}"
    if isinstance(value, str):
        await client.create_secret(Name=secret_id, SecretString=value)
    else:
        await create_secret(client, secret_id, value)
    return secret_id


def pool_toml(name: str, secret_id: str, *, poll_interval: str = "30s", **settings: object) -> str:
    """One [[pool]] table for ProxyLauncher.start; listen defaults to the launcher's port."""
    settings.setdefault("listen", "127.0.0.1:{port}")
    lines = [f'[[pool]]\nname = "{name}"']
    lines += [
        f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}"
        for key, value in settings.items()
    ]
    lines.append(f'[pool.credentials]\nsecret_id = "{secret_id}"\npoll_interval = "{poll_interval}"\n')
    return "\n".join(lines)


def transaction_pool_settings(pg: ThrowawayPostgres) -> dict[str, object]:
    """What the transaction-mode pools of the PostgreSQL equivalence tests share (``pool_toml``)."""
    return {
        "engine": "postgres",
        "mode": "transaction",
        "upstream": f"127.0.0.1:{pg.port}",
        "database": "appdb",
        "tls": "disable",
        "borrow_timeout": "10s",
    }


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(admin_port: int) -> tuple[str, Samples]:
    """GET /metrics, parsed by prometheus_client's own parser (so the format is checked too)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``condition`` every 0.1 s; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(0.1)


def get_json(port: int, path: str) -> Any:
    """GET the admin API; 503 answers carry JSON too."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def post_json(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST to the admin API; (status, JSON body) whatever the status."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=b"", method="POST", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class ProxyLauncher:
    """Starts rotaproxy subprocesses on config snippets and remembers their logs."""

    def __init__(self, workdir: Path, sm: LocalSecretsManager) -> None:
        self.workdir = workdir
        self.sm = sm
        self.started: list[ProxyProcess] = []

    def render(self, pools_toml: str, *, port: int, admin_port: int | None = None, head: str = "") -> str:
        """A whole config file: ``head`` (top-level keys), [aws], [admin], then the pools."""
        admin = f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n\n' if admin_port else ""
        return (
            head
            + f'[aws]\nendpoint_url = "{self.sm.endpoint_url}"\nregion = "{self.sm.region}"\n\n'
            + admin
            + pools_toml.replace("{port}", str(port))
        )

    def start(
        self,
        pools_toml: str,
        *,
        port: int | None = None,
        wait: bool = True,
        admin_port: int | None = None,
        head: str = "",
        prefix: tuple[str, ...] = (),
    ) -> ProxyProcess:
        port = port or free_port()
        index = len(self.started)
        config_path = self.workdir / f"proxy-{index}.toml"
        config_path.write_text(self.render(pools_toml, port=port, admin_port=admin_port, head=head))
        log_path = self.workdir / f"proxy-{index}.log"
        running = ProxyProcess(config_path, log_path, port, env=self.sm.environ(), prefix=prefix)
        self.started.append(running)
        running.start(wait=wait)
        return running

    def stop_all(self) -> None:
        for running in self.started:
            running.stop()


@pytest.fixture(scope="session")
def launcher(workdir: Path, sm: LocalSecretsManager, known_secrets: Secrets) -> Iterator[ProxyLauncher]:
    proxies = ProxyLauncher(workdir, sm)
    yield proxies
    proxies.stop_all()
    # The suite-wide promise: no secret value in any proxy log, whatever the tests did.
    leaks = [
        f"{running.log_path.name} contains a secret value"
        for running in proxies.started
        for value in known_secrets.values
        if value in running.logs()
    ]
    assert proxies.started, "no proxy ran, so the log scan proved nothing"
    assert not leaks, leaks


# --- MySQL / MariaDB -------------------------------------------------------------------------


@dataclass(repr=False)  # a password: never in a failed test's output
class MySqlUsers:
    app: str

    def __repr__(self) -> str:
        return "MySqlUsers(app=***)"


@pytest.fixture(scope="session")
def mariadb(workdir: Path, tls: TlsFiles) -> Iterator[ThrowawayMariaDB]:
    with ThrowawayMariaDB(workdir, tls=tls) as server:
        yield server


@pytest.fixture(scope="session")
def mysql_users(mariadb: ThrowawayMariaDB, known_secrets: Secrets) -> MySqlUsers:
    users = MySqlUsers(app=known_secrets.new_password())
    mariadb.create_user("app", users.app)
    mariadb.create_database("appdb", owner="app")
    mariadb.sql(
        "CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(200) NOT NULL, data LONGBLOB)"
        " ENGINE=InnoDB",
        database="appdb",
    )
    return users


def rds_mysql_secret(server: ThrowawayMariaDB, username: str, password: str) -> dict[str, object]:
    """The JSON layout RDS writes for a MySQL/MariaDB secret."""
    return {
        "engine": "mariadb",
        "host": "localhost",
        "port": server.port,
        "username": username,
        "password": password,
        "dbname": "appdb",
    }


def kill_client_after_insert(script: str, *args: str, busy: bool = False) -> None:
    """Run a client script until it prints "inserted" (its transaction open), then SIGKILL it;
    when ``busy``, a moment later, so that its last query is running upstream."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "inserted"
        time.sleep(0.3 if busy else 0)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
