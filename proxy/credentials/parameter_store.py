"""AWS Systems Manager Parameter Store as a credential source: a SecureString of RDS-style JSON
(or a path holding one parameter per field), read with decryption and polled by version.

Parameter Store has no staging labels: the newest version is the current one, and nothing is
pending while a rotation runs (``rotaproxy rotate --source parameterstore`` alternates users, so
the old credentials keep working until the pool moves). What is shared with Secrets Manager
(polling, stale-while-revalidate, the re-read after an authentication failure) lives in
``PolledCredentialSource``; this module only knows how to fetch and version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.config import CredentialsConfig
from proxy.credentials.aws import AwsClients, aws_call
from proxy.credentials.base import Credentials, CredentialsError, PolledCredentialSource, log
from proxy.credentials.rds_json import credentials_from_fields, credentials_from_json

SECURE_STRING = "SecureString"
# The fields a path layout may hold, one parameter each (``<path>/username`` ...).
FIELDS = ("username", "password", "host", "port", "dbname", "engine")
SINGLE, PATH = "parameter", "path"
KMS_ERRORS = frozenset(
    {"InvalidKeyId", "KMSAccessDeniedException", "KMSDisabledException", "KMSInvalidStateException"}
)


def parameter_problem(code: str, aws_words: str) -> str | None:
    """Words for an SSM error code (AWS's own message describes the request, never a value)."""
    if code == "AccessDeniedException" and "kms" in aws_words.lower():
        return f"KMS refused to decrypt the SecureString (check kms:Decrypt on its key): {aws_words}"
    if code == "AccessDeniedException":
        return "access denied (check the IAM policy: ssm:GetParameter, ssm:GetParametersByPath)" + (
            f": {aws_words}" if aws_words else ""
        )
    if code in KMS_ERRORS:
        return f"KMS refused to decrypt the SecureString ({code}: check the key and kms:Decrypt)"
    if code == "ParameterNotFound":
        return "the parameter does not exist (ParameterNotFound)"
    return None


@dataclass(frozen=True)
class StoredParameter:
    """What one read found: a single parameter, or the field parameters under a path."""

    name: str
    layout: str  # SINGLE or PATH
    version: str  # "3", or each field's version for a path: "password:3,username:2"
    # As GetParameter / GetParametersByPath return them (decrypted): keyed by leaf for a path.
    parameters: dict[str, dict[str, Any]] = field(repr=False)

    @property
    def password_type(self) -> object:
        item = self.parameters.get("password" if self.layout == PATH else self.name, {})
        return item.get("Type", SECURE_STRING)


async def read_parameter(client: Any, name: str, *, path_first: bool = False) -> StoredParameter | None:
    """Read ``name`` as a parameter, else as a path of field parameters (``path_first``: the
    other way round); None when neither exists. AWS errors other than ParameterNotFound raise."""
    readers = [_read_single, _read_path]
    if path_first:
        readers.reverse()
    for reader in readers:
        found = await reader(client, name)
        if found is not None:
            return found
    return None


async def _read_single(client: Any, name: str) -> StoredParameter | None:
    from botocore.exceptions import ClientError

    try:
        response = await client.get_parameter(Name=name, WithDecryption=True)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return None
        raise
    parameter: dict[str, Any] = response["Parameter"]
    return StoredParameter(name, SINGLE, str(parameter["Version"]), {name: parameter})


async def _read_path(client: Any, name: str) -> StoredParameter | None:
    found: dict[str, dict[str, Any]] = {}
    token: str | None = None
    while True:
        page = await client.get_parameters_by_path(
            Path=name.rstrip("/"),
            Recursive=False,
            WithDecryption=True,
            **({"NextToken": token} if token else {}),
        )
        for parameter in page.get("Parameters", []):
            found[str(parameter["Name"]).rsplit("/", 1)[-1]] = parameter
        token = page.get("NextToken")
        if not token:
            break
    if not any(leaf in found for leaf in ("username", "password")):
        return None
    version = ",".join(f"{leaf}:{found[leaf]['Version']}" for leaf in sorted(found) if leaf in FIELDS)
    return StoredParameter(name, PATH, version, found)


class ParameterStoreSource(PolledCredentialSource):
    """A parameter in SSM Parameter Store: its newest version cached, polled for new ones.

    ``parameter`` names a SecureString of RDS JSON; when no such parameter exists, it is read
    as a path whose children are the fields (``<path>/username``, ``<path>/password``, ...),
    and the version is every field's version (``password:3,username:2``). Each poll is one
    GetParameter (or GetParametersByPath): the value is decoded only when the version moved.
    """

    service = "Parameter Store"
    newest_label = "the parameter"

    def __init__(self, config: CredentialsConfig, clients: AwsClients) -> None:
        super().__init__(config.poll_interval)
        assert config.parameter is not None
        self.parameter = config.parameter
        self.description = config.description
        self._clients = clients
        self.layout: str | None = None  # SINGLE or PATH once read
        self._warned_plain = False

    async def _read(self) -> StoredParameter:
        """One read (the layout found last is asked first); failures name the parameter."""

        async def call() -> StoredParameter | None:
            client = await self._clients.client("ssm")
            return await read_parameter(client, self.parameter, path_first=self.layout == PATH)

        found = await aws_call(self.description, self.service, call, parameter_problem)
        if found is None:
            raise CredentialsError(
                self.description,
                "the parameter does not exist (ParameterNotFound), and no username/password "
                "parameters are under it as a path",
            )
        self.layout = found.layout
        return found

    def _decode(self, found: StoredParameter) -> Credentials:
        if found.password_type != SECURE_STRING and not self._warned_plain:
            # Readable by anyone with ssm:GetParameter, and shown in the console: say so once.
            self._warned_plain = True
            log.warning("%s: the password is stored as a plain String, not a SecureString", self.description)
        if found.layout == PATH:
            return credentials_from_fields(
                self.description,
                {leaf: item.get("Value") for leaf, item in found.parameters.items()},
                version_id=found.version,
                stage=None,
                lacks="the path has no parameter",
                holder="the path",
            )
        return credentials_from_json(
            self.description,
            str(found.parameters[found.name].get("Value", "")),
            version_id=found.version,
            stage=None,
            value_name="the parameter's value",
            holder="the parameter",
        )

    async def _fetch(self) -> Credentials:
        return self._decode(await self._read())

    async def _fetch_if_changed(self, known_version: str | None) -> Credentials | None:
        found = await self._read()
        return None if found.version == known_version else self._decode(found)

    def state(self) -> dict[str, object]:
        return {**super().state(), "layout": self.layout}
