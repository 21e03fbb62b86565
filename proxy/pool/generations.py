"""Generations: the credentials new connections log in with, and moving to new ones make
before break (a new secret version, a refused password, a drain) while the old drain away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Hashable
from typing import Any, Final, Protocol

from proxy.core.counters import PoolMetrics
from proxy.core.errors import UpstreamLoginError
from proxy.core.server import Connector, ServerConnection
from proxy.credentials.base import Credentials, CredentialSource
from proxy.pool.keep import KeptConnections

log = logging.getLogger("proxy.pool")

ROTATION_RETRY_FIRST: Final = 2.0
ROTATION_RETRY_MAX: Final = 60.0


class Draining(Protocol):
    """What a move to a new generation needs of the pool's connections."""

    name: str
    metrics: PoolMetrics
    closing: bool
    connecting: int  # logins in flight, counted against max_server_connections
    idle: deque[ServerConnection]
    kept: KeptConnections

    @property
    def old_generation_count(self) -> int: ...

    def discard(self, connection: ServerConnection) -> None: ...

    def adopt(self, connection: ServerConnection) -> None:
        """A connection opened for no borrower joins the pool (a waiter, or the idle list)."""
        ...


class Generations:
    """The pool's generation and its credentials, and the rotation that moves them on.

    A connection belongs to the generation it logged in for; one of an older generation is
    closed as soon as nobody uses it.
    """

    def __init__(self, pool: Draining, source: CredentialSource, connector: Connector) -> None:
        self._pool = pool
        self._source = source
        self._connector = connector
        self.current = 1
        # The credentials new connections log in with; the generation moves with them.
        self.credentials: Credentials | None = None
        self._retired_versions: set[str | None] = set()
        self._rotation: asyncio.Task[None] | None = None
        self._drain_started_at: float | None = None  # of the last rotation, until the old are gone
        self._failed_version: str | None = None
        self._retry_at = 0.0
        self._failures_in_row = 0
        self.rotations_total = 0
        self.rotation_failures_total = 0
        self.auth_failures_total = 0
        self.last_rotation: dict[str, Any] | None = None
        self.rotation_error: str | None = None
        self.reconnects_total = 0
        self.last_reconnect_at: float | None = None

    async def stop(self) -> None:
        """Cancel a rotation under way (the pool is closing)."""
        if self._rotation is not None:
            self._rotation.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._rotation

    # --- logging in ----------------------------------------------------------------------------
    async def login(self, variant: Hashable) -> ServerConnection:
        """A connection of ``variant`` logged in with this generation's credentials, or, when the
        upstream refuses them, with what the source offers instead (then a new generation)."""
        credentials = self.credentials or await self._source.current()
        try:
            connection = await self._connector(credentials, self.current, variant)
        except UpstreamLoginError as exc:
            if not exc.is_auth_failure:
                raise
            self.auth_failures_total += 1
            # The password changed under us: a rotation's window (AWSPENDING already set in
            # the database) or a secret updated by hand. Find what works, and move to it.
            candidate = await self._source.after_auth_failure(credentials)
            if candidate is None or candidate.version_id in self._retired_versions:
                raise
            try:
                connection = await self._connector(candidate, self.current + 1, variant)
            except UpstreamLoginError as candidate_exc:
                if candidate_exc.is_auth_failure:
                    self.auth_failures_total += 1
                raise
            self._promote(candidate, f"version {credentials.version_id} was refused by the upstream")
            connection.generation = self.current
            return connection
        if self.credentials is None:
            self.credentials = credentials
        return connection

    # --- rotation (make-before-break) ----------------------------------------------------------
    def check_for_new_version(self) -> None:
        """Start moving to the source's newest version when it differs from ours."""
        latest, ours = self._source.cached, self.credentials
        if latest is None or ours is None or self._rotation is not None or self._pool.closing:
            return
        if latest.version_id == ours.version_id or latest.version_id in self._retired_versions:
            return
        if latest.version_id == self._failed_version and time.monotonic() < self._retry_at:
            return
        self._rotation = asyncio.create_task(self._rotate_to(latest), name=f"pool-{self._pool.name}-rotation")
        self._rotation.add_done_callback(self._rotation_done)

    def _rotation_done(self, task: asyncio.Task[None]) -> None:
        self._rotation = None
        if not task.cancelled() and task.exception() is not None:
            log.error('pool "%s": rotation crashed', self._pool.name, exc_info=task.exception())

    async def _rotate_to(self, credentials: Credentials) -> None:
        """Make before break: the new version is adopted only once a connection logs in with it."""
        pool = self._pool
        pool.connecting += 1
        try:
            connection = await self._connector(credentials, self.current + 1, self._connector.default_variant)
        except Exception as exc:
            pool.connecting -= 1
            self._rotation_failed(credentials, exc)
            return
        pool.connecting -= 1
        self._promote(credentials, "Secrets Manager has a new AWSCURRENT version")
        connection.generation = self.current
        connection.variant = self._connector.default_variant
        pool.adopt(connection)

    def _rotation_failed(self, credentials: Credentials, exc: Exception) -> None:
        """Keep the version we have, and try the new one again later, backing off."""
        self.rotation_failures_total += 1
        if isinstance(exc, UpstreamLoginError) and exc.is_auth_failure:
            self.auth_failures_total += 1
        same_again = self._failed_version == credentials.version_id
        self._failures_in_row = self._failures_in_row + 1 if same_again else 1
        self._failed_version = credentials.version_id
        backoff = min(ROTATION_RETRY_MAX, ROTATION_RETRY_FIRST * 2 ** (self._failures_in_row - 1))
        self._retry_at = time.monotonic() + backoff
        self.rotation_error = f"new version {credentials.version_id} does not log in: {exc}"
        log.error(
            'pool "%s": %s; keeping version %s and its connections, retrying in %gs',
            self._pool.name,
            self.rotation_error,
            self.credentials.version_id if self.credentials else None,
            backoff,
        )

    def _promote(self, credentials: Credentials, reason: str) -> None:
        old = self.credentials
        if old is not None and old.version_id == credentials.version_id:
            return  # another login got here first
        pool = self._pool
        self.current += 1
        self.credentials = credentials
        if old is not None:
            self._retired_versions.add(old.version_id)
        self._failed_version = None
        self._failures_in_row = 0
        self.rotation_error = None
        self.rotations_total += 1
        self._drain_started_at = time.monotonic()
        idle_closed = self._close_idle_old()
        busy_old = pool.old_generation_count
        self.last_rotation = {
            "from_version": old.version_id if old else None,
            "to_version": credentials.version_id,
            "at": time.time(),
            "idle_closed": idle_closed,
            "busy_draining": busy_old,
            "drained_after_seconds": None,
        }
        log.info(
            'pool "%s": rotated from version %s to %s (generation %d; %s): %d idle old connections '
            "closed, %d busy ones close when their clients release them",
            pool.name,
            old.version_id if old else None,
            credentials.version_id,
            self.current,
            reason,
            idle_closed,
            busy_old,
        )
        self.note_drained()

    def _close_idle_old(self) -> int:
        """After a generation change: close the idle (and kept) old connections; how many."""
        pool = self._pool
        kept = pool.kept.take_back_all()  # released into a new generation: they close
        idle_old = [connection for connection in pool.idle if connection.generation != self.current]
        for connection in idle_old:
            pool.discard(connection)
        return kept + len(idle_old)

    def note_drained(self) -> None:
        """A connection closed: when it was the last of the generations a rotation left, say so."""
        if self._drain_started_at is None or self._pool.old_generation_count:
            return
        elapsed = time.monotonic() - self._drain_started_at
        self._drain_started_at = None
        if self.last_rotation is not None:
            self.last_rotation["drained_after_seconds"] = round(elapsed, 3)
        self._pool.metrics.rotation_duration.observe(elapsed)
        log.info(
            'pool "%s": rotation complete: the last old-generation connection closed %.3fs after the switch',
            self._pool.name,
            elapsed,
        )

    # --- drain (admin API) ---------------------------------------------------------------------
    def reconnect(self) -> dict[str, int]:
        """A new generation with the same credentials: idle connections close now, busy ones when
        released; new ones log in afresh."""
        pool = self._pool
        self.current += 1
        self.reconnects_total += 1
        self.last_reconnect_at = time.time()
        idle_closed = self._close_idle_old()
        busy_old = pool.old_generation_count
        log.info(
            'pool "%s": reconnect requested: %d idle connections closed, %d busy ones close when '
            "their clients release them (generation %d)",
            pool.name,
            idle_closed,
            busy_old,
            self.current,
        )
        return {"generation": self.current, "idle_closed": idle_closed, "busy_draining": busy_old}
