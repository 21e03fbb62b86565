"""Unix-domain sockets with peer checks (issue 17): psql and the mariadb client over the
proxy's socket files, as root (allowed by ``[pool.clients] allow_uids``) and as ``nobody``
(refused with 28000 / 1045 naming its uid, checked by SO_PEERCRED)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import free_port
from proxy.local.proxy_process import ProxyProcess
from tests.conftest import (
    MySqlUsers,
    ProxyLauncher,
    Users,
    new_secret,
    rds_mysql_secret,
    rds_secret,
    wait_for,
)

NOBODY = pwd.getpwnam("nobody").pw_uid


@dataclass
class SocketProxy:
    running: ProxyProcess
    directory: Path

    @property
    def pg_socket(self) -> Path:
        return self.directory / ".s.PGSQL.6432"

    @property
    def mysql_socket(self) -> Path:
        return self.directory / "mysql.sock"


@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path (mode 0700): nobody must reach the socket to be refused by us.
    directory = Path(tempfile.mkdtemp(prefix="rotaproxy-sock-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
async def socket_proxy(
    launcher: ProxyLauncher,
    pg: ThrowawayPostgres,
    users: Users,
    mariadb: ThrowawayMariaDB,
    mysql_users: MySqlUsers,
    sm_client: Any,
    socket_dir: Path,
) -> SocketProxy:
    app = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    my = await new_secret(sm_client, rds_mysql_secret(mariadb, "app", mysql_users.app))
    stale = socket_dir / "mysql.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(stale))  # a stale socket file, as a killed process leaves it
    leftover.close()
    admin_port = free_port()
    config = (
        f'[[pool]]\nname = "appdb"\nengine = "postgres"\nlisten = "unix:{socket_dir}/.s.PGSQL.6432"\n'
        f'socket_mode = "0666"\nupstream = "127.0.0.1:{pg.port}"\ntls = "disable"\n'
        f'[pool.clients]\nallow_uids = ["root"]\n[pool.credentials]\nsecret_id = "{app}"\n\n'
        f'[[pool]]\nname = "my"\nengine = "mysql"\nlisten = "unix:{stale}"\nsocket_mode = "0666"\n'
        f'tls = "disable"\n[pool.clients]\nallow_uids = [0]\n[pool.credentials]\nsecret_id = "{my}"\n'
    )
    running = launcher.start(config, port=admin_port, admin_port=admin_port)
    proxy = SocketProxy(running, socket_dir)
    wait_for(lambda: proxy.pg_socket.exists() and proxy.mysql_socket.exists(), 20, "the socket files")
    assert "listening on unix:" in running.logs()
    return proxy


def test_socket_files_have_their_mode(socket_proxy: SocketProxy) -> None:
    for path in (socket_proxy.pg_socket, socket_proxy.mysql_socket):
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o666


def as_nobody(*command: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


def psql(socket_proxy: SocketProxy, *, user: list[str]) -> subprocess.CompletedProcess[str]:
    command = ["psql", "-h", str(socket_proxy.directory), "-p", "6432", "-U", "anyone", "-d", "appdb"]
    return subprocess.run(
        [*user, *command, "-XAtc", "SELECT 1"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )


def test_psql_over_the_unix_socket_as_root_is_allowed(socket_proxy: SocketProxy) -> None:
    result = psql(socket_proxy, user=[])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_psql_over_the_unix_socket_as_nobody_is_refused_naming_its_uid(socket_proxy: SocketProxy) -> None:
    result = psql(socket_proxy, user=as_nobody())
    assert result.returncode != 0
    assert f"uid {NOBODY} may not connect" in result.stderr and "allow_uids" in result.stderr
    # The SQLSTATE, from a client that shows it: 28000 (invalid_authorization_specification).
    script = (
        "import socket,struct;s=socket.socket(socket.AF_UNIX);"
        f"s.connect({str(socket_proxy.pg_socket)!r});"
        "b=struct.pack('!I',196608)+b'user\\0u\\0database\\0appdb\\0\\0';"
        "s.sendall(struct.pack('!I',len(b)+4)+b);print(s.recv(4096))"
    )
    raw = subprocess.run(
        as_nobody("/usr/bin/python3", "-c", script), capture_output=True, text=True, timeout=30
    )
    assert "C28000" in raw.stdout, raw


def mariadb(socket_proxy: SocketProxy, *, user: list[str]) -> subprocess.CompletedProcess[str]:
    command = [
        "mariadb",
        f"--socket={socket_proxy.mysql_socket}",
        "-u",
        "anyone",
        "--skip-ssl",
        "-NBe",
        "SELECT 1",
    ]
    return subprocess.run([*user, *command], capture_output=True, text=True, timeout=30)


def test_mariadb_over_its_socket_as_root_is_allowed(socket_proxy: SocketProxy) -> None:
    result = mariadb(socket_proxy, user=[])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_mariadb_over_its_socket_as_nobody_gets_1045_naming_its_uid(socket_proxy: SocketProxy) -> None:
    result = mariadb(socket_proxy, user=as_nobody())
    assert result.returncode != 0
    assert "ERROR 1045 (28000)" in result.stderr and f"uid {NOBODY} may not connect" in result.stderr


def test_a_second_proxy_never_takes_a_live_socket(
    socket_proxy: SocketProxy, launcher: ProxyLauncher, socket_dir: Path
) -> None:
    config = socket_proxy.running.config_path.read_text()
    body = config[config.index("[[pool]]") :]
    second = launcher.start(body, wait=False)
    assert second.process is not None
    assert second.process.wait(timeout=30) != 0
    assert "another process listens on" in second.logs()
    assert psql(socket_proxy, user=[]).returncode == 0  # the first one still serves its socket
