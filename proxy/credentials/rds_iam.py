"""RDS IAM authentication as a credential source: instead of a password, a token per host:port,
signed locally with the AWS credential chain and signed again before it expires."""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from proxy.config import AwsConfig, CredentialsConfig
from proxy.credentials.base import AUTH_REFRESH_INTERVAL, Credentials, CredentialsError, CredentialSource, log
from proxy.redaction import forget_secret, register_secret

# A token is accepted for 15 minutes after it is signed; new logins get a newly
# signed one after TOKEN_REUSE, which leaves room for clock skew and a slow login.
TOKEN_LIFETIME = 900.0
TOKEN_REUSE = 600.0
# A token refused after serving this long was probably signed with AWS credentials that
# have since expired or been revoked: sign a new one and try again.
RESIGN_AFTER_REFUSAL = 60.0
RDS_IAM_VERSION = "rds-iam"


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
