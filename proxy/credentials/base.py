"""What every credential source shares: the ``Credentials`` it hands out, the ``CredentialsError``
it raises, the base class that caches them, shares one fetch and remembers a failure, and the
base of the versioned sources (Secrets Manager, Parameter Store): polling, stale-while-revalidate
and the rate-limited re-read after an authentication failure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# Every source logs as the package: the name operators filter on and JSON logs show.
log = logging.getLogger("proxy.credentials")

# After a failed fetch, callers within this window get the same error instead of a new
# request: a broken secret must not turn every client connection into an AWS call.
ERROR_RETRY_INTERVAL = 1.0
# After the upstream refuses our credentials, look for others at most this often.
AUTH_REFRESH_INTERVAL = 1.0
POLL_JITTER = 0.1
MAX_POLL_BACKOFF = 30.0

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


class PollingLoop:
    """Polling a versioned value: ``poll`` every ``poll_interval`` (jittered), sooner on
    ``poll_soon``, backing off exponentially (capped) while it fails; what was loaded keeps
    serving meanwhile (stale-while-revalidate). For the credential sources and the client
    secret alike; a class using it calls ``_init_polling`` and ``stop_polling``."""

    description: str
    service = "AWS"  # in log lines: "<service> answers again"
    serving_meanwhile = "cached credentials keep serving"  # in the warning of a failed poll
    poll_at_start = False  # the first poll at once, rather than after an interval

    def _init_polling(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._poller: asyncio.Task[None] | None = None
        self._poll_now = asyncio.Event()
        self.poll_failures = 0
        self.last_poll_error: str | None = None
        self.last_poll_at: float | None = None

    async def poll(self) -> bool:
        """Load the newest version if it changed; True when it did."""
        raise NotImplementedError

    def _poll_failed(self) -> None:
        """A poll failed (after it is counted in ``poll_failures``)."""

    def start_polling(self) -> None:
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_loop(), name=f"poll {self.description}")

    def poll_soon(self) -> None:
        """Poll now rather than at the next interval (SIGHUP, admin API)."""
        self._poll_now.set()

    async def stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def _poll_loop(self) -> None:
        wait = not self.poll_at_start
        while True:
            if wait:
                await self._wait_to_poll()
            wait = True
            try:
                await self.poll()
            except CredentialsError as exc:
                self.poll_failures += 1
                self.last_poll_error = str(exc)
                self._poll_failed()
                log.warning(
                    "%s (poll %d failed in a row; %s)", exc, self.poll_failures, self.serving_meanwhile
                )
            else:
                if self.poll_failures:
                    log.info(
                        "%s: %s answers again after %d failed polls",
                        self.description,
                        self.service,
                        self.poll_failures,
                    )
                self.poll_failures = 0
                self.last_poll_error = None
                self.last_poll_at = time.time()

    async def _wait_to_poll(self) -> None:
        """Until the next poll: the interval jittered, or longer after failed polls, or until
        ``poll_soon``."""
        interval, failures = self.poll_interval, self.poll_failures
        if failures:
            delay = min(interval * 2**failures, max(interval, MAX_POLL_BACKOFF))
        else:
            delay = interval * random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._poll_now.wait()
        self._poll_now.clear()


class PolledCredentialSource(CredentialSource, PollingLoop):
    """A source whose value has versions: the newest cached, polled for a new one.

    A subclass only knows how to fetch and version (``_fetch``, ``_fetch_if_changed``, and
    optionally ``_bridge`` for credentials a rotation has set but not yet published). This
    class runs the poller: while polls fail, the cached credentials keep serving and the
    poller backs off exponentially (capped); after an upstream authentication failure it
    re-reads at once, shared and rate-limited.
    """

    newest_label = "the newest version"  # in log lines: "<label> moved from version A to B"

    def __init__(self, poll_interval: float) -> None:
        super().__init__()
        self._init_polling(poll_interval)
        self._auth_refresh: asyncio.Task[Credentials | None] | None = None
        self._auth_refresh_at = -AUTH_REFRESH_INTERVAL
        self._auth_refresh_result: Credentials | None = None

    async def _fetch_if_changed(self, known_version: str | None) -> Credentials | None:
        """The newest credentials if their version is not ``known_version``, else None."""
        raise NotImplementedError

    async def _bridge(self, failed: Credentials) -> Credentials | None:
        """Credentials set in the database but not yet published (Secrets Manager's
        AWSPENDING), worth a try when the newest version is ``failed``; None by default."""
        return None

    # --- noticing new versions -------------------------------------------------------------
    async def poll(self) -> bool:
        """Load the newest version if it changed; True when it did."""
        previous = self._cached.version_id if self._cached else None
        credentials = await self._fetch_if_changed(previous)
        if credentials is None or credentials.version_id == previous:
            self._refreshed()  # what we hold is still the newest: as fresh as a new fetch
            return False
        self._cached = credentials
        self.fetches += 1
        self._refreshed()
        self.last_success_at = self.last_refresh_at
        log.info(
            "%s: %s moved from version %s to %s",
            self.description,
            self.newest_label,
            previous,
            credentials.version_id,
        )
        return True

    async def check_now(self) -> bool:
        """Ask now (admin API), as a poll would; True when a new version turned up."""
        if self._cached is None:
            return await super().check_now()
        try:
            return await self.poll()
        except CredentialsError:
            self.errors += 1
            raise

    def _poll_failed(self) -> None:
        self.errors += 1

    # --- the upstream refused our credentials ------------------------------------------------
    async def after_auth_failure(self, failed: Credentials) -> Credentials | None:
        """Re-read the newest version at once; if unchanged, try ``_bridge``.

        Rate-limited and shared, so a burst of refused logins costs the service one or two
        calls.
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
                bridge = await self._bridge(failed)
                if bridge is not None and bridge.version_id != failed.version_id:
                    result = bridge
        finally:
            self._auth_refresh_result = result
        return result

    async def close(self) -> None:
        await self.stop_polling()
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
