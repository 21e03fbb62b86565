"""The four steps of Secrets Manager's rotation contract (createSecret, setSecret, testSecret,
finishSecret), for either strategy and either engine, run against one Secrets Manager client."""

# Theory of operation. A rotation is identified by its ClientRequestToken, which becomes the
# new secret version's id. Every step first looks the token up (DescribeSecret): a version
# already AWSCURRENT means the rotation is over and the step does nothing; otherwise the
# version must hold AWSPENDING. Each step then checks whether its work is already done before
# doing it, so any step may run any number of times (Lambda retries, an interrupted
# ``rotaproxy rotate``).
#
# - createSecret: the AWSPENDING version gets the AWSCURRENT JSON with a new password (and,
#   for alternating-users, the other username of the pair ``user`` / ``user_clone``).
# - setSecret: the database learns the pending password: single-user as the user itself
#   (with its AWSCURRENT, else AWSPREVIOUS, password); alternating-users as the master user
#   named by the secret's ``masterarn``, creating the clone and giving it the user's privileges.
# - testSecret: the pending credentials log in and run ``SELECT 1``.
# - finishSecret: AWSCURRENT moves to the new version (the old one becomes AWSPREVIOUS) and
#   AWSPENDING is taken off it.
#
# With alternating users the previous credentials keep working until the next rotation, so
# clients and pools that still hold them never see a login failure.
#
# Secret values never reach logs, exception messages or reprs. PostgreSQL gets a SCRAM
# verifier computed here, so the cleartext password never travels in SQL; MySQL has no
# portable equivalent and gets ``IDENTIFIED BY`` (postgres.py, mysql.py).
#
# Secrets Manager reads always name a VersionStage or VersionId (moto can answer an
# unqualified read with an old version), and Secrets Manager's own RotateSecret is not used:
# without a Lambda, moto leaves an empty AWSCURRENT behind.

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from proxy.config import AwsConfig
from proxy.core.errors import UpstreamLoginError
from proxy.credentials.aws import client_location
from proxy.credentials.secrets_manager import AWSCURRENT, AWSPENDING, AWSPREVIOUS
from proxy.redaction import register_secret
from proxy.rotation.alternating import database_for, set_as_master, test_login
from proxy.rotation.database import Database
from proxy.rotation.errors import RotationError, step_failure
from proxy.rotation.secret import SecretValue, alternate_username, generate_password
from proxy.rotation.settings import RotationSettings

# The package's name, as before the split: what operators filter on and JSON logs show.
log = logging.getLogger("proxy.rotation")

CREATE_SECRET = "createSecret"
SET_SECRET = "setSecret"
TEST_SECRET = "testSecret"
FINISH_SECRET = "finishSecret"
STEPS = (CREATE_SECRET, SET_SECRET, TEST_SECRET, FINISH_SECRET)


