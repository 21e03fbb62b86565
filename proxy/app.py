"""The running proxy: credential sources, pools and listeners built from a ``Config``.

``Proxy`` owns everything it starts. It shuts down in order (stop accepting, let open
transactions finish up to ``shutdown_timeout``, cut the rest, close pools and AWS clients)
and reloads a new ``Config`` in place: pools are diffed by name, listeners are kept by
address, and nothing changes unless the whole new configuration can be put in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Literal

from proxy.clients.access import ClientAccess
from proxy.clients.policies import ClientPolicies, ClientPolicyError
from proxy.config import (
    Address,
    Config,
    ConfigError,
    CredentialsConfig,
    PoolConfig,
    format_seconds,
    load_config,
)
from proxy.core.fd_limit import raise_open_files_limit
from proxy.core.limits import ClientLimits
from proxy.credentials.aws import AwsClients
from proxy.credentials.base import CredentialSource, PolledCredentialSource
from proxy.credentials.sources import make_source
from proxy.engine import ClientSession, Engine
from proxy.listener import Listener
from proxy.mysql.engine import MYSQL
from proxy.ops.admin import AdminServer
from proxy.ops.metrics import build_registry
from proxy.pool.pool import Pool
from proxy.postgres.engine import POSTGRES

log = logging.getLogger(__name__)

ENGINES: dict[str, Engine] = {engine.name: engine for engine in (POSTGRES, MYSQL)}

# What clients are told (after "terminating connection: ") when their session ends gracefully.
SHUTTING_DOWN = "rotaproxy is shutting down"
POOL_REMOVED = "the pool was removed from rotaproxy's configuration"
POOL_CHANGED = "the pool's configuration changed; connect again"

# Commands for ``Proxy.serve`` (signal handlers put them on its queue).
Command = Literal["stop", "reload"]
STOP: Command = "stop"
RELOAD: Command = "reload"

SessionsOf = Callable[[], dict[asyncio.Task[None], ClientSession]]


def _source_key(config: CredentialsConfig) -> CredentialsConfig:
    """Pools whose credentials differ only in poll_interval share one source (and its cache).

    The whole config is the key (a static password change is a new source); its repr hides
    the password, should a key ever be printed.
    """
    return dataclasses.replace(config, poll_interval=0.0)


def _names(names: Collection[str]) -> str:
    return "[" + ", ".join(names) + "]"


class ReloadRejected(Exception):
    """The new configuration cannot be put in place; the message is ``file: key: why``."""


class Proxy:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.aws_clients = AwsClients(config.aws)
        self.client_policies = ClientPolicies(self.aws_clients)  # who may connect, per listener
        self.sources: dict[CredentialsConfig, CredentialSource] = {}
        self.pools: dict[str, Pool] = {}  # the pools clients can choose now
        self.listeners: list[Listener] = []  # the listeners accepting now
        self.admin: AdminServer | None = None
        self.registry = build_registry(self)  # this proxy's own: tests run several in one process
        self.shutting_down = False
        # Removed or replaced by a reload: serving the clients they have until those leave.
        self._retired_pools: set[Pool] = set()
        self._retired_listeners: list[Listener] = []
        self._drains: set[asyncio.Task[None]] = set()
        self._sessions_changed = asyncio.Event()  # a session ended or moved: drains re-count
        self._closed = False
        # Every listener's clients against max_client_connections and the open files limit.
        self.client_limits = ClientLimits(
            config.limits, raise_open_files_limit(), _server_connections(config)
        )

    def __repr__(self) -> str:
        return f"Proxy(pools={list(self.pools)}, listeners={[str(item.address) for item in self.listeners]})"

    # --- start -------------------------------------------------------------------------------
    async def start(self) -> None:
        limits = self.client_limits
        log.info(
            "open files limit %d: up to %d client connections (max_client_connections %d)",
            limits.open_files,
            limits.max_clients,
            self.config.limits.max_client_connections,
        )
        try:
            for pool_config in self.config.pools:
                pool = self._new_pool(pool_config, self.sources)
                self.pools[pool_config.name] = pool
                await pool.start()
            self._update_polling()
            if self.config.admin.listen is not None:
                self.admin = AdminServer(self, self.config.admin.listen)
                await self.admin.start()
            for address, pool_configs in self.config.listeners().items():
                listener = self._new_listener(address, [self.pools[p.name] for p in pool_configs])
                listener.access = self._client_access(self.config, pool_configs[0], ConfigError)
                await listener.start()
                self.listeners.append(listener)
            self.client_policies.start()
        except BaseException:
            await self.close()
            raise

    def _new_pool(self, config: PoolConfig, sources: dict[CredentialsConfig, CredentialSource]) -> Pool:
        """A pool (not started), its credential source taken from ``sources`` or added there."""
        key = _source_key(config.credentials)
        source = self.sources.get(key) or sources.get(key)
        if source is None:
            # Pools sharing a secret share its cache and its one fetch in flight.
            source = sources[key] = make_source(config.credentials, self.aws_clients)
        return Pool(config, source, ENGINES[config.engine].connector(config))

    def _new_listener(self, address: Address, pools: list[Pool]) -> Listener:
        engine = ENGINES[pools[0].config.engine]  # one listener, one engine (config checks)
        listener = Listener(
            address,
            engine.name,
            pools,
            engine.client_reader,
            engine.client_session,
            engine.limit_error,
            self.client_limits,
        )
        listener.on_session_change = self._sessions_changed.set
        return listener

    def _client_access(self, config: Config, pool: PoolConfig, error: type[Exception]) -> ClientAccess:
        """The client policy of ``pool``'s listener; ``error`` (ConfigError at start,
        ReloadRejected on reload) when its TLS files do not load."""
        try:
            return self.client_policies.access(pool.clients, pool.engine)
        except ClientPolicyError as exc:
            key = f"{self._pool_key(config, pool)}.clients.tls_cert_file"
            if error is ConfigError:
                raise ConfigError(config.source, key, str(exc)) from None
            raise error(f"{config.source}: {key}: {exc}") from None

    def _update_polling(self) -> None:
        """Each secret is polled at the shortest poll_interval of the pools that use it."""
        for key, source in self.sources.items():
            if not isinstance(source, PolledCredentialSource):
                continue
            intervals = [
                pool.config.credentials.poll_interval
                for pool in self.pools.values()
                if _source_key(pool.config.credentials) == key
            ]
            if intervals:
                source.poll_interval = min(intervals)
            source.start_polling()

    def refresh_credentials(self) -> None:
        """Re-read every secret now (SIGHUP); pools move to new versions make-before-break."""
        log.info("re-reading secrets")
        for source in self.sources.values():
            if isinstance(source, PolledCredentialSource):
                source.poll_soon()
        self.client_policies.refresh()  # client secrets, and client certificates from their files

    # --- run ---------------------------------------------------------------------------------
    async def serve(self, commands: asyncio.Queue[Command], config_path: Path | None = None) -> None:
        """Start, then obey ``commands`` until STOP: RELOAD re-reads ``config_path`` (or, for
        the quick command-line form, only the secrets); STOP shuts down gracefully."""
        await self.start()
        try:
            while await commands.get() != STOP:  # RELOAD
                if config_path is None:
                    self.refresh_credentials()
                else:
                    await self.reload_file(config_path)
            await self.shutdown()
        finally:
            await self.close()

    # --- graceful shutdown -------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop accepting everywhere, let every session end at its next idle point within
        ``shutdown_timeout``, then cut the rest and close everything."""
        self.shutting_down = True  # /readyz answers 503 from here on
        loop = asyncio.get_running_loop()
        timeout = self.config.shutdown_timeout
        deadline = loop.time() + timeout
        listeners = [*self.listeners, *self._retired_listeners]
        for listener in listeners:
            listener.stop_accepting()
        for pool in [*self.pools.values(), *self._retired_pools]:
            pool.successor = None  # nobody moves to another pool now: every session ends

        def sessions() -> dict[asyncio.Task[None], ClientSession]:
            return {task: s for listener in listeners for task, s in listener.sessions().items()}

        started = sessions()
        log.info(
            "shutting down: stopped accepting; %d client sessions end at their next idle point "
            "(shutdown_timeout %s)",
            len(started),
            format_seconds(timeout),
        )
        for session in started.values():
            session.close_gracefully(SHUTTING_DOWN)
        await self._wait_until_gone(sessions, deadline)
        cut = sessions()
        for pool_name, count in sorted(_count_by_pool(cut.values()).items()):
            log.warning(
                'pool "%s": %d client sessions still busy after shutdown_timeout %s: cut (open '
                "transactions roll back)",
                pool_name,
                count,
                format_seconds(timeout),
            )
        await _cut(cut)
        log.info(
            "shutdown: %d client sessions ended gracefully, %d cut after shutdown_timeout %s",
            len(started) - len(cut),  # no session starts after stop_accepting
            len(cut),
            format_seconds(timeout),
        )
        await self.close()

    async def _wait_until_gone(self, sessions: SessionsOf, deadline: float) -> None:
        """Until ``sessions()`` is empty or ``deadline`` (loop time) passes."""
        loop = asyncio.get_running_loop()
        while sessions():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._sessions_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sessions_changed.wait(), remaining)

    async def close(self) -> None:
        """Cut whatever still runs and close everything (idempotent)."""
        if self._closed:
            return
        self._closed = True
        listeners = [*self.listeners, *self._retired_listeners]
        for listener in listeners:
            listener.stop_accepting()
        for listener in listeners:
            await listener.close()
        for task in list(self._drains):
            task.cancel()
        if self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)
        for pool in [*self.pools.values(), *self._retired_pools]:
            await pool.close()
        for source in self.sources.values():
            await source.close()
        await self.client_policies.close()
        await self.aws_clients.close()
        if self.admin is not None:
            await self.admin.close()  # last: /healthz and /readyz answer until the end
        log.info("rotaproxy stopped")

    # --- reload (SIGHUP) ---------------------------------------------------------------------
    async def reload_file(self, path: Path) -> bool:
        """Re-read ``path`` and put it in place; an invalid file changes nothing."""
        if self.shutting_down:
            return False
        try:
            config = load_config(path)
            await self.reload(config)
        except (ConfigError, ReloadRejected) as exc:
            log.error("reload rejected: %s; still running the previous configuration", exc)
            return False
        except Exception:
            # A bug, not a bad file: keep serving what runs rather than exit over a reload.
            log.exception("reload of %s failed; still running the previous configuration", path)
            return False
        return True

    async def reload(self, new: Config) -> None:
        """Put ``new`` in place: pools diffed by name, listeners kept by address.

        Added pools start; removed ones drain (their clients end at their next idle point,
        within shutdown_timeout); a changed pool is replaced by a new one for new clients
        while the old one drains (transaction-mode clients move over at their next idle
        point); unchanged pools are not touched. Raises ReloadRejected, having changed
        nothing, when a new listener cannot bind or an address changes engine.
        """
        listeners_by_address = {listener.address: listener for listener in self.listeners}
        new_listeners = new.listeners()
        for address, pool_configs in new_listeners.items():
            listener = listeners_by_address.get(address)
            if listener is not None and listener.engine != pool_configs[0].engine:
                raise ReloadRejected(
                    f"{new.source}: {self._pool_key(new, pool_configs[0])}.listen: {address} serves "
                    f"{listener.engine} pools; giving it to {pool_configs[0].engine} pools needs a restart"
                )
        added = [p.name for p in new.pools if p.name not in self.pools]
        removed = [name for name in self.pools if name not in {p.name for p in new.pools}]
        changed = [p.name for p in new.pools if p.name in self.pools and self.pools[p.name].config != p]
        unchanged = [p.name for p in new.pools if p.name in self.pools and self.pools[p.name].config == p]

        # Build what is new, and bind its listeners, before anything changes.
        # The client policies first: TLS files that do not load reject the reload.
        accesses = {
            address: self._client_access(new, pool_configs[0], ReloadRejected)
            for address, pool_configs in new_listeners.items()
        }
        new_sources: dict[CredentialsConfig, CredentialSource] = {}
        pools: dict[str, Pool] = {}
        for pool_config in new.pools:
            if pool_config.name in unchanged:
                pools[pool_config.name] = self.pools[pool_config.name]
                continue
            pool = pools[pool_config.name] = self._new_pool(pool_config, new_sources)
            if pool_config.name in changed:
                # The same name on the same dashboards: counters and client gauges carry on,
                # and moved transaction-mode clients keep reporting into the same meters.
                pool.metrics = self.pools[pool_config.name].metrics
        bound: list[Listener] = []
        try:
            for address, pool_configs in new_listeners.items():
                if address in listeners_by_address:
                    continue
                listener = self._new_listener(address, [pools[p.name] for p in pool_configs])
                listener.access = accesses[address]
                try:
                    await listener.start(serve=False)
                except OSError as exc:
                    raise ReloadRejected(
                        f"{new.source}: {self._pool_key(new, pool_configs[0])}.listen: "
                        f"cannot listen on {address}: {exc.strerror or exc}"
                    ) from None
                bound.append(listener)
        except BaseException:
            for listener in bound:
                await listener.close()
            for source in new_sources.values():
                await source.close()
            raise

        # Commit.
        self._check_restart_only(self.config, new)
        self.config = new
        self.client_limits.update(new.limits, _server_connections(new))
        self.sources.update(new_sources)
        retiring: list[Pool] = []
        for name in (*removed, *changed):
            pool = self.pools[name]
            pool.retire(successor=pools.get(name))
            retiring.append(pool)
            self._retired_pools.add(pool)
        for name in (*added, *changed):
            await pools[name].start()
        self.pools = pools
        kept: list[Listener] = []
        retired_listeners: list[Listener] = []
        for listener in self.listeners:
            now_on = new_listeners.get(listener.address)
            if now_on is None:
                listener.stop_accepting()
                retired_listeners.append(listener)
            else:
                listener.set_pools([pools[p.name] for p in now_on])
                listener.access = accesses[listener.address]  # (new clients; sessions in keep theirs)
                kept.append(listener)
        self._retired_listeners.extend(retired_listeners)
        self.listeners = kept + bound
        self._update_polling()
        await self.client_policies.retain(accesses.values())
        self.client_policies.start()
        for listener in bound:
            await listener.serve()
        for listener in retired_listeners:
            log.info("stopped listening on %s (no pool uses it any more)", listener.address)
        log.info(
            "reloaded %s: added %s, removed %s, changed %s, unchanged %s",
            new.source,
            _names(added),
            _names(removed),
            _names(changed),
            _names(unchanged),
        )
        if retiring or retired_listeners:
            drain = asyncio.create_task(
                self._drain(retiring, retired_listeners, removed), name="reload-drain"
            )
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        self.refresh_credentials()

    @staticmethod
    def _pool_key(config: Config, pool: PoolConfig) -> str:
        return f"pool[{config.pools.index(pool)}]"

    def _check_restart_only(self, old: Config, new: Config) -> None:
        """[admin], [aws] and [logging] are read at start only: say so when they changed."""
        for section, before, after in (
            ("admin", old.admin, new.admin),
            ("aws", old.aws, new.aws),
            ("logging", old.logging, new.logging),
        ):
            if before != after:
                log.warning(
                    "reload of %s: [%s] changed, but it is read at start only: restart rotaproxy to "
                    "apply it; the running [%s] settings stay",
                    new.source,
                    section,
                    section,
                )

    async def _drain(self, pools: list[Pool], listeners: list[Listener], removed: list[str]) -> None:
        """Let the clients of retired pools (and of listeners no pool uses) end at their next
        idle point within shutdown_timeout; cut the rest; then close what they used."""
        loop = asyncio.get_running_loop()
        timeout = self.config.shutdown_timeout
        deadline = loop.time() + timeout
        retired: set[Pool | None] = set(pools)

        def sessions() -> dict[asyncio.Task[None], ClientSession]:
            found: dict[asyncio.Task[None], ClientSession] = {}
            for listener in [*self.listeners, *self._retired_listeners]:
                # A session that has not chosen a pool yet leaves with its listener.
                on = retired | {None} if listener in listeners else retired
                found.update(listener.sessions(on))
            return found

        started = sessions()
        for session in started.values():
            gone = session.pool is None or session.pool.name in removed
            session.close_gracefully(POOL_REMOVED if gone else POOL_CHANGED)
        await self._wait_until_gone(sessions, deadline)
        cut = sessions()
        await _cut(cut)
        ended = _count_by_pool(started.values())
        cut_by_pool = _count_by_pool(cut.values())
        for pool in pools:
            await pool.close()
            self._retired_pools.discard(pool)
            log.info(
                'pool "%s" (%s by the reload) closed: %d client sessions left or moved, %d cut after '
                "shutdown_timeout %s",
                pool.name,
                "removed" if pool.name in removed else "replaced",
                ended.get(pool.name, 0) - cut_by_pool.get(pool.name, 0),
                cut_by_pool.get(pool.name, 0),
                format_seconds(timeout),
            )
        for listener in listeners:
            await listener.close()
            self._retired_listeners.remove(listener)
        await self._close_unused_sources()

    async def _close_unused_sources(self) -> None:
        used = {_source_key(pool.config.credentials) for pool in [*self.pools.values(), *self._retired_pools]}
        for key in [key for key in self.sources if key not in used]:
            await self.sources.pop(key).close()


async def _cut(sessions: Collection[asyncio.Task[None]]) -> None:
    """Cancel sessions that did not end in time (their open transactions roll back)."""
    for task in sessions:
        task.cancel()
    if sessions:
        await asyncio.gather(*sessions, return_exceptions=True)


def _count_by_pool(sessions: Collection[ClientSession]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for session in sessions:
        name = session.pool.name if session.pool is not None else "(none chosen yet)"
        counts[name] = counts.get(name, 0) + 1
    return counts


def _server_connections(config: Config) -> int:
    return sum(pool.max_server_connections for pool in config.pools)
