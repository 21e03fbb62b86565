"""Logins answered without a server round trip, for any engine.

A transaction-mode client holds no server connection between its transactions, so its login
needs none either, once the pool has seen the server answer a login like it. The engine's
first login with given startup settings, in a credential generation, borrows a connection,
applies them there (the server validates and normalises them exactly as at login) and
``remember``s what the server reported; a later login with the same settings in the same
generation is greeted with that ``answer`` at once, and its settings reach a server with its
first transaction. The engine asks only while the pool holds an open connection: with none
(the server down, or not reached yet) every login asks the server, and fails as it would.
New credentials (maybe another user, another server) forget every answer.

Session mode asks too: a login whose known answer is what the borrowed connection reports
already changes nothing there, so its settings need no round trip either.
"""

from __future__ import annotations

from typing import Final

# Distinct startup settings remembered per pool; beyond this the oldest half is forgotten.
KNOWN_LOGINS_LIMIT: Final = 1024

Settings = frozenset[tuple[str, str]]


class KnownLogins:
    """The reported parameters of the logins a pool's server answered, by startup settings."""

    def __init__(self) -> None:
        self._generation = 0
        self._answers: dict[Settings, dict[str, str]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def answer(self, generation: int, settings: dict[str, str]) -> dict[str, str] | None:
        """The parameters to greet a login with these settings with, if known for ``generation``."""
        if generation != self._generation:
            return None
        answer = self._answers.get(frozenset(settings.items()))
        return None if answer is None else dict(answer)

    def remember(self, generation: int, settings: dict[str, str], parameters: dict[str, str]) -> None:
        """What the server reported after a login with ``settings`` (in ``generation``)."""
        answers = self._answers
        if generation != self._generation:  # new credentials: maybe another user, another server
            self._generation = generation
            answers.clear()
        if len(answers) >= KNOWN_LOGINS_LIMIT:
            for key in list(answers)[: KNOWN_LOGINS_LIMIT // 2]:
                del answers[key]
        answers[frozenset(settings.items())] = dict(parameters)
