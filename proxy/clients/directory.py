"""The clients' own credentials: a Secrets Manager secret holding a JSON map of user name to
password (or to a PostgreSQL SCRAM-SHA-256 verifier), read and polled like the upstream
secret; a new version takes effect for new logins, sessions already in are not touched.

Each entry is turned into what the servers keep (a SCRAM verifier for PostgreSQL clients,
the double hashes of both MySQL plugins) when the version is loaded, and every password and
verifier is registered for log masking. Errors name the secret and the user, never a value.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocols.mysql.server_auth import MySqlVerifier
from protocols.postgres.server_auth import VERIFIER_PREFIX, ScramVerifier
from proxy.credentials.base import CredentialsError, PollingLoop
from proxy.credentials.secrets_manager import AWSCURRENT, SecretsManagerClients, call_secrets_manager
from proxy.redaction import register_secret

log = logging.getLogger("proxy.clients")


@dataclass(frozen=True, slots=True)
class ClientEntry:
    """One client user's credentials as the login checks need them."""

    scram: ScramVerifier = field(repr=False)
    mysql: MySqlVerifier = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClientDirectory:
    """One version of the client secret."""

    version_id: str | None
    entries: Mapping[str, ClientEntry] = field(repr=False)

    def get(self, user: str) -> ClientEntry | None:
        return self.entries.get(user)


def parse_directory(secret_id: str, text: str | None, version_id: str | None) -> ClientDirectory:
    """Decode ``{"user": "password" | "SCRAM-SHA-256$...", ...}``; CredentialsError otherwise."""
    source = f"client secret {secret_id!r}"
    if text is None:
        raise CredentialsError(source, "the secret has no SecretString (binary secrets are not supported)")
    try:
        data = json.loads(text)
    except ValueError:
        raise CredentialsError(source, "SecretString is not valid JSON") from None
    if not isinstance(data, dict) or not data:
        raise CredentialsError(source, "SecretString must be a JSON object mapping user names to passwords")
    entries: dict[str, ClientEntry] = {}
    for user, value in data.items():
        if not isinstance(value, str) or not value:
            raise CredentialsError(source, f"user {user!r}: the value must be a non-empty string")
        register_secret(value)
        if value.startswith(VERIFIER_PREFIX):
            try:
                scram = ScramVerifier.parse(value)
            except ValueError as exc:
                raise CredentialsError(source, f"user {user!r}: {exc}") from None
            entries[user] = ClientEntry(scram, MySqlVerifier(scram=scram))
        else:
            entries[user] = ClientEntry(
                ScramVerifier.from_password(value), MySqlVerifier.from_password(value)
            )
    return ClientDirectory(version_id, entries)


class ClientSecretSource(PollingLoop):
    """A client secret in Secrets Manager: AWSCURRENT loaded, polled (DescribeSecret) for a
    new version, which is fetched by id. While Secrets Manager fails, the loaded version
    keeps serving."""

    service = "Secrets Manager"
    serving_meanwhile = "the loaded version keeps serving"
    poll_at_start = True

    def __init__(self, secret_id: str, poll_interval: float, clients: SecretsManagerClients) -> None:
        self.secret_id = secret_id
        self.description = f"client secret {secret_id!r}"
        self._init_polling(poll_interval)
        self._clients = clients
        self._directory: ClientDirectory | None = None
        self._lock = asyncio.Lock()
        self.versions_loaded = 0

    def __repr__(self) -> str:
        version = self._directory.version_id if self._directory else None
        return f"ClientSecretSource({self.secret_id!r}, version={version})"

    @property
    def version_id(self) -> str | None:
        return self._directory.version_id if self._directory else None

    async def directory(self) -> ClientDirectory:
        """The loaded version, loading it first if none is (CredentialsError if that fails)."""
        if self._directory is not None:
            return self._directory
        await self.poll()
        assert self._directory is not None
        return self._directory

    async def poll(self) -> bool:
        """Load AWSCURRENT if it is not the version loaded; True when a new one was loaded."""
        async with self._lock:
            described = await self._call("describe_secret")
            stages: dict[str, list[str]] = described.get("VersionIdsToStages") or {}
            current = next((vid for vid, labels in stages.items() if AWSCURRENT in labels), None)
            loaded = self._directory
            if loaded is not None and (current is None or current == loaded.version_id):
                return False
            selector = {"VersionId": current} if current else {"VersionStage": AWSCURRENT}
            response = await self._call("get_secret_value", **selector)
            text, version_id = response.get("SecretString"), response.get("VersionId")
            # Deriving a SCRAM verifier costs a PBKDF2 per user: off the event loop.
            directory = await asyncio.to_thread(parse_directory, self.secret_id, text, version_id)
            self._directory = directory
            self.versions_loaded += 1
            log.info(
                "%s: version %s loaded (%d users)",
                self.description,
                version_id,
                len(directory.entries),
            )
            return True

    async def _call(self, operation: str, **kwargs: str) -> dict[str, Any]:
        return await call_secrets_manager(
            self._clients, self.secret_id, self.description, operation, **kwargs
        )

    async def close(self) -> None:
        await self.stop_polling()

    def state(self) -> dict[str, object]:
        """For /pools: which version serves (never a value)."""
        return {
            "secret_id": self.secret_id,
            "version_id": self.version_id,
            "versions_loaded": self.versions_loaded,
            "poll_failures": self.poll_failures,
            "last_error": self.last_poll_error,
        }
