"""Rotating credentials kept in SSM Parameter Store, which has no rotation, staging labels or
AWSPENDING of its own: alternating users only, as rotaproxy runs it (``rotaproxy rotate --source
parameterstore``)."""

# Theory of operation. Without AWSPENDING a pool cannot find a password that the database has
# but the parameter does not hold yet, so nothing may change for the user the parameter names
# until the parameter names something else. Alternating users gives exactly that:
#
# - setPassword: read the parameter's newest version (the current credentials); as the master
#   user, give the *other* user of the pair ``user`` / ``user_clone`` a new password (creating
#   the clone with the user's privileges the first time);
# - testPassword: the new credentials log in and run SELECT 1;
# - putParameter: if the parameter is still at the version read, write a new version naming the
#   other user (PutParameter Overwrite, same type and KMS key; for a path, the password
#   parameter first, then the username).
#
# The old user's password is untouched, so pools still on it keep logging in; they move on
# their next poll (or SIGHUP) make-before-break. Single-user rotation would change the password
# the parameter holds in the database before the parameter could say so: every login in
# between fails, and with no AWSPENDING there is nothing to bridge that window with. It is
# refused.
#
# The master credentials come from the parameter's ``masterparameter`` (another parameter, same
# layout) or ``masterarn`` (a Secrets Manager secret, as RDS manages a master password).

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from proxy.config import AwsConfig
from proxy.credentials.aws import client_location
from proxy.credentials.parameter_store import PATH, SECURE_STRING, StoredParameter, read_parameter
from proxy.credentials.secrets_manager import AWSCURRENT
from proxy.redaction import register_secret
from proxy.rotation.alternating import database_for, set_as_master, test_login
from proxy.rotation.errors import RotationError, step_failure
from proxy.rotation.secret import SecretValue, alternate_username, generate_password
from proxy.rotation.settings import RotationSettings

log = logging.getLogger("proxy.rotation")

SET_PASSWORD = "setPassword"
TEST_PASSWORD = "testPassword"
PUT_PARAMETER = "putParameter"
PARAMETER_STEPS = (SET_PASSWORD, TEST_PASSWORD, PUT_PARAMETER)
MASTER_PARAMETER_KEY = "masterparameter"
MASTER_SECRET_KEY = "masterarn"
PARAMETER = "parameter"

SINGLE_USER_REFUSED = (
    "single-user rotation is refused for Parameter Store: it changes the password in the "
    "database before the parameter can hold it, and Parameter Store has no AWSPENDING to "
    "bridge that window, so every login in between (new pool connections, other readers of "
    "the parameter) would fail; use --strategy alternating-users"
)


def refuse_single_user(strategy: str) -> None:
    if strategy != "alternating-users":
        raise RotationError(SINGLE_USER_REFUSED)


def value_of(found: StoredParameter) -> SecretValue:
    """The credentials ``found`` holds, with every field (masterparameter too)."""
    if found.layout == PATH:
        fields = {leaf: item.get("Value") for leaf, item in found.parameters.items()}
        return SecretValue.of_fields(found.name, found.version, "newest", fields, PARAMETER)
    text = found.parameters[found.name].get("Value")
    return SecretValue.parse(found.name, found.version, "newest", text, PARAMETER)


