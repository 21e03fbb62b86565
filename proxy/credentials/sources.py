"""The credential source a pool's ``[pool.credentials]`` names."""

from __future__ import annotations

from proxy.config import CredentialsConfig
from proxy.credentials.aws import AwsClients
from proxy.credentials.base import CredentialSource
from proxy.credentials.parameter_store import ParameterStoreSource
from proxy.credentials.rds_iam import RdsIamSource
from proxy.credentials.secrets_manager import SecretsManagerSource
from proxy.credentials.static import StaticCredentialSource


def make_source(config: CredentialsConfig, clients: AwsClients) -> CredentialSource:
    if config.source == "static":
        return StaticCredentialSource(config)
    if config.source == "rds-iam":
        return RdsIamSource(config, clients.aws)
    if config.source == "parameterstore":
        return ParameterStoreSource(config, clients)
    return SecretsManagerSource(config, clients)