class Rotator:
    """Runs rotation steps against one Secrets Manager client (an aioboto3 client)."""

    def __init__(self, client: Any, settings: RotationSettings) -> None:
        self.client = client
        self.settings = settings

    def __repr__(self) -> str:
        return f"Rotator(strategy={self.settings.strategy!r})"

    async def run_step(self, secret_id: str, token: str, step: str) -> None:
        """One step of the rotation Lambda contract; the token must be a version of the secret."""
        await self._run_step(secret_id, token, step, may_create=False)

    async def start(self, secret_id: str, token: str | None = None) -> str:
        """Begin a rotation as Secrets Manager's RotateSecret does: create the AWSPENDING version
        (createSecret) under ``token`` (a new uuid4 unless given). Returns the token."""
        token = token or str(uuid.uuid4())
        await self._run_step(secret_id, token, CREATE_SECRET, may_create=True)
        return token

    async def rotate(
        self,
        secret_id: str,
        *,
        token: str | None = None,
        pause_after: dict[str, float] | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> str:
        """All four steps in order; ``pause_after[step]`` seconds of sleep after a step.

        Returns the token, which is the new version's id. Running it again with the same
        token finishes an interrupted rotation, or does nothing after a complete one.
        """
        pauses = dict(pause_after or {})
        unknown = sorted(set(pauses) - set(STEPS))
        if unknown:
            raise ValueError(f"pause_after names unknown steps {unknown}; steps are {', '.join(STEPS)}")
        token = token or str(uuid.uuid4())
        for step in STEPS:
            await self._run_step(secret_id, token, step, may_create=step == CREATE_SECRET)
            if on_step is not None:
                on_step(step)
            if pauses.get(step, 0) > 0:
                await asyncio.sleep(pauses[step])
        return token

    # --- the frame every step shares ---------------------------------------------------------

    async def _run_step(self, secret_id: str, token: str, step: str, *, may_create: bool) -> None:
        try:
            if step not in STEPS:
                raise RotationError(f"unknown step; expected one of {', '.join(STEPS)}")
            versions = await self._version_stages(secret_id)
            stages = versions.get(token)
            if stages is None and not may_create:
                raise RotationError(f"{token} is not a version of the secret")
            if stages is not None and AWSCURRENT in stages:
                if step == FINISH_SECRET and AWSPENDING in stages:
                    await self._remove_pending(secret_id, token)  # an earlier finishSecret stopped halfway
                log.info("%s: version %s of %s is already AWSCURRENT; nothing to do", step, token, secret_id)
                return
            if stages is not None and AWSPENDING not in stages:
                raise RotationError(f"version {token} is neither AWSCURRENT nor AWSPENDING")
            steps = {
                CREATE_SECRET: self._create_secret,
                SET_SECRET: self._set_secret,
                TEST_SECRET: self._test_secret,
                FINISH_SECRET: self._finish_secret,
            }
            await steps[step](secret_id, token, versions)
        except Exception as exc:
            failure = step_failure(
                exc, step=step, secret_id=secret_id, service="Secrets Manager", holder="secret"
            )
            if failure is None:
                raise
            raise failure from None
        log.info("%s: done for %s (version %s)", step, secret_id, token)

    async def _version_stages(self, secret_id: str) -> dict[str, list[str]]:
        metadata = await self.client.describe_secret(SecretId=secret_id)
        return {version: list(stages) for version, stages in metadata.get("VersionIdsToStages", {}).items()}

    async def _get(self, secret_id: str, stage: str, version_id: str | None = None) -> SecretValue:
        selector = (
            {"VersionStage": stage}
            if version_id is None
            else {"VersionId": version_id, "VersionStage": stage}
        )
        response = await self.client.get_secret_value(SecretId=secret_id, **selector)
        return SecretValue.parse(secret_id, str(response["VersionId"]), stage, response.get("SecretString"))

    def _database(self, secret: SecretValue) -> Database[Any]:
        return database_for(secret, self.settings)

    # --- the steps --------------------------------------------------------------------------

    async def _create_secret(self, secret_id: str, token: str, versions: dict[str, list[str]]) -> None:
        from botocore.exceptions import ClientError

        if token in versions:
            try:
                await self._get(secret_id, AWSPENDING, token)
            except ClientError as exc:
                # AWS's RotateSecret makes the version without a value; createSecret fills it.
                if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                    raise
            else:
                log.info("createSecret: version %s of %s already holds the new secret", token, secret_id)
                return
        current = await self._get(secret_id, AWSCURRENT)
        self._database(current)  # an unknown engine fails now, before a version is written
        new = dict(current.data)
        if self.settings.strategy == "alternating-users":
            new["username"] = alternate_username(current.username)
            log.info(
                "createSecret: %s alternates %r -> %r (master secret %s)",
                secret_id,
                current.username,
                new["username"],
                current.master_arn,  # checked now: setSecret needs it
            )
        new["password"] = generate_password()
        register_secret(new["password"])
        await self.client.put_secret_value(
            SecretId=secret_id,
            ClientRequestToken=token,
            SecretString=json.dumps(new),
            VersionStages=[AWSPENDING],
        )

    async def _set_secret(self, secret_id: str, token: str, versions: dict[str, list[str]]) -> None:
        pending = await self._get(secret_id, AWSPENDING, token)
        database = self._database(pending)
        if await database.can_log_in(pending):
            log.info("setSecret: the AWSPENDING password of %s already works", secret_id)
            return
        current = await self._get(secret_id, AWSCURRENT)
        if self.settings.strategy == "alternating-users":
            await self._set_as_master(database, current, pending)
            return
        has_previous = any(AWSPREVIOUS in stages for stages in versions.values())
        await self._set_as_user(database, current, pending, has_previous=has_previous)

    async def _set_as_user(
        self, database: Database[Any], current: SecretValue, pending: SecretValue, *, has_previous: bool
    ) -> None:
        if current.username != pending.username:
            raise RotationError(
                f"AWSPENDING is for user {pending.username!r} but AWSCURRENT for {current.username!r}: "
                "single-user rotation keeps the user (is the secret rotated with alternating-users?)"
            )
        try:
            await database.set_own_password(current, pending)
            return
        except UpstreamLoginError as exc:
            if not exc.is_auth_failure or not has_previous:
                raise RotationError(f"cannot log in as {current.username!r} with AWSCURRENT: {exc}") from None
        previous = await self._get(current.secret_id, AWSPREVIOUS)
        if previous.username != pending.username:
            raise RotationError(
                f"AWSCURRENT does not log in and AWSPREVIOUS is for another user ({previous.username!r})"
            )
        try:
            await database.set_own_password(previous, pending)
        except UpstreamLoginError as exc:
            raise RotationError(
                f"cannot log in as {previous.username!r} with AWSCURRENT or AWSPREVIOUS: {exc}"
            ) from None

    async def _set_as_master(
        self, database: Database[Any], current: SecretValue, pending: SecretValue
    ) -> None:
        if alternate_username(current.username) != pending.username:
            raise RotationError(
                f"AWSPENDING is for user {pending.username!r}, which does not alternate with AWSCURRENT's "
                f"{current.username!r}"
            )
        master = await self._get(current.master_arn, AWSCURRENT)
        await set_as_master(database, master, pending)

    async def _test_secret(self, secret_id: str, token: str, versions: dict[str, list[str]]) -> None:
        pending = await self._get(secret_id, AWSPENDING, token)
        await test_login(self._database(pending), pending)

    async def _finish_secret(self, secret_id: str, token: str, versions: dict[str, list[str]]) -> None:
        current = next((version for version, stages in versions.items() if AWSCURRENT in stages), None)
        if current != token:
            await self.client.update_secret_version_stage(
                SecretId=secret_id,
                VersionStage=AWSCURRENT,
                MoveToVersionId=token,
                **({"RemoveFromVersionId": current} if current is not None else {}),
            )
        await self._remove_pending(secret_id, token)

    async def _remove_pending(self, secret_id: str, token: str) -> None:
        # AWS leaves AWSPENDING where it is, and moto too: a pending label next to
        # AWSCURRENT would look like a rotation in progress.
        await self.client.update_secret_version_stage(
            SecretId=secret_id, VersionStage=AWSPENDING, RemoveFromVersionId=token
        )


@contextlib.asynccontextmanager
async def open_rotator(
    settings: RotationSettings, *, endpoint_url: str | None = None, region: str | None = None
) -> AsyncIterator[Rotator]:
    """A Rotator on a Secrets Manager client made for it, closed after."""
    import aioboto3
    from botocore.exceptions import BotoCoreError

    session = aioboto3.Session()
    location = client_location(AwsConfig(region=region, endpoint_url=endpoint_url), session)
    try:
        client_context = session.client("secretsmanager", **location)
        client = await client_context.__aenter__()
    except BotoCoreError as exc:  # e.g. "You must specify a region."
        raise RotationError(f"cannot create a Secrets Manager client: {exc}") from None
    try:
        yield Rotator(client, settings)
    finally:
        await client_context.__aexit__(None, None, None)
