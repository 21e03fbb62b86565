"""Static credentials: a username and password from the config, the same for the life of the
process."""

from __future__ import annotations

from proxy.config import CredentialsConfig
from proxy.credentials.base import Credentials, CredentialSource
from proxy.redaction import register_secret


class StaticCredentialSource(CredentialSource):
    def __init__(self, config: CredentialsConfig) -> None:
        super().__init__()
        if config.username is None or config.password is None:
            raise ValueError("static credentials need a username and a password")
        register_secret(config.password)
        self.description = config.description
        self._credentials = Credentials(config.username, config.password)

    async def _fetch(self) -> Credentials:
        return self._credentials
