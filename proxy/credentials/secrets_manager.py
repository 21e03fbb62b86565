"""AWS Secrets Manager as a credential source: the RDS-style JSON secret decoded, AWSCURRENT
cached and polled for new versions, AWSPENDING tried while a rotation is under way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from contextlib import AsyncExitStack
from typing import Any

from proxy.config import AwsConfig, CredentialsConfig
from proxy.credentials.base import AUTH_REFRESH_INTERVAL, Credentials, CredentialsError, CredentialSource, log
from proxy.redaction import register_secret

# The staging labels a rotation moves from version to version.
AWSCURRENT = "AWSCURRENT"
AWSPENDING = "AWSPENDING"
AWSPREVIOUS = "AWSPREVIOUS"
POLL_JITTER = 0.1
MAX_POLL_BACKOFF = 30.0
# A local endpoint (moto, LocalStack) needs some region to sign with.
LOCAL_ENDPOINT_REGION = "us-east-1"


def credentials_from_secret_string(
    secret_id: str, text: str | None, version_id: str | None, stage: str | None
) -> Credentials:
    """Decode an RDS-style JSON secret: username, password, and optional host/port/dbname."""
    source = f"secret {secret_id!r}"
    if text is None:
        raise CredentialsError(source, "the secret has no SecretString (binary secrets are not supported)")
    try:
        data = json.loads(text)
    except ValueError:
        raise CredentialsError(source, "SecretString is not valid JSON") from None
    if not isinstance(data, dict):
        raise CredentialsError(source, "SecretString is JSON but not an object")
    missing = [key for key in ("username", "password") if not isinstance(data.get(key), str) or not data[key]]
    if missing:
        raise CredentialsError(
            source, f"the secret's JSON lacks a string {' and '.join(repr(k) for k in missing)}"
        )
    try:
        port = parse_port(data.get("port"))
    except ValueError:
        raise CredentialsError(source, "the secret's 'port' is not a valid port number") from None
    register_secret(data["password"])
    return Credentials(
        username=data["username"],
        password=data["password"],
        host=data.get("host") if isinstance(data.get("host"), str) else None,
        port=port,
        dbname=data.get("dbname") if isinstance(data.get("dbname"), str) else None,
        engine=data.get("engine") if isinstance(data.get("engine"), str) else None,
        version_id=version_id,
        stage=stage,
    )


def parse_port(value: object) -> int | None:
    """The secret's port: an int or a digit string in 1..65535, or None when absent."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    raise ValueError("not a port number")


def client_location(aws: AwsConfig, session: Any) -> dict[str, str]:
    """Where an aioboto3 ``session``'s Secrets Manager client goes: ``aws``'s endpoint and region,
    else the session's region, else (only for a local endpoint) LOCAL_ENDPOINT_REGION."""
    location: dict[str, str] = {}
    if aws.region:
        location["region_name"] = aws.region
    elif session.region_name is None and aws.endpoint_url:
        location["region_name"] = LOCAL_ENDPOINT_REGION
    if aws.endpoint_url:
        location["endpoint_url"] = aws.endpoint_url
    return location


class SecretsManagerClients:
    """One aioboto3 Secrets Manager client per process, created on first use and kept.

    A client per call costs ~65 ms against a local endpoint vs ~5 ms reused (field notes).
    """

    def __init__(self, aws: AwsConfig) -> None:
        self._aws = aws
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()

    @property
    def aws(self) -> AwsConfig:
        return self._aws

    async def client(self) -> Any:
        async with self._lock:
            if self._client is None:
                import aioboto3  # heavy import: only when a pool really uses Secrets Manager
                from botocore.config import Config as BotoConfig

                session = aioboto3.Session()
                config = BotoConfig(
                    connect_timeout=3, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"}
                )
                self._client = await self._stack.enter_async_context(
                    session.client("secretsmanager", config=config, **client_location(self._aws, session))
                )
            return self._client

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None


_AWS_PROBLEMS = {
    "ResourceNotFoundException": "the secret does not exist",
    "AccessDeniedException": "access denied (check the IAM policy: secretsmanager:GetSecretValue)",
    "DecryptionFailure": "Secrets Manager cannot decrypt the secret (check kms:Decrypt)",
    "UnrecognizedClientException": "the AWS credentials are not valid",
    "InvalidSignatureException": "the AWS credentials are not valid",
    "ExpiredTokenException": "the AWS credentials have expired",
}


