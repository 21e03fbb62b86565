"""Configuration: TOML file or quick CLI form, parsed once into frozen, typed objects.

Every error names the file, the key and what is wrong. The rest of the code never sees a
raw dict.
"""

from __future__ import annotations

import grp
import ipaddress
import math
import pwd
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

Engine = Literal["postgres", "mysql"]
PoolMode = Literal["transaction", "session"]
TlsMode = Literal["disable", "require", "verify-ca", "verify-full"]
CredentialSourceKind = Literal["secretsmanager", "static", "rds-iam", "parameterstore"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
ClientAuth = Literal["trust", "password", "cert"]
ClientTlsMode = Literal["disable", "allow", "require"]

DEFAULT_PORTS: dict[str, int] = {"postgres": 6432, "mysql": 6033}
UNIX_PREFIX = "unix:"
# sun_path holds 108 bytes with the terminating NUL.
UNIX_PATH_LIMIT = 107
DEFAULT_SOCKET_MODE = 0o660
# Client limits (PgBouncer's names where it has one). The process-wide count of client
# connections; none per pool unless set.
DEFAULT_MAX_CLIENT_CONNECTIONS = 10_000
DEFAULT_CLIENT_LOGIN_TIMEOUT = 60.0  # PgBouncer's client_login_timeout
DEFAULT_CLIENT_STALL_TIMEOUT = 60.0  # a client that stops in the middle of a message
# The largest message a client may send: the servers' own limits. PostgreSQL refuses a
# message over 1 GiB (MaxAllocSize); MySQL 8's max_allowed_packet defaults to 64 MiB (MariaDB's
# to 16 MiB, which the server enforces itself).
DEFAULT_MAX_CLIENT_MESSAGE_SIZE: dict[str, int] = {"postgres": (1 << 30) - 1, "mysql": 64 << 20}
MIN_CLIENT_MESSAGE_SIZE = 1024
MAX_CLIENT_MESSAGE_SIZE = 1 << 30
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
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, None: 1}


