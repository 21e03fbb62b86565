"""proxy.config and ``rotaproxy check-config``: TOML in, frozen typed objects out, and every
error names the file, the key and why. No servers: files in tmp_path, the CLI as a subprocess."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proxy.config import (
    Address,
    AdminConfig,
    AwsConfig,
    Config,
    ConfigError,
    CredentialsConfig,
    LoggingConfig,
    PoolConfig,
    load_config,
    parse_address,
    parse_duration,
    quick_config,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 30.0


def write(tmp_path: Path, text: str, name: str = "rotaproxy.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def config_error(path: Path) -> ConfigError:
    """Load ``path`` expecting a ConfigError whose message opens with the file's path."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert str(error).startswith(f"{path}: "), str(error)
    assert error.source == str(path)
    return error


def one_pool(pool_lines: str = "", credentials_lines: str = 'secret_id = "prod/db"') -> str:
    """A minimal valid config with one pool; extra lines go into [[pool]] / [pool.credentials]."""
    return (
        '[[pool]]\nname = "appdb"\nlisten = "127.0.0.1:6432"\n'
        f"{pool_lines}\n"
        f"[pool.credentials]\n{credentials_lines}\n"
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


# --- parse_duration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("7", 7.0),
        (3, 3.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration_reads_units_and_bare_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize("text", ["abc", "-1s", "5 parsecs", "", "5x", "s", True, False, -1, -0.5])
def test_parse_duration_rejects_what_is_not_a_duration(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_duration_rejects_nan() -> None:
    with pytest.raises(ValueError):
        parse_duration(float("nan"))


# --- parse_address --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "default_port", "address"),
    [
        ("127.0.0.1:6432", None, Address("127.0.0.1", 6432)),
        ("  127.0.0.1:6432 ", None, Address("127.0.0.1", 6432)),
        ("[::1]:6432", None, Address("::1", 6432)),
        ("localhost", 5432, Address("localhost", 5432)),
        ("localhost:7000", 5432, Address("localhost", 7000)),
        ("[::1]", 5432, Address("::1", 5432)),
        ("db.example.com:65535", None, Address("db.example.com", 65535)),
    ],
)
def test_parse_address_accepts_host_port_forms(text: str, default_port: int | None, address: Address) -> None:
    assert parse_address(text, default_port) == address


@pytest.mark.parametrize(
    ("text", "default_port", "why"),
    [
        ("localhost", None, "expected host:port"),
        ("127.0.0.1", None, "expected host:port"),
        ("localhost:abc", None, "invalid port"),
        ("localhost:0", None, "invalid port"),
        ("localhost:65536", None, "invalid port"),
        ("localhost:-1", None, "invalid port"),
        (":6432", None, "no host"),
        ("", 5432, "no host"),
        ("[]:6432", None, "no host"),
        ("[::1:6432", None, "unterminated IPv6"),
    ],
)
def test_parse_address_rejects_missing_or_bad_parts(text: str, default_port: int | None, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_address(text, default_port)


@pytest.mark.parametrize("text", ["[::1]junk", "localhost:"])
def test_parse_address_rejects_trailing_garbage_even_with_a_default_port(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text, 5432)


def test_address_prints_ipv6_in_brackets_and_knows_loopback() -> None:
    assert str(Address("::1", 6432)) == "[::1]:6432"
    assert str(Address("127.0.0.1", 6432)) == "127.0.0.1:6432"
    assert Address("::1", 1).is_loopback and Address("127.0.0.2", 1).is_loopback
    assert Address("localhost", 1).is_loopback
    assert not Address("0.0.0.0", 1).is_loopback and not Address("db.example.com", 1).is_loopback


# --- load_config: the design brief's example ------------------------------------------------


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "rds-global-bundle.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return path


def design_example(ca_file: Path) -> str:
    # DESIGN.md's example, adapted: a CA file that exists.
    return f"""\
        [admin]
        listen = "127.0.0.1:9631"          # /healthz /readyz /metrics /pools

        [aws]
        region = "us-east-1"
        endpoint_url = ""                  # empty: the standard endpoint

        [[pool]]
        name = "orders"
        engine = "postgres"
        listen = "127.0.0.1:6432"
        upstream = "orders.cluster-x.us-east-1.rds.amazonaws.com:5432"
        database = "orders"
        mode = "session"
        max_server_connections = 20
        min_server_connections = 2
        borrow_timeout = "5s"
        tls = "verify-full"
        tls_ca_file = "{ca_file}"

        [pool.credentials]
        source = "secretsmanager"
        secret_id = "prod/orders/postgres"
        poll_interval = "30s"
        """


def test_design_example_parses_into_frozen_typed_objects(tmp_path: Path, ca_file: Path) -> None:
    path = write(tmp_path, design_example(ca_file))

    config = load_config(path)

    assert config == Config(
        pools=(
            PoolConfig(
                name="orders",
                engine="postgres",
                listen=Address("127.0.0.1", 6432),
                credentials=CredentialsConfig(
                    source="secretsmanager",
                    secret_id="prod/orders/postgres",
                    poll_interval=30.0,
                    username=None,
                    password=None,
                ),
                upstream=Address("orders.cluster-x.us-east-1.rds.amazonaws.com", 5432),
                database="orders",
                mode="session",
                max_server_connections=20,
                min_server_connections=2,
                borrow_timeout=5.0,
                # Not in the file: the defaults.
                connect_timeout=5.0,
                idle_timeout=600.0,
                server_lifetime=3600.0,
                liveness_check_after=30.0,
                tls="verify-full",
                tls_ca_file=ca_file,
            ),
        ),
        aws=AwsConfig(region="us-east-1", endpoint_url=None),
        admin=AdminConfig(listen=Address("127.0.0.1", 9631)),
        source=str(path),
    )
    assert isinstance(config.pools, tuple)
    assert config.listeners() == {Address("127.0.0.1", 6432): config.pools}


def test_a_minimal_pool_gets_every_default(tmp_path: Path) -> None:
    path = write(tmp_path, '[[pool]]\nname = "appdb"\n[pool.credentials]\nsecret_id = "prod/db"\n')

    config = load_config(path)

    assert config.aws == AwsConfig(region=None, endpoint_url=None)
    assert config.admin == AdminConfig(listen=None)
    assert config.pools == (
        PoolConfig(
            name="appdb",
            engine="postgres",
            listen=Address("127.0.0.1", 6432),
            credentials=CredentialsConfig(source="secretsmanager", secret_id="prod/db", poll_interval=30.0),
            upstream=None,
            database=None,
            mode="session",
            max_server_connections=20,
            min_server_connections=0,
            borrow_timeout=5.0,
            connect_timeout=5.0,
            idle_timeout=600.0,
            server_lifetime=3600.0,
            liveness_check_after=30.0,
            tls="verify-full",
            tls_ca_file=None,
        ),
    )


def test_upstream_without_port_gets_the_engine_port_and_durations_take_units(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        one_pool(
            'upstream = "db.internal"\nborrow_timeout = "250ms"\nconnect_timeout = 2\n'
            'idle_timeout = "2m"\nserver_lifetime = "1h"\nliveness_check_after = 1.5',
            'secret_id = "prod/db"\npoll_interval = "10s"',
        ),
    )

    pool = load_config(path).pools[0]

    assert pool.upstream == Address("db.internal", 5432)
    assert (pool.borrow_timeout, pool.connect_timeout, pool.idle_timeout) == (0.25, 2.0, 120.0)
    assert (pool.server_lifetime, pool.liveness_check_after) == (3600.0, 1.5)
    assert pool.credentials.poll_interval == 10.0


def test_both_engines_take_both_modes(tmp_path: Path) -> None:
    for engine in ("postgres", "mysql"):
        for mode in ("session", "transaction"):
            path = write(tmp_path, one_pool(f'engine = "{engine}"\nmode = "{mode}"'))
            pool = load_config(path).pools[0]
            assert (pool.engine, pool.mode) == (engine, mode)


def test_pools_may_share_one_listener(tmp_path: Path) -> None:
    path = write(tmp_path, one_pool() + one_pool().replace('"appdb"', '"reports"'))

    config = load_config(path)

    assert [pool.name for pool in config.pools] == ["appdb", "reports"]
    assert config.listeners() == {Address("127.0.0.1", 6432): config.pools}


def test_config_objects_are_frozen(tmp_path: Path, ca_file: Path) -> None:
    config = load_config(write(tmp_path, design_example(ca_file)))
    pool = config.pools[0]

    with pytest.raises(dataclasses.FrozenInstanceError):
        pool.max_server_connections = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pool.credentials.secret_id = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pool.listen.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.aws.region = "eu-west-1"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.admin.listen = None  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pools = ()  # type: ignore[misc]


def test_static_credentials_never_show_their_password(tmp_path: Path) -> None:
    password = "static-pw-5b1e7c0d9a"
    path = write(
        tmp_path,
        one_pool(credentials_lines=f'source = "static"\nusername = "app"\npassword = "{password}"'),
    )

    config = load_config(path)

    credentials = config.pools[0].credentials
    assert (credentials.source, credentials.username, credentials.password) == ("static", "app", password)
    for text in (
        repr(config),
        str(config),
        repr(config.pools[0]),
        repr(credentials),
        credentials.description,
    ):
        assert password not in text
    assert "app" in credentials.description


# --- load_config: every error names file, key and why ---------------------------------------


@pytest.mark.parametrize(
    ("pool_lines", "credentials_lines", "key", "why"),
    [
        ("max_server_conections = 5", None, "pool[0].max_server_conections", "unknown key"),
        ('max_server_connections = "20"', None, "pool[0].max_server_connections", "expected int, got str"),
        ("max_server_connections = true", None, "pool[0].max_server_connections", "expected int, got bool"),
        ('borrow_timeout = "soon"', None, "pool[0].borrow_timeout", "expected a duration like '5s'"),
        ('borrow_timeout = "-1s"', None, "pool[0].borrow_timeout", "expected a duration"),
        ("borrow_timeout = 0", None, "pool[0].borrow_timeout", "must be greater than zero"),
        (
            'idle_transaction_timeout = "30s"',  # the pool is in session mode
            None,
            "pool[0].idle_transaction_timeout",
            "PostgreSQL pools in transaction mode only",
        ),
        ('mode = "statement"', None, "pool[0].mode", "must be one of transaction, session; got 'statement'"),
        (
            'engine = "mysql"\nmode = "transaction"\nidle_transaction_timeout = "30s"',
            None,
            "pool[0].idle_transaction_timeout",
            "PostgreSQL pools in transaction mode only",
        ),
        (
            'tls = "prefer"',
            None,
            "pool[0].tls",
            "must be one of disable, require, verify-ca, verify-full; got 'prefer'",
        ),
        ('engine = "oracle"', None, "pool[0].engine", "must be one of postgres, mysql; got 'oracle'"),
        (
            "min_server_connections = 30",
            None,
            "pool[0].min_server_connections",
            "must be between 0 and max_server_connections",
        ),
        ("min_server_connections = -1", None, "pool[0].min_server_connections", "must be between 0"),
        ("max_server_connections = 0", None, "pool[0].max_server_connections", "must be at least 1"),
        ('upstream = "db:99999"', None, "pool[0].upstream", "invalid port"),
        (
            'tls_ca_file = "/nonexistent/rotaproxy-ca.pem"',
            None,
            "pool[0].tls_ca_file",
            "/nonexistent/rotaproxy-ca.pem does not exist or is not a file",
        ),
        ("", "", "pool[0].credentials.secret_id", 'required when source = "secretsmanager"'),
        (
            "",
            'source = "vault"\nsecret_id = "x"',
            "pool[0].credentials.source",
            "must be one of secretsmanager, static, rds-iam, parameterstore; got 'vault'",
        ),
        (
            "",
            'source = "static"\nusername = "app"',
            "pool[0].credentials.username",
            "static credentials need username and password",
        ),
        (
            "",
            'source = "static"\npassword = "pw-123456"',
            "pool[0].credentials.username",
            "static credentials need username and password",
        ),
        ("", 'secret_id = "prod/db"\nsecret = "x"', "pool[0].credentials.secret", "unknown key"),
        (
            "",
            'secret_id = "prod/db"\npoll_interval = "often"',
            "pool[0].credentials.poll_interval",
            "expected a duration",
        ),
        ("", "secret_id = 42", "pool[0].credentials.secret_id", "expected str, got int"),
    ],
)
def test_pool_errors_name_the_key_and_why(
    tmp_path: Path, pool_lines: str, credentials_lines: str | None, key: str, why: str
) -> None:
    text = one_pool(pool_lines) if credentials_lines is None else one_pool(pool_lines, credentials_lines)
    path = write(tmp_path, text)

    error = config_error(path)

    assert error.key == key
    assert why in error.why
    assert str(error) == f"{path}: {key}: {error.why}"


@pytest.mark.parametrize("listen", ["0.0.0.0:6432", "10.1.2.3:6432", "[::]:6432", "db.example.com:6432"])
def test_a_non_loopback_listener_is_refused(tmp_path: Path, listen: str) -> None:
    path = write(tmp_path, one_pool().replace('"127.0.0.1:6432"', f'"{listen}"'))

    error = config_error(path)

    assert error.key == "pool[0].listen"
    assert "is not a loopback address" in error.why
    assert 'auth = "password"' in error.why and "tls_cert_file" in error.why


def test_a_listener_without_port_is_refused(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, one_pool().replace('"127.0.0.1:6432"', '"127.0.0.1"')))

    assert error.key == "pool[0].listen"
    assert "expected host:port" in error.why


def test_a_config_without_pools_is_refused(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, '[aws]\nregion = "us-east-1"\n'))

    assert error.key == "pool"
    assert "at least one [[pool]] table is required" in error.why


def test_a_pool_without_a_name_is_refused(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, '[[pool]]\n[pool.credentials]\nsecret_id = "x"\n'))

    assert error.key == "pool[0].name"
    assert "required" in error.why


