"""What a failed rotation step raises."""

from __future__ import annotations


class RotationError(Exception):
    """A rotation step failed; the message names the step, the secret and the cause, never a value."""

    def __init__(self, problem: str, *, step: str | None = None, secret_id: str | None = None) -> None:
        where = f"{step} for secret {secret_id!r}: " if step and secret_id else ""
        super().__init__(where + problem)
        self.problem = problem
        self.step = step
        self.secret_id = secret_id
