"""What a transaction-pooling core tells its driver, for every engine: the commands
(``SendToServer``, ``SendToClient``, ``NeedConnection``, ``MayDetach``, ``Pinned``,
``Ended``, ``CloseWithError``, the idle-in-transaction timer) and the terms on which a
leaving client's connection goes back (``Release``). Each engine's core
(``protocols.postgres.pooling``, ``protocols.mysql.pooling``) returns these; the drivers
carry them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocols.endings import EndReason

# --- commands --------------------------------------------------------------------------------


class _Send:
    """Bytes to write to one side. A plain native class, not a dataclass: one is built for
    nearly every chunk relayed, and mypyc leaves a dataclass's ``__init__`` interpreted."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data: Final = data

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, _Send) and other.data == self.data

    def __hash__(self) -> int:
        return hash((type(self), self.data))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data={self.data!r})"


class SendToServer(_Send):
    """Write ``data`` to the attached server connection."""

    __slots__ = ()


class SendToClient(_Send):
    """Write ``data`` to the client."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class NeedConnection:
    """The client sent something and holds no connection: attach one (``attached``)."""


@dataclass(frozen=True, slots=True)
class MayDetach:
    """The server is idle and owed nothing. ``clean``: the connection may serve anyone now
    (give it back, or keep it); else the client is pinned and only its leaving frees it."""

    clean: bool


@dataclass(frozen=True, slots=True)
class Pinned:
    """The client is pinned to its connection from now on (said once)."""

    reason: str
    kind: str  # what it is counted by: client-chosen names stay out (``pin_kind``)


@dataclass(frozen=True, slots=True)
class Ended:
    """The client is done; ``detail`` says what broke, for the log."""

    reason: EndReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CloseWithError:
    """Send the client ``error`` (a FATAL ErrorResponse), then end it."""

    error: bytes
    reason: EndReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ArmIdleTimer:
    """Idle inside a transaction, owed nothing: start the idle-in-transaction clock."""


@dataclass(frozen=True, slots=True)
class DisarmIdleTimer:
    """The client spoke: stop the idle-in-transaction clock."""


@dataclass(frozen=True, slots=True)
class Release:
    """On what terms the connection of a client that left goes back (``release_terms``)."""

    reusable: bool
    cancel_first: bool  # the client left mid-request: cancel what it runs
    needs_reset: bool  # session state or an open transaction of the client's is on it


NEED_CONNECTION: Final = NeedConnection()
MAY_DETACH: Final = MayDetach(clean=True)
MAY_DETACH_PINNED: Final = MayDetach(clean=False)
ARM_IDLE_TIMER: Final = ArmIdleTimer()
DISARM_IDLE_TIMER: Final = DisarmIdleTimer()
CLIENT_TERMINATED: Final = Ended(EndReason.CLIENT_TERMINATED)
