"""The credential source a pool's ``[pool.credentials]`` names."""

from __future__ import annotations

from proxy.config import CredentialsConfig
from proxy.credentials.base import CredentialSource
from proxy.credentials.rds_iam import RdsIamSource
from proxy.credentials.secrets_manager import SecretsManagerClients, SecretsManagerSource
from proxy.credentials.static import StaticCredentialSource


def make_source(config: CredentialsConfig, clients: SecretsManagerClients) -> CredentialSource:
    if config.source == "static":
        return StaticCredentialSource(config)
    if config.source == "rds-iam":
        return RdsIamSource(config, clients.aws)
    return SecretsManagerSource(config, clients)