class ParameterStoreRotator:
    """Alternating-users rotation of one parameter, on an SSM client (and a Secrets Manager
    client for a ``masterarn``)."""

    def __init__(self, ssm: Any, secretsmanager: Any, settings: RotationSettings) -> None:
        refuse_single_user(settings.strategy)
        self.ssm = ssm
        self.secretsmanager = secretsmanager
        self.settings = settings

    def __repr__(self) -> str:
        return f"ParameterStoreRotator(strategy={self.settings.strategy!r})"

    async def rotate(
        self,
        name: str,
        *,
        pause_after: dict[str, float] | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> str:
        """The three steps; returns the parameter's new version."""
        pauses = dict(pause_after or {})
        unknown = sorted(set(pauses) - set(PARAMETER_STEPS))
        if unknown:
            raise ValueError(
                f"pause_after names unknown steps {unknown}; steps are {', '.join(PARAMETER_STEPS)}"
            )
        step = SET_PASSWORD
        try:
            current = await self._read(name)
            pending = self._pending(current)
            database = database_for(pending, self.settings)
            master = await self._master(current)
            await set_as_master(database, master, pending)
            await self._done(step, name, on_step, pauses)
            step = TEST_PASSWORD
            await test_login(database, pending)
            await self._done(step, name, on_step, pauses)
            step = PUT_PARAMETER
            version = await self._put(name, current, pending)
            await self._done(step, name, on_step, pauses)
            return version
        except Exception as exc:
            failure = step_failure(exc, step=step, secret_id=name, service="AWS", holder="parameter")
            if failure is None:
                raise
            raise failure from None

    async def _done(
        self, step: str, name: str, on_step: Callable[[str], None] | None, pauses: dict[str, float]
    ) -> None:
        log.info("%s: done for parameter %s", step, name)
        if on_step is not None:
            on_step(step)
        if pauses.get(step, 0) > 0:
            await asyncio.sleep(pauses[step])

    async def _read(self, name: str) -> StoredParameter:
        found = await read_parameter(self.ssm, name)
        if found is None:
            raise RotationError(
                "the parameter does not exist (ParameterNotFound), nor a path of fields under it"
            )
        return found

    def _pending(self, current: StoredParameter) -> SecretValue:
        value = value_of(current)
        new = dict(value.data)
        new["username"] = alternate_username(value.username)
        new["password"] = generate_password()
        register_secret(new["password"])
        log.info(
            "setPassword: parameter %s alternates %r -> %r", current.name, value.username, new["username"]
        )
        return SecretValue(value.secret_id, "new", "pending", new, PARAMETER)

    async def _master(self, current: StoredParameter) -> SecretValue:
        data = value_of(current).data
        master_parameter, master_secret = data.get(MASTER_PARAMETER_KEY), data.get(MASTER_SECRET_KEY)
        if isinstance(master_parameter, str) and master_parameter:
            return value_of(await self._read(master_parameter))
        if isinstance(master_secret, str) and master_secret:
            response = await self.secretsmanager.get_secret_value(
                SecretId=master_secret, VersionStage=AWSCURRENT
            )
            return SecretValue.parse(
                master_secret, str(response["VersionId"]), AWSCURRENT, response.get("SecretString")
            )
        raise RotationError(
            f"the parameter has no {MASTER_PARAMETER_KEY!r} (nor {MASTER_SECRET_KEY!r}): "
            "alternating-users needs the master user's credentials"
        )

    async def _put(self, name: str, current: StoredParameter, pending: SecretValue) -> str:
        # Parameter Store has no compare-and-swap: read again, and write only if nobody wrote
        # since (a concurrent rotation would otherwise be overwritten with a user it did not set).
        latest = await self._read(name)
        if latest.version != current.version:
            raise RotationError(
                f"the parameter moved from version {current.version} to {latest.version} during the "
                "rotation; nothing written (the other user's new password is unused)"
            )
        if current.layout == PATH:
            # The password first: a poll between the two writes sees a pair that does not log
            # in, which a pool refuses make-before-break and the next poll corrects.
            for leaf in ("password", "username"):
                await self._overwrite(current.parameters[leaf], str(pending.data[leaf]))
        else:
            await self._overwrite(current.parameters[name], json.dumps(dict(pending.data)))
        return (await self._read(name)).version

    async def _overwrite(self, parameter: dict[str, Any], value: str) -> None:
        """A new version of ``parameter`` with ``value``: same type, and same KMS key."""
        name, kind = str(parameter["Name"]), str(parameter.get("Type") or SECURE_STRING)
        extra: dict[str, str] = {}
        if kind == SECURE_STRING:
            # Overwriting without KeyId could move the value to the account's default key.
            described = await self.ssm.describe_parameters(
                ParameterFilters=[{"Key": "Name", "Option": "Equals", "Values": [name]}]
            )
            key_id = next((item.get("KeyId") for item in described.get("Parameters", [])), None)
            if key_id:
                extra["KeyId"] = str(key_id)
        await self.ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True, **extra)


@contextlib.asynccontextmanager
async def open_parameter_rotator(
    settings: RotationSettings, *, endpoint_url: str | None = None, region: str | None = None
) -> AsyncIterator[ParameterStoreRotator]:
    """A ParameterStoreRotator on SSM and Secrets Manager clients made for it, closed after."""
    refuse_single_user(settings.strategy)  # before any client is made
    import aioboto3
    from botocore.exceptions import BotoCoreError

    session = aioboto3.Session()
    location = client_location(AwsConfig(region=region, endpoint_url=endpoint_url), session)
    async with contextlib.AsyncExitStack() as stack:
        try:
            ssm = await stack.enter_async_context(session.client("ssm", **location))
            secretsmanager = await stack.enter_async_context(session.client("secretsmanager", **location))
        except BotoCoreError as exc:  # e.g. "You must specify a region."
            raise RotationError(f"cannot create an SSM client: {exc}") from None
        yield ParameterStoreRotator(ssm, secretsmanager, settings)
