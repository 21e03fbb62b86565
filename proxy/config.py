"""Configuration: TOML file or quick CLI form, parsed once into frozen, typed objects.

Every error names the file, the key and what is wrong. The rest of the code never sees a
raw dict.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

Engine = Literal["postgres", "mysql"]
PoolMode = Literal["transaction", "session"]
TlsMode = Literal["disable", "require", "verify-ca", "verify-full"]
CredentialSourceKind = Literal["secretsmanager", "static", "rds-iam"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
ClientAuth = Literal["trust", "password", "cert"]
ClientTlsMode = Literal["disable", "allow", "require"]

DEFAULT_PORTS: dict[str, int] = {"postgres": 6432, "mysql": 6033}
# How long SIGTERM (and a reload that drains a pool) lets open transactions run to their end.
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
UPSTREAM_DEFAULT_PORTS: dict[str, int] = {"postgres": 5432, "mysql": 3306}
# Engines whose client and server sides are implemented; the parser knows the rest so the
# error says "not supported yet" rather than "unknown".
SUPPORTED_ENGINES: frozenset[str] = frozenset({"postgres", "mysql"})
SUPPORTED_MODES: dict[str, frozenset[str]] = {
    "postgres": frozenset({"session", "transaction"}),
    "mysql": frozenset({"session", "transaction"}),
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(Exception):
    """A configuration problem: ``file: key: why``."""

    def __init__(self, source: str, key: str, why: str) -> None:
        super().__init__(f"{source}: {key}: {why}" if key else f"{source}: {why}")
        self.source = source
        self.key = key
        self.why = why


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    source: CredentialSourceKind
    secret_id: str | None = None
    poll_interval: float = 30.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    region: str | None = None  # rds-iam: the region tokens are signed for (else [aws] region, the chain)

    @property
    def description(self) -> str:
        if self.source == "secretsmanager":
            return f"secret {self.secret_id!r}"
        if self.source == "rds-iam":
            return f"RDS IAM tokens for user {self.username!r}"
        return f"static credentials for user {self.username!r}"


@dataclass(frozen=True, slots=True)
class ClientsConfig:
    """``[pool.clients]``: who may connect to the pool's listener, and how they prove it.

    TLS is negotiated before the pool is chosen, and a listener serves one client policy, so
    pools that share a listener have equal ``ClientsConfig`` (checked in ``_check_listeners``).
    """

    auth: ClientAuth = "trust"  # trust | password (secret_id's users) | cert (tls_ca_file's clients)
    secret_id: str | None = None  # password: a JSON map of user to password or SCRAM verifier
    poll_interval: float = 30.0
    tls: ClientTlsMode = "disable"  # default "require" once tls_cert_file is set
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None  # cert: the CA client certificates must chain to
    mysql_auth_plugin: str = "caching_sha2_password"  # what a MySQL greeting asks for first

    @property
    def authenticates(self) -> bool:
        """Whether clients prove who they are (what a non-loopback listener requires)."""
        return self.auth != "trust"


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    engine: Engine
    listen: Address
    credentials: CredentialsConfig
    upstream: Address | None = None  # None: host/port from the secret
    database: str | None = None  # None: dbname from the secret, else the pool name
    mode: PoolMode = "session"
    max_server_connections: int = 20
    min_server_connections: int = 0
    borrow_timeout: float = 5.0
    idle_transaction_timeout: float = 0.0  # 0: off
    connect_timeout: float = 5.0
    idle_timeout: float = 600.0
    server_lifetime: float = 3600.0
    liveness_check_after: float = 30.0
    tls: TlsMode = "verify-full"
    tls_ca_file: Path | None = None
    clients: ClientsConfig = ClientsConfig()


@dataclass(frozen=True, slots=True)
class AwsConfig:
    region: str | None = None
    endpoint_url: str | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: Address | None = None


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: LogFormat = "text"  # json: one object per line (time, level, logger, message)
    level: LogLevel | None = None  # None: --log-level, else info


@dataclass(frozen=True, slots=True)
class Config:
    pools: tuple[PoolConfig, ...]
    aws: AwsConfig = AwsConfig()
    admin: AdminConfig = AdminConfig()
    logging: LoggingConfig = LoggingConfig()
    source: str = "<command line>"
    # SIGTERM: how long open transactions may run on before the rest are cut; also bounds
    # the drain of a pool that a reload removed or changed.
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT

    def listeners(self) -> dict[Address, tuple[PoolConfig, ...]]:
        """Pools grouped by the address they listen on (several may share one)."""
        grouped: dict[Address, list[PoolConfig]] = {}
        for pool in self.pools:
            grouped.setdefault(pool.listen, []).append(pool)
        return {address: tuple(pools) for address, pools in grouped.items()}


def parse_duration(text: object) -> float:
    """'250ms', '5s', '2m', '1h' or a bare number of seconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration like '5s' or '2m'")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ValueError(f"expected a duration like '5s' or '2m', got {text!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number, got {text!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_address(text: str, default_port: int | None = None) -> Address:
    """'host:port', '[v6]:port', or 'host' when a default port applies."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"unterminated IPv6 address in {text!r}")
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after the address in {text!r}")
        has_port, port_text = bool(rest), rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        has_port = True
    else:
        host, port_text, has_port = text, "", False
    if not host:
        raise ValueError(f"no host in {text!r}")
    if has_port and not port_text:
        raise ValueError(f"empty port in {text!r}")
    if not has_port:
        if default_port is None:
            raise ValueError(f"expected host:port, got {text!r}")
        return Address(host, default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid port in {text!r}")
    return Address(host, int(port_text))


class _Table:
    """Typed access to one TOML table that reports errors with their full key path."""

    def __init__(self, source: str, path: str, data: Mapping[str, Any], base_dir: Path | None = None) -> None:
        self.source = source
        self.path = path
        self.data = data
        self.base_dir = base_dir
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, why: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), why)

    def get(self, name: str, kind: type, default: Any = None) -> Any:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(name, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self.get(name, str, default)
        if value == "":
            return default
        return cast("str | None", value)

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def duration(self, name: str, default: float) -> float:
        self.used.add(name)
        if name not in self.data:
            return default
        try:
            return parse_duration(self.data[name])
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def address(self, name: str, default_port: int | None) -> Address | None:
        text = self.string(name)
        if text is None:
            return None
        try:
            return parse_address(text, default_port)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def table(self, name: str) -> _Table:
        self.used.add(name)
        value = self.data.get(name, {})
        if not isinstance(value, Mapping):
            raise self.error(name, "expected a table")
        return _Table(self.source, self.key(name), value, self.base_dir)

    def check_unknown(self) -> None:
        for name in self.data:
            if name not in self.used:
                raise self.error(name, "unknown key")


def _parse_credentials(table: _Table) -> CredentialsConfig:
    source = table.choice("source", get_args(CredentialSourceKind), "secretsmanager")
    credentials = CredentialsConfig(
        source=cast(CredentialSourceKind, source),
        secret_id=table.string("secret_id"),
        poll_interval=table.duration("poll_interval", 30.0),
        username=table.string("username"),
        password=table.get("password", str),
        region=table.string("region"),
    )
    table.check_unknown()
    if credentials.source == "secretsmanager" and not credentials.secret_id:
        raise table.error("secret_id", 'required when source = "secretsmanager"')
    if credentials.source == "static" and (not credentials.username or credentials.password is None):
        raise table.error("username", "static credentials need username and password")
    if credentials.source == "rds-iam":
        if not credentials.username:
            raise table.error("username", 'required when source = "rds-iam": the database user to sign for')
        for unused in ("secret_id", "password"):
            if unused in table.data:
                raise table.error(unused, 'not used when source = "rds-iam" (the password is an IAM token)')
    elif credentials.region is not None:
        raise table.error("region", 'only used when source = "rds-iam"')
    return credentials


def _parse_pool(table: _Table) -> PoolConfig:
    name = table.string("name")
    if not name:
        raise table.error("name", "required: clients select the pool by this database name")
    engine = table.choice("engine", get_args(Engine), "postgres")
    if engine not in SUPPORTED_ENGINES:
        raise table.error("engine", f"engine {engine!r} is not supported by this version yet")
    listen = table.address("listen", None) or Address("127.0.0.1", DEFAULT_PORTS[engine])
    clients = _parse_clients(table.table("clients"))
    _check_exposure(table, listen, clients)
    mode = table.choice("mode", get_args(PoolMode), "session")
    if mode not in SUPPORTED_MODES[engine]:
        raise table.error("mode", f"mode {mode!r} is not supported for {engine} by this version yet")
    tls = table.choice("tls", get_args(TlsMode), "verify-full")
    ca_text = table.string("tls_ca_file")
    tls_ca_file = Path(ca_text) if ca_text else None
    if tls_ca_file is not None and not tls_ca_file.is_absolute() and table.base_dir is not None:
        tls_ca_file = table.base_dir / tls_ca_file
    if tls_ca_file is not None and not tls_ca_file.is_file():
        raise table.error("tls_ca_file", f"{tls_ca_file} does not exist or is not a file")
    pool = PoolConfig(
        name=name,
        engine=cast(Engine, engine),
        listen=listen,
        upstream=table.address("upstream", UPSTREAM_DEFAULT_PORTS[engine]),
        database=table.string("database"),
        mode=cast(PoolMode, mode),
        max_server_connections=table.get("max_server_connections", int, 20),
        min_server_connections=table.get("min_server_connections", int, 0),
        borrow_timeout=table.duration("borrow_timeout", 5.0),
        idle_transaction_timeout=table.duration("idle_transaction_timeout", 0.0),
        connect_timeout=table.duration("connect_timeout", 5.0),
        idle_timeout=table.duration("idle_timeout", 600.0),
        server_lifetime=table.duration("server_lifetime", 3600.0),
        liveness_check_after=table.duration("liveness_check_after", 30.0),
        tls=cast(TlsMode, tls),
        tls_ca_file=tls_ca_file,
        credentials=_parse_credentials(table.table("credentials")),
        clients=clients,
    )
    table.check_unknown()
    if pool.credentials.source == "rds-iam":
        _check_rds_iam(table, pool)
    if pool.max_server_connections < 1:
        raise table.error("max_server_connections", "must be at least 1")
    if not 0 <= pool.min_server_connections <= pool.max_server_connections:
        raise table.error("min_server_connections", "must be between 0 and max_server_connections")
    if pool.borrow_timeout <= 0:
        raise table.error("borrow_timeout", "must be greater than zero")
    if pool.idle_transaction_timeout and (pool.engine, pool.mode) != ("postgres", "transaction"):
        raise table.error(
            "idle_transaction_timeout", "is supported for PostgreSQL pools in transaction mode only"
        )
    return pool


MYSQL_CLIENT_AUTH_PLUGINS = ("caching_sha2_password", "mysql_native_password")


def _file(table: _Table, name: str) -> Path | None:
    """A path key: relative to the config file's folder; it must exist."""
    text = table.string(name)
    if not text:
        return None
    path = Path(text)
    if not path.is_absolute() and table.base_dir is not None:
        path = table.base_dir / path
    if not path.is_file():
        raise table.error(name, f"{path} does not exist or is not a file")
    return path


def _parse_clients(table: _Table) -> ClientsConfig:
    """``[pool.clients]``: client authentication and client-side TLS."""
    auth = table.choice("auth", get_args(ClientAuth), "trust")
    cert_file, key_file = _file(table, "tls_cert_file"), _file(table, "tls_key_file")
    if (cert_file is None) != (key_file is None):
        raise table.error(
            "tls_key_file" if key_file is None else "tls_cert_file",
            "tls_cert_file and tls_key_file go together",
        )
    tls = table.choice("tls", get_args(ClientTlsMode), "require" if cert_file else "disable")
    clients = ClientsConfig(
        auth=cast(ClientAuth, auth),
        secret_id=table.string("secret_id"),
        poll_interval=table.duration("poll_interval", 30.0),
        tls=cast(ClientTlsMode, tls),
        tls_cert_file=cert_file,
        tls_key_file=key_file,
        tls_ca_file=_file(table, "tls_ca_file"),
        mysql_auth_plugin=table.choice(
            "mysql_auth_plugin", MYSQL_CLIENT_AUTH_PLUGINS, "caching_sha2_password"
        ),
    )
    table.check_unknown()
    if clients.tls != "disable" and cert_file is None:
        raise table.error(
            "tls", f'tls = "{clients.tls}" needs tls_cert_file and tls_key_file (the certificate clients see)'
        )
    if clients.auth == "password" and not clients.secret_id:
        raise table.error(
            "secret_id", 'required when auth = "password": the secret holding the clients\' passwords'
        )
    if clients.auth != "password" and clients.secret_id:
        raise table.error("secret_id", 'only used when auth = "password"')
    if clients.auth == "cert":
        if clients.tls != "require":
            raise table.error(
                "auth", 'auth = "cert" needs TLS: set tls_cert_file and tls_key_file (tls = "require")'
            )
        if clients.tls_ca_file is None:
            raise table.error(
                "tls_ca_file", 'required when auth = "cert": the CA client certificates must chain to'
            )
    if clients.poll_interval <= 0:
        raise table.error("poll_interval", "must be greater than zero")
    return clients


def _check_exposure(table: _Table, listen: Address, clients: ClientsConfig) -> None:
    """Beyond loopback, anyone who reaches the address gets a database session unless clients
    authenticate, and their passwords or certificates travel the network: both are required."""
    if listen.is_loopback or (clients.authenticates and clients.tls == "require"):
        return
    raise table.error(
        "listen",
        f"{listen} is not a loopback address: a pool reachable over the network needs client "
        'authentication and TLS: set [pool.clients] auth = "password" (with secret_id) or "cert" '
        '(with tls_ca_file), and tls_cert_file and tls_key_file (tls = "require")',
    )


def _check_rds_iam(table: _Table, pool: PoolConfig) -> None:
    """A token is signed for one host:port and travels as a cleartext password."""
    if pool.upstream is None:
        raise table.error(
            "upstream", 'required when credentials.source = "rds-iam": the token is signed for this host:port'
        )
    if pool.tls == "disable":
        raise ConfigError(
            table.source,
            table.key("credentials.source"),
            'an RDS IAM token is sent as a cleartext password, so it needs TLS: set tls = "verify-full" '
            '(recommended) or "verify-ca" / "require", not "disable"',
        )


def _check_listeners(config: Config) -> None:
    names: set[str] = set()
    for index, pool in enumerate(config.pools):
        if pool.name in names:
            raise ConfigError(config.source, f"pool[{index}].name", f"duplicate pool {pool.name!r}")
        names.add(pool.name)
    for address, pools in config.listeners().items():
        engines = {pool.engine for pool in pools}
        if len(engines) > 1:
            raise ConfigError(
                config.source,
                "pool.listen",
                f"pools on {address} mix engines {sorted(engines)}; one listener, one engine",
            )
        if len({pool.clients for pool in pools}) > 1:
            # TLS and (for MySQL, whose user name may pick the pool) authentication come before
            # the pool is known: one listener, one client policy.
            raise ConfigError(
                config.source,
                "pool.clients",
                f"pools on {address} differ in [pool.clients]; pools sharing a listener share one "
                "client policy",
            )


def parse_config(data: Mapping[str, Any], source: str, base_dir: Path | None = None) -> Config:
    """Validate ``data``; relative file paths in it are taken from ``base_dir`` (the file's folder)."""
    root = _Table(source, "", data, base_dir)
    shutdown_timeout = root.duration("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT)
    aws_table = root.table("aws")
    aws = AwsConfig(region=aws_table.string("region"), endpoint_url=aws_table.string("endpoint_url"))
    aws_table.check_unknown()
    admin_table = root.table("admin")
    admin = AdminConfig(listen=admin_table.address("listen", None))
    admin_table.check_unknown()
    if admin.listen is not None and not admin.listen.is_loopback:
        raise admin_table.error(
            "listen", f"{admin.listen} is not a loopback address; the admin API is local only"
        )
    logging_table = root.table("logging")
    logging_config = LoggingConfig(
        format=cast(LogFormat, logging_table.choice("format", get_args(LogFormat), "text")),
        level=cast(LogLevel | None, logging_table.string("level")),
    )
    if logging_config.level is not None and logging_config.level not in get_args(LogLevel):
        raise logging_table.error(
            "level", f"must be one of {', '.join(get_args(LogLevel))}; got {logging_config.level!r}"
        )
    logging_table.check_unknown()
    root.used.add("pool")
    raw_pools = data.get("pool", [])
    if not isinstance(raw_pools, list) or not raw_pools:
        raise ConfigError(source, "pool", "at least one [[pool]] table is required")
    for index, raw in enumerate(raw_pools):
        if not isinstance(raw, Mapping):
            raise ConfigError(source, f"pool[{index}]", "expected a table ([[pool]])")
    pools = tuple(
        _parse_pool(_Table(source, f"pool[{index}]", raw, base_dir)) for index, raw in enumerate(raw_pools)
    )
    root.check_unknown()
    config = Config(
        pools=pools,
        aws=aws,
        admin=admin,
        logging=logging_config,
        source=source,
        shutdown_timeout=shutdown_timeout,
    )
    _check_listeners(config)
    return config


def load_config(path: Path) -> Config:
    try:
        text = path.read_bytes().decode("utf-8")  # TOML files are UTF-8, whatever the locale
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"not UTF-8 (byte {exc.start}): TOML files must be UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"invalid TOML: {exc}") from None
    return parse_config(data, str(path), path.parent)


def quick_config(
    *,
    engine: str,
    listen: str | None,
    secret_id: str,
    upstream: str | None = None,
    database: str | None = None,
    mode: str = "session",
    endpoint_url: str | None = None,
    region: str | None = None,
    tls: str = "verify-full",
    tls_ca_file: str | None = None,
    admin_listen: str | None = None,
) -> Config:
    """The ``rotaproxy run --engine ... --secret-id ...`` form, validated like a file."""
    pool: dict[str, Any] = {
        "name": database or "default",
        "engine": engine,
        "mode": mode,
        "tls": tls,
        "credentials": {"source": "secretsmanager", "secret_id": secret_id},
    }
    optional = {
        "listen": listen,
        "upstream": upstream,
        "database": database,
        "tls_ca_file": tls_ca_file,
    }
    pool.update({key: value for key, value in optional.items() if value})
    data: dict[str, Any] = {
        "pool": [pool],
        "aws": {key: value for key, value in (("endpoint_url", endpoint_url), ("region", region)) if value},
    }
    if admin_listen:
        data["admin"] = {"listen": admin_listen}
    return parse_config(data, "<command line>")


def format_seconds(seconds: float) -> str:
    return f"{seconds:g}s"
