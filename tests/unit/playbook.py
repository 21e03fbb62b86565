"""Playbooks for the sans-IO pooling cores (``protocols.postgres.pooling``,
``protocols.mysql.pooling``): a script of events in, the exact commands out, step by step.

An engine's tests add their own events by passing a ``feed`` that handles those and hands
the rest to ``feed_common``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FromClient:
    data: bytes


@dataclass(frozen=True)
class FromServer:
    data: bytes


@dataclass(frozen=True)
class Attached:
    connection: Any  # the engine's server state


@dataclass(frozen=True)
class Detached:
    pass


def feed_common(core: Any, event: object) -> list[Any]:
    """What the core says to one of the events every engine's core takes."""
    if isinstance(event, FromClient):
        return list(core.receive_client(event.data))
    if isinstance(event, FromServer):
        return list(core.receive_server(event.data))
    if isinstance(event, Attached):
        return list(core.attached(event.connection))
    if isinstance(event, Detached):
        core.detached()
        return []
    raise TypeError(f"not a playbook event: {event!r}")


def play(
    core: Any,
    script: list[tuple[Any, list[Any]]],
    feed: Callable[[Any, Any], list[Any]] = feed_common,
) -> None:
    """Feed each event in turn; each must give exactly its expected commands."""
    for step, (event, expected) in enumerate(script):
        assert feed(core, event) == expected, f"step {step}: {event}"