def test_duplicate_pool_names_are_refused(tmp_path: Path) -> None:
    second = one_pool().replace("127.0.0.1:6432", "127.0.0.1:6433")
    error = config_error(write(tmp_path, one_pool() + second))

    assert error.key == "pool[1].name"
    assert error.why == "duplicate pool 'appdb'"


def test_an_error_in_the_second_pool_names_its_index(tmp_path: Path) -> None:
    second = one_pool('borrow_timeout = "soon"').replace('"appdb"', '"reports"')
    error = config_error(write(tmp_path, one_pool() + second))

    assert error.key == "pool[1].borrow_timeout"


def test_two_engines_on_one_listener_are_refused(tmp_path: Path) -> None:
    second = one_pool('engine = "mysql"').replace('"appdb"', '"shop"')
    error = config_error(write(tmp_path, one_pool() + second))

    assert error.key == "pool.listen"
    assert "mix engines ['mysql', 'postgres']" in error.why


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ('[adminn]\nlisten = "127.0.0.1:9631"\n', "adminn", "unknown key"),
        ('[aws]\nendpoint = "http://127.0.0.1:5000"\n', "aws.endpoint", "unknown key"),
        ("[aws]\nregion = 1\n", "aws.region", "expected str, got int"),
        ('[admin]\nlisten = "127.0.0.1"\n', "admin.listen", "expected host:port"),
        ('aws = "us-east-1"\n', "aws", "expected a table"),
    ],
)
def test_top_level_errors_name_the_key(tmp_path: Path, text: str, key: str, why: str) -> None:
    error = config_error(write(tmp_path, text + one_pool()))

    assert error.key == key
    assert why in error.why


