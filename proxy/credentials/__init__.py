"""Credential sources: AWS Secrets Manager (through aioboto3), RDS IAM auth tokens, and static
credentials.

A source hands out the current ``Credentials``; it caches them, shares one fetch among
concurrent callers, and turns every failure into a ``CredentialsError`` whose message names
the secret and the problem but never any part of the secret's value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from proxy.config import AwsConfig, CredentialsConfig
from proxy.redaction import forget_secret, register_secret

log = logging.getLogger(__name__)

# After a failed fetch, callers within this window get the same error instead of a new
# request: a broken secret must not turn every client connection into an AWS call.
ERROR_RETRY_INTERVAL = 1.0
AWSCURRENT = "AWSCURRENT"
AWSPENDING = "AWSPENDING"
# After the upstream refuses our credentials, re-read the secret at most this often.
AUTH_REFRESH_INTERVAL = 1.0
POLL_JITTER = 0.1
MAX_POLL_BACKOFF = 30.0
# RDS IAM: a token is accepted for 15 minutes after it is signed; new logins get a newly
# signed one after TOKEN_REUSE, which leaves room for clock skew and a slow login.
TOKEN_LIFETIME = 900.0
TOKEN_REUSE = 600.0
# A token refused after serving this long was probably signed with AWS credentials that
# have since expired or been revoked: sign a new one and try again.
RESIGN_AFTER_REFUSAL = 60.0
RDS_IAM_VERSION = "rds-iam"

# Makes the password for one login to host:port (RDS IAM: a token signed for them).
PasswordProvider = Callable[[str, int], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a connector needs to log in upstream. The password is kept out of the repr."""

    username: str
    password: str = field(repr=False)
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    engine: str | None = None
    version_id: str | None = None
    stage: str | None = None
    # Set when the password is made per login (RDS IAM tokens); see login_password.
    password_provider: PasswordProvider | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return repr(self)

    async def login_password(self, host: str, port: int, *, encrypted: bool) -> str:
        """The password to log in to ``host:port`` with now.

        For RDS IAM that is a token signed for that host and port. A token is a bearer
        credential that travels as a cleartext password, so it is never handed out for a
        connection without TLS (the config refuses tls = "disable" too; this is the backstop).
        """
        if self.password_provider is None:
            return self.password
        if not encrypted:
            raise CredentialsError(
                f"RDS IAM tokens for user {self.username!r}",
                f"refusing to send a token to {host}:{port} without TLS",
            )
        return await self.password_provider(host, port)


class CredentialsError(Exception):
    """Credentials could not be had; the message is safe to show to a client."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"cannot get credentials from {source}: {problem}")
        self.source = source
        self.problem = problem


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
        port = _parse_port(data.get("port"))
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


def _parse_port(value: object) -> int | None:
    """The secret's port: an int or a digit string in 1..65535, or None when absent."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    raise ValueError("not a port number")


