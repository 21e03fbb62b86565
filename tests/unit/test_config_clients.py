"""``[pool.clients]``: client authentication and client-side TLS in the config, and the rule
that a pool beyond loopback needs both (the error says exactly what to set)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ClientsConfig, ConfigError, load_config
from tests.unit.test_config import config_error, one_pool, write


def with_clients(tmp_path: Path, clients: str, listen: str = "127.0.0.1:6432") -> Path:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("stand-in\n")
    text = one_pool().replace('"127.0.0.1:6432"', f'"{listen}"') + "[pool.clients]\n" + clients
    return write(tmp_path, text)


TLS_FILES = 'tls_cert_file = "cert.pem"\ntls_key_file = "key.pem"\n'


def test_the_default_is_trust_without_tls(tmp_path: Path) -> None:
    (pool,) = load_config(write(tmp_path, one_pool())).pools

    assert pool.clients == ClientsConfig()
    assert (pool.clients.auth, pool.clients.tls, pool.clients.authenticates) == ("trust", "disable", False)


def test_password_auth_with_tls_may_listen_beyond_loopback(tmp_path: Path) -> None:
    path = with_clients(
        tmp_path,
        'auth = "password"\nsecret_id = "prod/clients"\npoll_interval = "10s"\n' + TLS_FILES,
        "0.0.0.0:6432",
    )

    (pool,) = load_config(path).pools

    clients = pool.clients
    assert (clients.auth, clients.secret_id, clients.poll_interval, clients.tls) == (
        "password",
        "prod/clients",
        10.0,
        "require",
    )
    assert clients.tls_cert_file == tmp_path / "cert.pem"  # relative to the file
    assert clients.mysql_auth_plugin == "caching_sha2_password"


def test_cert_auth_with_its_ca_may_listen_beyond_loopback(tmp_path: Path) -> None:
    path = with_clients(tmp_path, 'auth = "cert"\ntls_ca_file = "ca.pem"\n' + TLS_FILES, "10.1.2.3:6432")

    (pool,) = load_config(path).pools

    assert pool.clients.auth == "cert" and pool.clients.tls_ca_file == tmp_path / "ca.pem"


@pytest.mark.parametrize(
    "clients",
    [
        pytest.param("", id="trust"),
        pytest.param('auth = "password"\nsecret_id = "prod/clients"\n', id="password-without-tls"),
        pytest.param(TLS_FILES, id="tls-without-auth"),
        pytest.param('auth = "password"\nsecret_id = "c"\ntls = "allow"\n' + TLS_FILES, id="tls-optional"),
    ],
)
def test_beyond_loopback_without_authentication_and_tls_is_refused(tmp_path: Path, clients: str) -> None:
    error = config_error(with_clients(tmp_path, clients, "0.0.0.0:6432"))

    assert error.key == "pool[0].listen"
    assert error.why.startswith("0.0.0.0:6432 is not a loopback address")
    assert 'auth = "password"' in error.why and '"cert"' in error.why and "tls_cert_file" in error.why


@pytest.mark.parametrize(
    ("clients", "key", "why"),
    [
        ('auth = "password"\n', "pool[0].clients.secret_id", "required when auth"),
        ('secret_id = "x"\n', "pool[0].clients.secret_id", 'only used when auth = "password"'),
        ('auth = "cert"\ntls_ca_file = "ca.pem"\n', "pool[0].clients.auth", "needs TLS"),
        ('auth = "cert"\n' + TLS_FILES, "pool[0].clients.tls_ca_file", "required when auth"),
        ('tls_cert_file = "cert.pem"\n', "pool[0].clients.tls_key_file", "go together"),
        ('tls = "require"\n', "pool[0].clients.tls", "needs tls_cert_file"),
        (
            'tls_cert_file = "missing.pem"\ntls_key_file = "key.pem"\n',
            "pool[0].clients.tls_cert_file",
            "does not exist",
        ),
        ('auth = "ldap"\n', "pool[0].clients.auth", "must be one of trust, password, cert"),
        ('mysql_auth_plugin = "sha256_password"\n', "pool[0].clients.mysql_auth_plugin", "must be one of"),
        ("allow_everyone = true\n", "pool[0].clients.allow_everyone", "unknown key"),
    ],
)
def test_clients_errors_name_the_key(tmp_path: Path, clients: str, key: str, why: str) -> None:
    error = config_error(with_clients(tmp_path, clients))

    assert error.key == key
    assert why in error.why


def test_pools_sharing_a_listener_share_one_client_policy(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    text = (
        one_pool()
        + "[pool.clients]\n"
        + TLS_FILES
        + '[[pool]]\nname = "other"\nlisten = "127.0.0.1:6432"\n[pool.credentials]\nsecret_id = "prod/db"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))

    assert info.value.key == "pool.clients"
    assert "share one client policy" in info.value.why