async def call_secrets_manager(
    clients: SecretsManagerClients, secret_id: str, description: str, operation: str, **kwargs: Any
) -> dict[str, Any]:
    """One Secrets Manager call; every failure becomes a CredentialsError naming the secret."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        client = await clients.client()
        response: dict[str, Any] = await getattr(client, operation)(SecretId=secret_id, **kwargs)
        return response
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        # AWS error messages describe the request (e.g. "marked for deletion"), never the
        # secret's value, so they are safe to pass on when we have no better words.
        aws_words = " ".join(str(error.get("Message", "")).split())
        problem = _AWS_PROBLEMS.get(code) or f"Secrets Manager error {code or 'unknown'}: {aws_words}"
        raise CredentialsError(description, problem) from None
    except NoCredentialsError:
        raise CredentialsError(
            description, "no AWS credentials found (instance role, environment, or profile)"
        ) from None
    except NoRegionError:
        raise CredentialsError(description, "no AWS region configured ([aws] region)") from None
    except (TimeoutError, BotoCoreError, OSError) as exc:
        raise CredentialsError(description, f"Secrets Manager unreachable ({type(exc).__name__})") from None


class SecretsManagerSource(CredentialSource):
    """A secret in AWS Secrets Manager: AWSCURRENT cached, polled for new versions.

    Polling asks DescribeSecret (cheap, no secret value) which version holds AWSCURRENT and
    fetches that version by id only when it changed. While polls fail, the cached
    credentials keep serving and the poller backs off exponentially (capped).
    """

    def __init__(self, config: CredentialsConfig, clients: SecretsManagerClients) -> None:
        super().__init__()
        assert config.secret_id is not None
        self.secret_id = config.secret_id
        self.description = config.description
        self.poll_interval = config.poll_interval
        self._clients = clients
        self._poller: asyncio.Task[None] | None = None
        self._poll_now = asyncio.Event()
        self._auth_refresh: asyncio.Task[Credentials | None] | None = None
        self._auth_refresh_at = -AUTH_REFRESH_INTERVAL
        self._auth_refresh_result: Credentials | None = None
        self.poll_failures = 0
        self.last_poll_error: str | None = None
        self.last_poll_at: float | None = None

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

    # --- noticing new versions -------------------------------------------------------------
    async def poll(self) -> bool:
        """Load the AWSCURRENT version if it changed; True when it did."""
        described = await self._call("describe_secret")
        stages: dict[str, list[str]] = described.get("VersionIdsToStages") or {}
        current_id = next((vid for vid, labels in stages.items() if AWSCURRENT in labels), None)
        if current_id is None or (self._cached is not None and self._cached.version_id == current_id):
            self._refreshed()  # what we hold is still AWSCURRENT: as fresh as a new fetch
            return False
        credentials = await self._get(AWSCURRENT, VersionId=current_id)
        previous = self._cached.version_id if self._cached else None
        self._cached = credentials
        self.fetches += 1
        self._refreshed()
        self.last_success_at = self.last_refresh_at
        log.info("%s: AWSCURRENT moved from version %s to %s", self.description, previous, current_id)
        return True

    def start_polling(self) -> None:
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_loop(), name=f"poll {self.secret_id}")

    async def check_now(self) -> bool:
        """Ask Secrets Manager now (admin API), as a poll would; True when AWSCURRENT moved."""
        if self._cached is None:
            return await super().check_now()
        try:
            return await self.poll()
        except CredentialsError:
            self.errors += 1
            raise

    def poll_soon(self) -> None:
        """Poll now rather than at the next interval (SIGHUP, admin API)."""
        self._poll_now.set()

    async def _poll_loop(self) -> None:
        while True:
            if self.poll_failures:
                delay = min(
                    self.poll_interval * 2**self.poll_failures, max(self.poll_interval, MAX_POLL_BACKOFF)
                )
            else:
                delay = self.poll_interval * random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._poll_now.wait()
            self._poll_now.clear()
            try:
                await self.poll()
            except CredentialsError as exc:
                self.poll_failures += 1
                self.errors += 1
                self.last_poll_error = str(exc)
                # Stale-while-revalidate: the cached credentials keep serving meanwhile.
                log.warning(
                    "%s (poll %d failed in a row; cached credentials keep serving)", exc, self.poll_failures
                )
            else:
                if self.poll_failures:
                    log.info(
                        "%s: Secrets Manager answers again after %d failed polls",
                        self.description,
                        self.poll_failures,
                    )
                self.poll_failures = 0
                self.last_poll_error = None
                self.last_poll_at = time.time()

    # --- the upstream refused our credentials ------------------------------------------------
    async def after_auth_failure(self, failed: Credentials) -> Credentials | None:
        """Re-read AWSCURRENT at once; if unchanged, try AWSPENDING.

        In a single-user rotation, setSecret has already changed the password in the
        database while AWSCURRENT still holds the old one until finishSecret: AWSPENDING
        bridges that window. Rate-limited and shared, so a burst of refused logins costs
        Secrets Manager one or two calls.
        """
        if self._auth_refresh is None:
            if time.monotonic() - self._auth_refresh_at < AUTH_REFRESH_INTERVAL:
                result = self._auth_refresh_result
                return result if result is not None and result.version_id != failed.version_id else None
            self._auth_refresh = asyncio.create_task(self._refresh_after_auth_failure(failed))
        task = self._auth_refresh
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._auth_refresh = None

    async def _refresh_after_auth_failure(self, failed: Credentials) -> Credentials | None:
        self._auth_refresh_at = time.monotonic()
        result: Credentials | None = None
        try:
            try:
                await self.poll()
            except CredentialsError as exc:
                self.errors += 1
                log.warning("after an authentication failure: %s", exc)
            if self._cached is not None and self._cached.version_id != failed.version_id:
                result = self._cached
            else:
                try:
                    pending = await self._get(AWSPENDING)
                except CredentialsError:
                    pending = None  # no rotation under way (or unreadable): nothing to bridge with
                if pending is not None and pending.version_id != failed.version_id:
                    log.info(
                        "%s: trying AWSPENDING version %s (rotation window)",
                        self.description,
                        pending.version_id,
                    )
                    result = pending
        finally:
            self._auth_refresh_result = result
        return result

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._auth_refresh is not None:
            self._auth_refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._auth_refresh

    def state(self) -> dict[str, object]:
        return {
            **super().state(),
            "poll_interval": self.poll_interval,
            "poll_failures": self.poll_failures,
            "last_poll_at": self.last_poll_at,
            "last_poll_error": self.last_poll_error,
        }