def test_logging_table_chooses_json_lines_and_a_level(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[logging]\nformat = "json"\nlevel = "warning"\n' + one_pool()))

    assert config.logging == LoggingConfig(format="json", level="warning")
    assert load_config(write(tmp_path, one_pool(), "plain.toml")).logging == LoggingConfig("text", None)


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ('[logging]\nformat = "xml"\n', "logging.format", "must be one of text, json; got 'xml'"),
        ('[logging]\nlevel = "loud"\n', "logging.level", "must be one of debug, info, warning, error"),
        ("[logging]\ncolour = true\n", "logging.colour", "unknown key"),
        ("[logging]\nformat = 1\n", "logging.format", "expected str, got int"),
    ],
)
def test_logging_errors_read_file_key_why(tmp_path: Path, text: str, key: str, why: str) -> None:
    path = write(tmp_path, text + one_pool())
    error = config_error(path)

    assert (error.key, str(error)) == (key, f"{path}: {key}: {error.why}")
    assert why in error.why


def test_pool_as_a_single_table_is_refused(tmp_path: Path) -> None:
    # [pool] instead of [[pool]]: a table, not an array of tables.
    error = config_error(write(tmp_path, '[pool]\nname = "appdb"\n'))

    assert error.key == "pool"


def test_a_pool_entry_that_is_not_a_table_is_a_config_error(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, "pool = [1]\n"))

    assert error.key == "pool[0]"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[[pool]]\nname = "appdb\n')

    error = config_error(path)

    assert error.key == ""
    assert error.why.startswith("invalid TOML: ")
    assert str(error) == f"{path}: {error.why}"


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"

    error = config_error(path)

    assert error.key == ""
    assert error.why == "cannot read: No such file or directory"


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    error = config_error(tmp_path)

    assert error.key == ""
    assert error.why.startswith("cannot read: ")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n" + one_pool().encode())

    config_error(path)


