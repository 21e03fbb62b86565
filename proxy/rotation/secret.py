"""One version of the RDS-style JSON secret a rotation reads and writes, and what a new version
holds: a generated password and, for alternating-users, the other user of the pair."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from proxy.config import UPSTREAM_DEFAULT_PORTS, Engine
from proxy.credentials.base import Credentials
from proxy.credentials.rds_json import parse_port
from proxy.redaction import register_secret
from proxy.rotation.errors import RotationError

CLONE_SUFFIX = "_clone"
PASSWORD_LENGTH = 32
# Letters, digits and punctuation that need no quoting in SQL string literals, URLs or
# connection strings: no quotes, backslash, '@', '/', ':', '%' or spaces.
PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_.~"

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


def _where(kind: str, name: str, version_id: str, stage: str) -> str:
    if kind == "secret":
        return f"the {stage} version of secret {name!r}"
    return f"version {version_id} of {kind} {name!r}"


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A random password from PASSWORD_ALPHABET with at least one letter and one digit."""
    while True:
        password = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
        if any(ch.isalpha() for ch in password) and any(ch.isdigit() for ch in password):
            return password


def alternate_username(username: str) -> str:
    """``user`` ↔ ``user_clone``."""
    return base_username(username) if username.endswith(CLONE_SUFFIX) else username + CLONE_SUFFIX


def base_username(username: str) -> str:
    return username[: -len(CLONE_SUFFIX)] if username.endswith(CLONE_SUFFIX) else username


@dataclass(frozen=True)
class SecretValue:
    """One version of RDS-style JSON credentials (a Secrets Manager secret, or a Parameter Store
    parameter: ``kind``); the JSON stays out of the repr."""

    secret_id: str
    version_id: str
    stage: str
    data: Mapping[str, Any] = field(repr=False)
    kind: str = "secret"  # or "parameter": no stages, just versions

    @classmethod
    def parse(
        cls, secret_id: str, version_id: str, stage: str, text: str | None, kind: str = "secret"
    ) -> SecretValue:
        where = _where(kind, secret_id, version_id, stage)
        if text is None:
            raise RotationError(f"{where} has no SecretString (binary secrets are not supported)")
        try:
            data = json.loads(text)
        except ValueError:
            raise RotationError(f"{where} is not valid JSON") from None
        if not isinstance(data, dict):
            raise RotationError(f"{where} is JSON but not an object")
        return cls.of_fields(secret_id, version_id, stage, data, kind)

    @classmethod
    def of_fields(
        cls, secret_id: str, version_id: str, stage: str, data: Mapping[str, Any], kind: str = "secret"
    ) -> SecretValue:
        """From decoded fields (a JSON object, or a Parameter Store path's parameters)."""
        for key in ("username", "password"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise RotationError(f"{_where(kind, secret_id, version_id, stage)} lacks a string {key!r}")
        register_secret(data["password"])
        return cls(secret_id, version_id, stage, dict(data), kind)

    @property
    def where(self) -> str:
        return _where(self.kind, self.secret_id, self.version_id, self.stage)

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
        try:
            port = parse_port(self.data.get("port"))
        except ValueError:
            raise RotationError(f"{self.where} has a 'port' that is not a port number") from None
        return UPSTREAM_DEFAULT_PORTS[self.engine] if port is None else port

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
