"""What the admin API and the metrics exporter may read of the running proxy: a narrow view.

The running proxy (``proxy.app.Proxy``) owns its admin API (first up, last down), so it
imports this layer; this layer reads it only through these Protocols, never by importing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry

from proxy.core.limits import ClientLimits
from proxy.pool.pool import Pool


class ListenerView(Protocol):
    @property
    def engine(self) -> str: ...

    @property
    def client_count(self) -> int: ...

    @property
    def accepted_total(self) -> int: ...

    @property
    def rejected_total(self) -> Mapping[str, int]: ...

    @property
    def closed_total(self) -> Mapping[str, int]:
        """Clients closed by a timeout before they chose a pool, by limit."""
        ...

    def label(self) -> str:
        """The listener's address as metrics name it."""
        ...


class ProxyView(Protocol):
    @property
    def pools(self) -> Mapping[str, Pool]: ...

    @property
    def listeners(self) -> Sequence[ListenerView]: ...

    @property
    def shutting_down(self) -> bool: ...

    @property
    def registry(self) -> CollectorRegistry: ...

    @property
    def client_limits(self) -> ClientLimits:
        """Every listener's client connections against max_client_connections and the open files limit."""
        ...