class CredentialSource:
    """Base: cached credentials, one fetch in flight, errors remembered briefly."""

    description = "credentials"

    def __init__(self) -> None:
        self._cached: Credentials | None = None
        self._inflight: asyncio.Future[Credentials] | None = None
        self._last_error: CredentialsError | None = None
        self._last_error_at = 0.0
        self.fetches = 0  # secret values loaded
        self.refreshes = 0  # successful reads: fetches, and polls that found AWSCURRENT unchanged
        self.errors = 0
        self.last_success_at: float | None = None  # wall clock of the last value loaded
        self.last_refresh_at: float | None = None  # wall clock of the last successful read

    async def current(self) -> Credentials:
        if self._cached is not None:
            return self._cached
        return await self.refresh()

    async def refresh(self) -> Credentials:
        """Fetch now (sharing a fetch already under way) and cache the result."""
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        if self._last_error is not None and time.monotonic() - self._last_error_at < ERROR_RETRY_INTERVAL:
            raise self._last_error
        loop = asyncio.get_running_loop()
        self._inflight = loop.create_future()
        try:
            credentials = await self._fetch()
        except CredentialsError as exc:
            self.errors += 1
            self._last_error, self._last_error_at = exc, time.monotonic()
            log.warning("credential fetch failed: %s", exc)
            self._inflight.set_exception(exc)
            self._inflight.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        except BaseException as exc:
            self._inflight.set_exception(CredentialsError(self.description, f"fetch aborted: {exc!r}"))
            self._inflight.exception()
            raise
        else:
            self._inflight.set_result(credentials)
        finally:
            self._inflight = None
        self.fetches += 1
        self._last_error = None
        self._refreshed()
        self.last_success_at = self.last_refresh_at
        if self._cached is None or self._cached.version_id != credentials.version_id:
            log.info(
                "credentials loaded from %s (version %s)",
                self.description,
                credentials.version_id or "static",
            )
        self._cached = credentials
        return credentials

    def _refreshed(self) -> None:
        self.refreshes += 1
        self.last_refresh_at = time.time()

    async def check_now(self) -> bool:
        """Read the credentials now (admin API); True when a new version turned up."""
        before = self._cached.version_id if self._cached else None
        credentials = await self.refresh()
        return self._cached is not None and before != credentials.version_id

    @property
    def last_error(self) -> str | None:
        """Why the last fetch failed, if it did (safe to show: never the secret's value)."""
        return str(self._last_error) if self._last_error else None

    @property
    def cached(self) -> Credentials | None:
        """The newest AWSCURRENT credentials known, without asking anyone."""
        return self._cached

    async def _fetch(self) -> Credentials:
        raise NotImplementedError

    async def after_auth_failure(self, failed: Credentials) -> Credentials | None:
        """Credentials worth trying after the upstream refused ``failed``, or None.

        A static source has nothing else to offer.
        """
        return None

    def state(self) -> dict[str, object]:
        """For health and /pools: how fresh the credentials are (never their values)."""
        cached = self._cached
        return {
            "source": self.description,
            "version_id": cached.version_id if cached else None,
            "stage": cached.stage if cached else None,
            "fetches": self.fetches,
            "refreshes": self.refreshes,
            "errors": self.errors,
            "last_success_at": self.last_success_at,
            "last_refresh_at": self.last_refresh_at,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        """Release what the source holds (clients, sessions, the poller)."""


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
                kwargs: dict[str, Any] = {
                    "config": BotoConfig(
                        connect_timeout=3,
                        read_timeout=5,
                        retries={"max_attempts": 2, "mode": "standard"},
                    )
                }
                if self._aws.region:
                    kwargs["region_name"] = self._aws.region
                elif session.region_name is None and self._aws.endpoint_url:
                    # A local endpoint (moto, LocalStack) needs some region to sign with.
                    kwargs["region_name"] = "us-east-1"
                if self._aws.endpoint_url:
                    kwargs["endpoint_url"] = self._aws.endpoint_url
                self._client = await self._stack.enter_async_context(
                    session.client("secretsmanager", **kwargs)
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
        """One Secrets Manager call; every failure becomes a CredentialsError naming the secret."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

        try:
            client = await self._clients.client()
            response: dict[str, Any] = await getattr(client, operation)(SecretId=self.secret_id, **kwargs)
            return response
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            # AWS error messages describe the request (e.g. "marked for deletion"), never the
            # secret's value, so they are safe to pass on when we have no better words.
            aws_words = " ".join(str(error.get("Message", "")).split())
            problem = _AWS_PROBLEMS.get(code) or f"Secrets Manager error {code or 'unknown'}: {aws_words}"
            raise CredentialsError(self.description, problem) from None
        except NoCredentialsError:
            raise CredentialsError(
                self.description,
                "no AWS credentials found (instance role, environment, or profile)",
            ) from None
        except NoRegionError:
            raise CredentialsError(self.description, "no AWS region configured ([aws] region)") from None
        except (TimeoutError, BotoCoreError, OSError) as exc:
            raise CredentialsError(
                self.description, f"Secrets Manager unreachable ({type(exc).__name__})"
            ) from None

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


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    signed_at: float  # time.monotonic()
    expires_at: float  # time.monotonic(): the database refuses it after this


class RdsIamSource(CredentialSource):
    """RDS IAM authentication: instead of a password, a token (a SigV4-presigned
    ``rds-db:connect`` request, signed locally with the AWS credential chain) per host:port.

    A token is valid for 15 minutes, for new logins only: a connection that logged in with
    it stays logged in after it expires. So the ``Credentials`` this source hands the pool
    keep one version for the life of the process, and signing a new token is no rotation:
    nothing drains. Each login calls ``Credentials.login_password``, which gets the cached
    token for its host:port, signed again once it is ``token_reuse`` old. Tokens are
    registered for log masking while they are valid and never appear in a repr.
    """

    def __init__(
        self,
        config: CredentialsConfig,
        aws: AwsConfig,
        *,
        token_reuse: float = TOKEN_REUSE,
        resign_after_refusal: float = RESIGN_AFTER_REFUSAL,
    ) -> None:
        super().__init__()
        if not config.username:
            raise ValueError("RDS IAM credentials need a username")
        self.username = config.username
        self.description = config.description
        self.region = config.region or aws.region  # None: the chain's (AWS_REGION, profile)
        self.token_reuse = token_reuse
        self.resign_after_refusal = resign_after_refusal
        self.tokens_signed = 0
        self.last_token_at: float | None = None  # wall clock of the last token signed
        self._tokens: dict[tuple[str, int], _Token] = {}
        self._replaced: list[_Token] = []  # still valid upstream: masked until they expire
        self._lock = asyncio.Lock()  # one signing at a time; later callers get its token
        self._resigned_at = -math.inf
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._credentials = Credentials(
            self.username, "", version_id=RDS_IAM_VERSION, password_provider=self.token
        )

    async def _rds(self) -> Any:
        """The aiobotocore RDS client that signs (it makes no request: signing is local)."""
        if self._client is None:
            import aioboto3

            session = aioboto3.Session()
            region = self.region or session.region_name
            if not region:
                raise CredentialsError(
                    self.description,
                    "no AWS region to sign tokens for: set [pool.credentials] region, [aws] region "
                    "or AWS_REGION",
                )
            self._client = await self._stack.enter_async_context(session.client("rds", region_name=region))
        return self._client

    async def _fetch(self) -> Credentials:
        async with self._lock:
            try:
                await self._rds()
            except CredentialsError:
                raise
            except Exception as exc:
                raise CredentialsError(
                    self.description, f"cannot set up token signing ({type(exc).__name__})"
                ) from None
        return self._credentials

    async def token(self, host: str, port: int) -> str:
        """A token for ``username`` at host:port: the cached one, or a newly signed one."""
        async with self._lock:
            cached = self._tokens.get((host, port))
            if cached is not None and time.monotonic() - cached.signed_at < self.token_reuse:
                return cached.value
            try:
                value = await self._sign(host, port)
            except CredentialsError as exc:
                self.errors += 1
                self._last_error, self._last_error_at = exc, time.monotonic()
                log.warning("%s", exc)
                raise
            now = time.monotonic()
            register_secret(value)
            if cached is not None:
                self._replaced.append(cached)
            self._tokens[(host, port)] = _Token(value, now, now + TOKEN_LIFETIME)
            self._forget_expired(now)
            self.tokens_signed += 1
            self._last_error = None
            self._refreshed()
            self.last_success_at = self.last_token_at = self.last_refresh_at
            log.debug(
                "%s: signed a token for %s:%d (valid %gs)", self.description, host, port, TOKEN_LIFETIME
            )
            return value

    async def _sign(self, host: str, port: int) -> str:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            client = await self._rds()
            token: str = await client.generate_db_auth_token(
                DBHostname=host, Port=port, DBUsername=self.username, Region=client.meta.region_name
            )
            return token
        except NoCredentialsError:
            raise CredentialsError(
                self.description,
                "no AWS credentials found (instance profile, ECS task role, EKS IRSA / Pod Identity, "
                "environment, or profile)",
            ) from None
        except ClientError as exc:  # e.g. STS refusing the web identity (IRSA)
            code = exc.response.get("Error", {}).get("Code", "unknown")
            raise CredentialsError(
                self.description, f"cannot get AWS credentials to sign with ({code})"
            ) from None
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise CredentialsError(self.description, f"cannot sign a token ({type(exc).__name__})") from None

    def _forget_expired(self, now: float) -> None:
        """Unmask replaced tokens the database no longer takes, unless one is still in use
        (two tokens signed within one second for the same host are the same string)."""
        expired = [token for token in self._replaced if token.expires_at <= now]
        self._replaced = [token for token in self._replaced if token.expires_at > now]
        live = {token.value for token in (*self._tokens.values(), *self._replaced)}
        for token in expired:
            if token.value not in live:
                forget_secret(token.value)

    def _drop_tokens(self) -> None:
        """New logins sign new tokens; the old ones stay masked until they expire."""
        self._replaced.extend(self._tokens.values())
        self._tokens.clear()

    async def check_now(self) -> bool:
        """Admin refresh: new logins get newly signed tokens. Never a new version."""
        self._drop_tokens()
        return await super().check_now()

    async def after_auth_failure(self, failed: Credentials) -> Credentials | None:
        """The database refused a token. If it had served for a while, the AWS credentials
        that signed it have probably expired or been revoked since (an instance role's
        are replaced hourly): drop it and let the pool try once more with the same credentials,
        so the retry signs anew and no rotation or drain follows. A token refused while
        fresh was refused for good reason (IAM policy, the user lacks the rds_iam grant,
        clock skew): that error goes to the client and the log.
        """
        now = time.monotonic()
        if now - self._resigned_at < AUTH_REFRESH_INTERVAL:
            return failed  # another refused login just dropped the tokens: try the new one
        if not self._tokens or all(
            now - token.signed_at < self.resign_after_refusal for token in self._tokens.values()
        ):
            return None
        self._resigned_at = now
        self._drop_tokens()
        log.warning("%s: the database refused a token; signing a new one", self.description)
        return failed

    def state(self) -> dict[str, object]:
        return {
            **super().state(),
            "region": self.region,
            "tokens_signed": self.tokens_signed,
            "last_token_at": self.last_token_at,
            "token_reuse_seconds": self.token_reuse,
        }

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None


def make_source(config: CredentialsConfig, clients: SecretsManagerClients) -> CredentialSource:
    if config.source == "static":
        return StaticCredentialSource(config)
    if config.source == "rds-iam":
        return RdsIamSource(config, clients.aws)
    return SecretsManagerSource(config, clients)