# --- quick_config (rotaproxy run --engine ... --secret-id ...) ------------------------------


def test_quick_config_builds_the_same_pool_as_the_file(tmp_path: Path, ca_file: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        [admin]
        listen = "127.0.0.1:9631"
        [aws]
        region = "eu-west-1"
        endpoint_url = "http://127.0.0.1:5000"
        [[pool]]
        name = "appdb"
        engine = "postgres"
        listen = "127.0.0.1:7432"
        upstream = "db.internal:6543"
        database = "appdb"
        mode = "session"
        tls = "verify-ca"
        tls_ca_file = "{ca_file}"
        [pool.credentials]
        source = "secretsmanager"
        secret_id = "prod/app/postgres"
        """,
    )

    quick = quick_config(
        engine="postgres",
        listen="127.0.0.1:7432",
        secret_id="prod/app/postgres",
        upstream="db.internal:6543",
        database="appdb",
        mode="session",
        endpoint_url="http://127.0.0.1:5000",
        region="eu-west-1",
        tls="verify-ca",
        tls_ca_file=str(ca_file),
        admin_listen="127.0.0.1:9631",
    )

    from_file = load_config(path)
    assert quick.pools == from_file.pools
    assert (quick.aws, quick.admin) == (from_file.aws, from_file.admin)
    assert quick.source == "<command line>"


def test_quick_config_defaults_match_a_bare_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[[pool]]\nname = "default"\n[pool.credentials]\nsecret_id = "prod/db"\n')

    quick = quick_config(engine="postgres", listen=None, secret_id="prod/db")

    assert quick.pools == load_config(path).pools
    assert quick.aws == AwsConfig() and quick.admin == AdminConfig()


def test_quick_config_errors_name_the_command_line() -> None:
    with pytest.raises(ConfigError) as info:
        quick_config(engine="postgres", listen="0.0.0.0:6432", secret_id="prod/db")

    assert info.value.key == "pool[0].listen"
    assert str(info.value).startswith("<command line>: pool[0].listen: 0.0.0.0:6432 is not a loopback")


# --- rotaproxy check-config / run (real subprocesses) ---------------------------------------


def test_check_config_prints_each_pool(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        one_pool('upstream = "db.internal:5432"\ntls = "disable"')
        + one_pool('database = "reports"').replace('"appdb"', '"reports"').replace("6432", "6433"),
    )

    result = run_cli("check-config", "-c", str(path))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"config {path}: 2 pool(s)"
    appdb = next(line for line in lines if "pool 'appdb'" in line)
    reports = next(line for line in lines if "pool 'reports'" in line)
    assert "postgres session mode" in appdb and "listen 127.0.0.1:6432" in appdb
    assert "upstream db.internal:5432" in appdb and "tls disable" in appdb
    assert "session mode" in reports and "listen 127.0.0.1:6433" in reports
    assert "upstream host/port from the secret" in reports
    assert "credentials: secret 'prod/db'" in reports


def test_check_config_exits_2_with_file_key_and_why(tmp_path: Path) -> None:
    path = write(tmp_path, one_pool('borrow_timeout = "soon"'))

    result = run_cli("check-config", "-c", str(path))

    assert result.returncode == 2
    assert (
        f"{path}: pool[0].borrow_timeout: expected a duration like '5s' or '2m', got 'soon'" in result.stderr
    )
    assert result.stdout == ""


@pytest.mark.parametrize("args", [(), ("--engine", "postgres")])
def test_run_without_config_or_quick_form_exits_2_and_says_what_to_give(args: tuple[str, ...]) -> None:
    result = run_cli("run", *args)

    assert result.returncode == 2
    assert "<command line>: give -c FILE, or --engine and --secret-id" in result.stderr
    assert "Traceback" not in result.stderr


# --- RDS IAM credentials ------------------------------------------------------------------------

RDS_UPSTREAM = 'upstream = "orders.cluster-x.us-east-1.rds.amazonaws.com:5432"'


def test_rds_iam_credentials_parse_with_a_user_and_an_optional_region(tmp_path: Path) -> None:
    path = write(
        tmp_path, one_pool(RDS_UPSTREAM, 'source = "rds-iam"\nusername = "app"\nregion = "eu-west-1"')
    )

    pool = load_config(path).pools[0]

    assert pool.credentials == CredentialsConfig(source="rds-iam", username="app", region="eu-west-1")
    assert pool.credentials.description == "RDS IAM tokens for user 'app'"
    assert pool.tls == "verify-full"
    assert pool.upstream == Address("orders.cluster-x.us-east-1.rds.amazonaws.com", 5432)


@pytest.mark.parametrize(
    ("pool_lines", "credentials_lines", "key", "why"),
    [
        (
            RDS_UPSTREAM,
            'source = "rds-iam"',
            "pool[0].credentials.username",
            'required when source = "rds-iam"',
        ),
        (
            "",
            'source = "rds-iam"\nusername = "app"',
            "pool[0].upstream",
            "the token is signed for this host:port",
        ),
        (
            f'{RDS_UPSTREAM}\ntls = "disable"',
            'source = "rds-iam"\nusername = "app"',
            "pool[0].credentials.source",
            'an RDS IAM token is sent as a cleartext password, so it needs TLS: set tls = "verify-full"',
        ),
        (
            RDS_UPSTREAM,
            'source = "rds-iam"\nusername = "app"\nsecret_id = "prod/db"',
            "pool[0].credentials.secret_id",
            'not used when source = "rds-iam"',
        ),
        (
            RDS_UPSTREAM,
            'source = "rds-iam"\nusername = "app"\npassword = "pw-123456"',
            "pool[0].credentials.password",
            'not used when source = "rds-iam"',
        ),
        ("", 'secret_id = "prod/db"\nregion = "eu-west-1"', "pool[0].credentials.region", "only used when"),
    ],
)
def test_rds_iam_errors_name_the_key_and_why(
    tmp_path: Path, pool_lines: str, credentials_lines: str, key: str, why: str
) -> None:
    path = write(tmp_path, one_pool(pool_lines, credentials_lines))

    error = config_error(path)

    assert (error.key, str(error)) == (key, f"{path}: {key}: {error.why}")
    assert why in error.why


@pytest.mark.parametrize("tls", ["require", "verify-ca", "verify-full"])
def test_rds_iam_takes_any_tls_mode_but_disable(tmp_path: Path, tls: str) -> None:
    path = write(tmp_path, one_pool(f'{RDS_UPSTREAM}\ntls = "{tls}"', 'source = "rds-iam"\nusername = "app"'))

    assert load_config(path).pools[0].tls == tls


# --- shutdown_timeout ---------------------------------------------------------------------------


def test_shutdown_timeout_defaults_to_30s_and_takes_a_duration(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, one_pool())).shutdown_timeout == 30.0
    assert load_config(write(tmp_path, 'shutdown_timeout = "2s"\n' + one_pool())).shutdown_timeout == 2.0
    assert load_config(write(tmp_path, 'shutdown_timeout = "1m"\n' + one_pool())).shutdown_timeout == 60.0
    # 0: cut every session at once, as a plain stop would.
    assert load_config(write(tmp_path, "shutdown_timeout = 0\n" + one_pool())).shutdown_timeout == 0.0


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ('"soon"', "expected a duration like '5s' or '2m', got 'soon'"),
        ("-1", "a duration cannot be negative"),
        ("true", "expected a duration like '5s' or '2m'"),
    ],
)
def test_shutdown_timeout_errors_read_file_key_why(tmp_path: Path, value: str, why: str) -> None:
    path = write(tmp_path, f"shutdown_timeout = {value}\n" + one_pool())
    error = config_error(path)

    assert (error.key, error.why) == ("shutdown_timeout", why)
    assert str(error) == f"{path}: shutdown_timeout: {why}"


def test_check_config_prints_the_shutdown_timeout(tmp_path: Path) -> None:
    result = run_cli("check-config", "-c", str(write(tmp_path, 'shutdown_timeout = "45s"\n' + one_pool())))

    assert result.returncode == 0, result.stderr
    assert "  shutdown_timeout 45s (SIGTERM lets open transactions finish)" in result.stdout.splitlines()


# --- who may connect, and for how long (issue 17) ---------------------------------------------


def unix_pool(pool_lines: str = "", path: str = "/run/rotaproxy/.s.PGSQL.6432") -> str:
    return one_pool(pool_lines).replace('"127.0.0.1:6432"', f'"unix:{path}"')


def test_client_limits_have_their_defaults(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            one_pool() + '[[pool]]\nname = "my"\nengine = "mysql"\n[pool.credentials]\nsecret_id = "x"\n',
        )
    )
    assert config.limits.max_client_connections == 10_000
    assert config.limits.client_login_timeout == 60.0
    assert config.limits.client_stall_timeout == 60.0
    postgres, mysql = config.pools
    assert postgres.max_client_connections == 0 and postgres.client_idle_timeout == 0.0
    assert postgres.max_client_message_size == (1 << 30) - 1
    assert mysql.max_client_message_size == 64 << 20
    assert not postgres.clients.restricted and postgres.socket_mode == 0o660


def test_client_limits_are_read(tmp_path: Path) -> None:
    head = 'max_client_connections = 500\nclient_login_timeout = "2s"\nclient_stall_timeout = "250ms"\n'
    pool_lines = (
        'max_client_connections = 50\nclient_idle_timeout = "10m"\nmax_client_message_size = "16MiB"\n'
        'socket_mode = "0600"\nsocket_group = 0\n[pool.clients]\nallow_uids = [0, "root"]\n'
        'allow_gids = ["root", 1234]'
    )
    config = load_config(write(tmp_path, head + unix_pool(pool_lines)))
    assert (config.limits.max_client_connections, config.limits.client_login_timeout) == (500, 2.0)
    assert config.limits.client_stall_timeout == 0.25
    pool = config.pools[0]
    assert str(pool.listen) == "unix:/run/rotaproxy/.s.PGSQL.6432" and pool.listen.is_unix
    assert (pool.max_client_connections, pool.client_idle_timeout) == (50, 600.0)
    assert pool.max_client_message_size == 16 << 20
    assert (pool.socket_mode, pool.socket_group) == (0o600, 0)
    assert pool.clients.allow_uids == frozenset({0}) and pool.clients.allow_gids == frozenset({0, 1234})


@pytest.mark.parametrize(
    ("head", "key", "why"),
    [
        ("max_client_connections = 0\n", "max_client_connections", "at least 1"),
        ('max_client_connections = "many"\n', "max_client_connections", "expected int"),
        ('client_login_timeout = "soon"\n', "client_login_timeout", "expected a duration"),
        ('client_stall_timeout = "-1s"\n', "client_stall_timeout", "expected a duration"),
        ('query_wait_timeout = "5s"\n', "query_wait_timeout", "rotaproxy calls this borrow_timeout"),
    ],
)
def test_top_level_client_limit_errors_name_file_key_and_why(
    tmp_path: Path, head: str, key: str, why: str
) -> None:
    error = config_error(write(tmp_path, head + one_pool()))
    assert error.key == key and why in error.why


@pytest.mark.parametrize(
    ("pool_lines", "key", "why"),
    [
        ("max_client_connections = -1", "max_client_connections", "0 (no limit for the pool) or more"),
        ('client_idle_timeout = "idle"', "client_idle_timeout", "expected a duration"),
        ('max_client_message_size = "big"', "max_client_message_size", "expected a size like '16MiB'"),
        ('max_client_message_size = "2GiB"', "max_client_message_size", "between 1024 bytes and 1GiB"),
        ("max_client_message_size = 100", "max_client_message_size", "between 1024 bytes and 1GiB"),
        ('query_wait_timeout = "5s"', "query_wait_timeout", "rotaproxy calls this borrow_timeout"),
        ('socket_mode = "0660"', "socket_mode", "only for a Unix socket"),
        ('socket_group = "root"', "socket_group", "only for a Unix socket"),
        ("[pool.clients]\nallow_uids = [0]", "clients.allow_uids", "known only on a Unix socket"),
        ("[pool.clients]\nallow_gids = [0]", "clients.allow_gids", "known only on a Unix socket"),
    ],
)
def test_pool_client_limit_errors_name_file_key_and_why(
    tmp_path: Path, pool_lines: str, key: str, why: str
) -> None:
    error = config_error(write(tmp_path, one_pool(pool_lines)))
    assert error.key == f"pool[0].{key}" and why in error.why


@pytest.mark.parametrize(
    ("pool_lines", "key", "why"),
    [
        ('socket_mode = "rw-rw----"', "socket_mode", 'octal like "0660"'),
        ('socket_mode = "0999"', "socket_mode", 'octal like "0660"'),
        ("socket_mode = 4096", "socket_mode", 'octal like "0660"'),
        ('socket_group = "no-such-group-here"', "socket_group", "no group named 'no-such-group-here'"),
        ("[pool.clients]\nallow_uids = 0", "clients.allow_uids", "expected a list"),
        ('[pool.clients]\nallow_uids = ["no-such-user-here"]', "clients.allow_uids", "no user named"),
        ("[pool.clients]\nallow_uids = [-1]", "clients.allow_uids", "not a valid user id"),
        ("[pool.clients]\nallow_gids = [true]", "clients.allow_gids", "expected a group name or number"),
        ("[pool.clients]\nallow = [0]", "clients.allow", "unknown key"),
    ],
)
def test_unix_socket_and_caller_errors_name_file_key_and_why(
    tmp_path: Path, pool_lines: str, key: str, why: str
) -> None:
    error = config_error(write(tmp_path, unix_pool(pool_lines)))
    assert error.key == f"pool[0].{key}" and why in error.why


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("run/x.sock", "must be absolute"),
        ("/run/" + "x" * 120, "at most 107 bytes"),
        ("/run/rotaproxy/", "not a socket file name"),
    ],
)
def test_a_bad_unix_socket_path_is_refused(tmp_path: Path, path: str, why: str) -> None:
    error = config_error(write(tmp_path, unix_pool(path=path)))
    assert error.key == "pool[0].listen" and why in error.why


def test_pools_sharing_a_socket_must_agree_on_its_mode(tmp_path: Path) -> None:
    second = unix_pool('socket_mode = "0600"').replace('"appdb"', '"other"')
    error = config_error(write(tmp_path, unix_pool() + second))
    assert error.key == "pool[1].socket_mode" and "must agree" in error.why


def test_the_admin_api_does_not_listen_on_a_unix_socket(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, '[admin]\nlisten = "unix:/run/a.sock"\n' + one_pool()))
    assert error.key == "admin.listen"


def test_a_non_loopback_tcp_listen_is_still_refused_next_to_a_unix_socket(tmp_path: Path) -> None:
    tcp = one_pool().replace('"127.0.0.1:6432"', '"0.0.0.0:6432"').replace('"appdb"', '"other"')
    error = config_error(write(tmp_path, unix_pool() + tcp))
    assert error.key == "pool[1].listen" and "is not a loopback address" in error.why
