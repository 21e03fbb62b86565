"""AWS Secrets Manager as a credential source: the RDS-style JSON secret decoded, AWSCURRENT
cached and polled for new versions, AWSPENDING tried while a rotation is under way."""

from __future__ import annotations

from typing import Any

from proxy.config import CredentialsConfig
from proxy.credentials.aws import AwsClients, aws_call
from proxy.credentials.base import Credentials, CredentialsError, PolledCredentialSource, log
from proxy.credentials.rds_json import credentials_from_json

# The staging labels a rotation moves from version to version.
AWSCURRENT = "AWSCURRENT"
AWSPENDING = "AWSPENDING"
AWSPREVIOUS = "AWSPREVIOUS"

# The name callers knew before the clients were shared with Parameter Store.
SecretsManagerClients = AwsClients


def credentials_from_secret_string(
    secret_id: str, text: str | None, version_id: str | None, stage: str | None
) -> Credentials:
    """Decode an RDS-style JSON secret: username, password, and optional host/port/dbname."""
    source = f"secret {secret_id!r}"
    if text is None:
        raise CredentialsError(source, "the secret has no SecretString (binary secrets are not supported)")
    return credentials_from_json(source, text, version_id=version_id, stage=stage)


_AWS_PROBLEMS = {
    "ResourceNotFoundException": "the secret does not exist",
    "AccessDeniedException": "access denied (check the IAM policy: secretsmanager:GetSecretValue)",
    "DecryptionFailure": "Secrets Manager cannot decrypt the secret (check kms:Decrypt)",
}


async def call_secrets_manager(
    clients: SecretsManagerClients, secret_id: str, description: str, operation: str, **kwargs: Any
) -> dict[str, Any]:
    """One Secrets Manager call; every failure becomes a CredentialsError naming the secret."""

    async def call() -> dict[str, Any]:
        client = await clients.client("secretsmanager")
        response: dict[str, Any] = await getattr(client, operation)(SecretId=secret_id, **kwargs)
        return response

    return await aws_call(description, "Secrets Manager", call, _AWS_PROBLEMS)


class SecretsManagerSource(PolledCredentialSource):
    """A secret in AWS Secrets Manager: AWSCURRENT cached, polled for new versions.

    Polling asks DescribeSecret (cheap, no secret value) which version holds AWSCURRENT and
    fetches that version by id only when it changed.
    """

    service = "Secrets Manager"
    newest_label = AWSCURRENT

    def __init__(self, config: CredentialsConfig, clients: AwsClients) -> None:
        super().__init__(config.poll_interval)
        assert config.secret_id is not None
        self.secret_id = config.secret_id
        self.description = config.description
        self._clients = clients

    async def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        return await call_secrets_manager(
            self._clients, self.secret_id, self.description, operation, **kwargs
        )

    async def _get(self, stage: str, **selector: str) -> Credentials:
        # Always name the stage or the version: moto can answer an unstaged get with an old one.
        response = await self._call("get_secret_value", **(selector or {"VersionStage": stage}))
        return credentials_from_secret_string(
            self.secret_id, response.get("SecretString"), response.get("VersionId"), stage
        )

    async def _fetch(self) -> Credentials:
        return await self._get(AWSCURRENT)

    async def _fetch_if_changed(self, known_version: str | None) -> Credentials | None:
        described = await self._call("describe_secret")
        stages: dict[str, list[str]] = described.get("VersionIdsToStages") or {}
        current_id = next((vid for vid, labels in stages.items() if AWSCURRENT in labels), None)
        if current_id is None or current_id == known_version:
            return None
        return await self._get(AWSCURRENT, VersionId=current_id)

    async def _bridge(self, failed: Credentials) -> Credentials | None:
        """AWSPENDING: in a single-user rotation, setSecret has already changed the password in
        the database while AWSCURRENT still holds the old one until finishSecret."""
        try:
            pending = await self._get(AWSPENDING)
        except CredentialsError:
            return None  # no rotation under way (or unreadable): nothing to bridge with
        if pending.version_id != failed.version_id:
            log.info(
                "%s: trying AWSPENDING version %s (rotation window)", self.description, pending.version_id
            )
        return pending