class ConfigError(Exception):
    """A configuration problem: ``file: key: why``."""

    def __init__(self, source: str, key: str, why: str) -> None:
        super().__init__(f"{source}: {key}: {why}" if key else f"{source}: {why}")
        self.source = source
        self.key = key
        self.why = why


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP host and port, or (``path`` set) a Unix-domain socket: ``unix:/run/x/.s.PGSQL.6432``."""

    host: str
    port: int
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"{UNIX_PREFIX}{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def unix(cls, path: str) -> Address:
        return cls("", 0, path)

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    @property
    def is_loopback(self) -> bool:
        if self.path is not None:
            return False
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
    parameter: str | None = None  # parameterstore: a SecureString of RDS JSON, or a path of fields

    @property
    def description(self) -> str:
        if self.source == "secretsmanager":
            return f"secret {self.secret_id!r}"
        if self.source == "parameterstore":
            return f"parameter {self.parameter!r}"
        if self.source == "rds-iam":
            return f"RDS IAM tokens for user {self.username!r}"
        return f"static credentials for user {self.username!r}"


@dataclass(frozen=True, slots=True)
class ClientsConfig:
    """``[pool.clients]``: who may use the pool, and how they prove it.

    On a Unix socket the caller's uid and groups are read with SO_PEERCRED; with either
    allow list set, a caller must be in one of them. TLS and the login method are settled
    before the pool is chosen, so pools that share a listener have equal ``access`` (checked
    in ``_check_listeners``); the allow lists are each pool's own.
    """

    allow_uids: frozenset[int] | None = None  # None: any uid
    allow_gids: frozenset[int] | None = None  # None: any group
    auth: ClientAuth = "trust"  # trust | password (secret_id's users) | cert (tls_ca_file's clients)
    secret_id: str | None = None  # password: a JSON map of user to password or SCRAM verifier
    poll_interval: float = 30.0
    tls: ClientTlsMode = "disable"  # default "require" once tls_cert_file is set
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None  # cert: the CA client certificates must chain to
    mysql_auth_plugin: str = "caching_sha2_password"  # what a MySQL greeting asks for first

    @property
    def restricted(self) -> bool:
        return self.allow_uids is not None or self.allow_gids is not None

    @property
    def authenticates(self) -> bool:
        """Whether clients prove who they are (what a non-loopback listener requires)."""
        return self.auth != "trust"

    @property
    def access(self) -> tuple[object, ...]:
        """What a listener settles for every pool on it: TLS and the login method."""
        return (
            self.auth,
            self.secret_id,
            self.poll_interval,
            self.tls,
            self.tls_cert_file,
            self.tls_key_file,
            self.tls_ca_file,
            self.mysql_auth_plugin,
        )


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
    # Client limits: 0 = none / off.
    max_client_connections: int = 0
    client_idle_timeout: float = 0.0
    max_client_message_size: int = DEFAULT_MAX_CLIENT_MESSAGE_SIZE["postgres"]
    # A Unix-socket listener's file (pools sharing it agree on these).
    socket_mode: int = DEFAULT_SOCKET_MODE
    socket_group: int | None = None  # None: the process's group
    clients: ClientsConfig = ClientsConfig()


@dataclass(frozen=True, slots=True)
class ClientLimitsConfig:
    """Process-wide client limits (top-level keys); 0 = off for the timeouts."""

    max_client_connections: int = DEFAULT_MAX_CLIENT_CONNECTIONS
    client_login_timeout: float = DEFAULT_CLIENT_LOGIN_TIMEOUT
    client_stall_timeout: float = DEFAULT_CLIENT_STALL_TIMEOUT


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
    limits: ClientLimitsConfig = ClientLimitsConfig()

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


def parse_size(text: object) -> int:
    """A number of bytes, or '64KiB', '16MiB', '1GiB'."""
    if isinstance(text, bool):
        raise ValueError("expected a size like '16MiB' or a number of bytes")
    if isinstance(text, int):
        size = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise ValueError(f"expected a size like '16MiB', '64KiB' or a number of bytes, got {text!r}")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def parse_listen(text: str, default_port: int | None = None) -> Address:
    """A listen address: ``unix:/absolute/path`` or what ``parse_address`` takes."""
    if not text.strip().startswith(UNIX_PREFIX):
        return parse_address(text, default_port)
    path = text.strip()[len(UNIX_PREFIX) :]
    if not path.startswith("/"):
        raise ValueError(f"a Unix socket path must be absolute, got {path!r}")
    if len(path.encode()) > UNIX_PATH_LIMIT:
        raise ValueError(f"a Unix socket path may have at most {UNIX_PATH_LIMIT} bytes; {path!r} is longer")
    if path.endswith("/") or "\x00" in path:
        raise ValueError(f"{path!r} is not a socket file name")
    return Address.unix(path)


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

    def address(self, name: str, default_port: int | None, *, unix: bool = False) -> Address | None:
        text = self.string(name)
        if text is None:
            return None
        try:
            return parse_listen(text, default_port) if unix else parse_address(text, default_port)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def size(self, name: str, default: int) -> int:
        self.used.add(name)
        if name not in self.data:
            return default
        try:
            return parse_size(self.data[name])
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def ids(self, name: str, kind: Literal["user", "group"]) -> frozenset[int] | None:
        """A list of uids (gids), each a number or a name looked up on this machine."""
        self.used.add(name)
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, list):
            raise self.error(name, f"expected a list of {kind} names or numbers, got {type(value).__name__}")
        return frozenset(self.id_of(name, item, kind) for item in value)

    def id_of(self, name: str, item: object, kind: Literal["user", "group"]) -> int:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < 1 << 32:
                raise self.error(name, f"{item} is not a valid {kind} id")
            return item
        if not isinstance(item, str) or not item:
            raise self.error(name, f"expected a {kind} name or number, got {item!r}")
        if item.isdigit():
            return int(item)
        try:
            return pwd.getpwnam(item).pw_uid if kind == "user" else grp.getgrnam(item).gr_gid
        except KeyError:
            raise self.error(name, f"no {kind} named {item!r} on this machine") from None

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
        parameter=table.string("parameter"),
    )
    table.check_unknown()
    if credentials.source == "secretsmanager" and not credentials.secret_id:
        raise table.error("secret_id", 'required when source = "secretsmanager"')
    if credentials.source == "parameterstore":
        if not credentials.parameter:
            raise table.error("parameter", 'required when source = "parameterstore": a name like "/prod/db"')
        if "secret_id" in table.data:
            raise table.error("secret_id", 'not used when source = "parameterstore" (use parameter)')
    elif credentials.parameter is not None:
        raise table.error("parameter", 'only used when source = "parameterstore"')
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
    listen = table.address("listen", None, unix=True) or Address("127.0.0.1", DEFAULT_PORTS[engine])
    clients = _parse_clients(table.table("clients"), listen)
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
        max_client_connections=table.get("max_client_connections", int, 0),
        client_idle_timeout=table.duration("client_idle_timeout", 0.0),
        max_client_message_size=table.size(
            "max_client_message_size", DEFAULT_MAX_CLIENT_MESSAGE_SIZE[engine]
        ),
        socket_mode=_socket_mode(table, listen),
        socket_group=_socket_group(table, listen),
        credentials=_parse_credentials(table.table("credentials")),
        clients=clients,
    )
    _check_renamed(table)
    table.check_unknown()
    if pool.credentials.source == "rds-iam":
        _check_rds_iam(table, pool)
    if pool.max_server_connections < 1:
        raise table.error("max_server_connections", "must be at least 1")
    if not 0 <= pool.min_server_connections <= pool.max_server_connections:
        raise table.error("min_server_connections", "must be between 0 and max_server_connections")
    if pool.borrow_timeout <= 0:
        raise table.error("borrow_timeout", "must be greater than zero")
    if pool.max_client_connections < 0:
        raise table.error("max_client_connections", "must be 0 (no limit for the pool) or more")
    if not MIN_CLIENT_MESSAGE_SIZE <= pool.max_client_message_size <= MAX_CLIENT_MESSAGE_SIZE:
        raise table.error(
            "max_client_message_size",
            f"must be between {MIN_CLIENT_MESSAGE_SIZE} bytes and 1GiB; got {pool.max_client_message_size}",
        )
    if pool.idle_transaction_timeout and (pool.engine, pool.mode) != ("postgres", "transaction"):
        raise table.error(
            "idle_transaction_timeout", "is supported for PostgreSQL pools in transaction mode only"
        )
    return pool


# Other poolers' names for what rotaproxy calls otherwise: the error says which.
_RENAMED = {"query_wait_timeout": "borrow_timeout", "max_packet_size": "max_client_message_size"}


def _check_renamed(table: _Table) -> None:
    for name, ours in _RENAMED.items():
        if name in table.data:
            raise table.error(name, f"rotaproxy calls this {ours}")


def _socket_mode(table: _Table, listen: Address) -> int:
    table.used.add("socket_mode")
    if "socket_mode" not in table.data:
        return DEFAULT_SOCKET_MODE
    if not listen.is_unix:
        raise table.error("socket_mode", 'only for a Unix socket (listen = "unix:/path")')
    value = table.data["socket_mode"]
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value.strip()):
        return int(value.strip(), 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777:
        return value  # TOML's 0o660
    raise table.error("socket_mode", f'expected permissions in octal like "0660", got {value!r}')


def _socket_group(table: _Table, listen: Address) -> int | None:
    table.used.add("socket_group")
    if "socket_group" not in table.data:
        return None
    if not listen.is_unix:
        raise table.error("socket_group", 'only for a Unix socket (listen = "unix:/path")')
    return table.id_of("socket_group", table.data["socket_group"], "group")


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


def _parse_clients(table: _Table, listen: Address) -> ClientsConfig:
    """``[pool.clients]``: the callers a Unix socket lets in, client authentication and
    client-side TLS."""
    auth = table.choice("auth", get_args(ClientAuth), "trust")
    cert_file, key_file = _file(table, "tls_cert_file"), _file(table, "tls_key_file")
    if (cert_file is None) != (key_file is None):
        raise table.error(
            "tls_key_file" if key_file is None else "tls_cert_file",
            "tls_cert_file and tls_key_file go together",
        )
    tls = table.choice("tls", get_args(ClientTlsMode), "require" if cert_file else "disable")
    clients = ClientsConfig(
        allow_uids=table.ids("allow_uids", "user"),
        allow_gids=table.ids("allow_gids", "group"),
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
    if clients.restricted and not listen.is_unix:
        name = "allow_uids" if clients.allow_uids is not None else "allow_gids"
        raise table.error(
            name,
            f"a caller's uid and groups are known only on a Unix socket; {listen} is TCP: "
            'set listen = "unix:/path"',
        )
    return clients


def _check_exposure(table: _Table, listen: Address, clients: ClientsConfig) -> None:
    """Beyond loopback, anyone who reaches the address gets a database session unless clients
    authenticate, and their passwords or certificates travel the network: both are required."""
    if listen.is_loopback or listen.is_unix or (clients.authenticates and clients.tls == "require"):
        return
    raise table.error(
        "listen",
        f"{listen} is not a loopback address or a Unix socket: a pool reachable over the network "
        'needs client authentication and TLS: set [pool.clients] auth = "password" (with secret_id) '
        'or "cert" (with tls_ca_file), and tls_cert_file and tls_key_file (tls = "require")',
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
        for key in ("socket_mode", "socket_group"):
            if len({getattr(pool, key) for pool in pools}) > 1:
                index = config.pools.index(pools[-1])
                raise ConfigError(
                    config.source,
                    f"pool[{index}].{key}",
                    f"pools sharing {address} must agree on {key}: it is one socket file",
                )
        if len({pool.clients.access for pool in pools}) > 1:
            # TLS and (for MySQL, whose user name may pick the pool) authentication come before
            # the pool is known: one listener, one client policy (the allow lists are each pool's).
            raise ConfigError(
                config.source,
                "pool.clients",
                f"pools on {address} differ in [pool.clients] auth or TLS; pools sharing a listener share "
                "one client policy",
            )


def parse_config(data: Mapping[str, Any], source: str, base_dir: Path | None = None) -> Config:
    """Validate ``data``; relative file paths in it are taken from ``base_dir`` (the file's folder)."""
    root = _Table(source, "", data, base_dir)
    shutdown_timeout = root.duration("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT)
    limits = ClientLimitsConfig(
        max_client_connections=root.get("max_client_connections", int, DEFAULT_MAX_CLIENT_CONNECTIONS),
        client_login_timeout=root.duration("client_login_timeout", DEFAULT_CLIENT_LOGIN_TIMEOUT),
        client_stall_timeout=root.duration("client_stall_timeout", DEFAULT_CLIENT_STALL_TIMEOUT),
    )
    if limits.max_client_connections < 1:
        raise root.error("max_client_connections", "must be at least 1")
    _check_renamed(root)
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
        limits=limits,
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
