"""The RDS-style credential JSON (``username``, ``password``, optional ``host``, ``port``,
``dbname``, ``engine``) every stored-credential source decodes, with errors that name where the
value came from and never show it."""

from __future__ import annotations

import json
from collections.abc import Mapping

from proxy.credentials.base import Credentials, CredentialsError
from proxy.redaction import register_secret


def credentials_from_json(
    source: str,
    text: str,
    *,
    version_id: str | None,
    stage: str | None,
    value_name: str = "SecretString",
    holder: str = "the secret",
) -> Credentials:
    """Decode ``text``; ``source`` ("secret 'x'", "parameter '/x'") and ``value_name`` /
    ``holder`` word the errors."""
    try:
        data = json.loads(text)
    except ValueError:
        raise CredentialsError(source, f"{value_name} is not valid JSON") from None
    if not isinstance(data, dict):
        raise CredentialsError(source, f"{value_name} is JSON but not an object")
    return credentials_from_fields(
        source,
        data,
        version_id=version_id,
        stage=stage,
        lacks=f"{holder}'s JSON lacks a string",
        holder=holder,
    )


def credentials_from_fields(
    source: str,
    data: Mapping[str, object],
    *,
    version_id: str | None,
    stage: str | None,
    lacks: str,
    holder: str,
) -> Credentials:
    """Credentials from decoded fields (a JSON object, or one parameter per field); ``lacks``
    words a missing field ("the secret's JSON lacks a string"), ``holder`` a bad port's owner."""
    username, password = data.get("username"), data.get("password")
    missing = [key for key, value in (("username", username), ("password", password)) if not _text(value)]
    if missing:
        raise CredentialsError(source, f"{lacks} {' and '.join(repr(k) for k in missing)}")
    assert isinstance(username, str) and isinstance(password, str)
    try:
        port = parse_port(data.get("port"))
    except ValueError:
        raise CredentialsError(source, f"{holder}'s 'port' is not a valid port number") from None
    register_secret(password)
    host, dbname, engine = data.get("host"), data.get("dbname"), data.get("engine")
    return Credentials(
        username=username,
        password=password,
        host=host if isinstance(host, str) else None,
        port=port,
        dbname=dbname if isinstance(dbname, str) else None,
        engine=engine if isinstance(engine, str) else None,
        version_id=version_id,
        stage=stage,
    )


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def parse_port(value: object) -> int | None:
    """The secret's port: an int or a digit string in 1..65535, or None when absent."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    raise ValueError("not a port number")
