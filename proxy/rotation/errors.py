"""What a failed rotation step raises, and how a step's failures become it."""

from __future__ import annotations

from protocols.errors import LocalProtocolError, ProtocolViolation
from proxy.core.errors import PoolError
from proxy.redaction import redact


class RotationError(Exception):
    """A rotation step failed; the message names the step, the secret and the cause, never a value."""

    def __init__(self, problem: str, *, step: str | None = None, secret_id: str | None = None) -> None:
        where = f"{step} for secret {secret_id!r}: " if step and secret_id else ""
        super().__init__(where + problem)
        self.problem = problem
        self.step = step
        self.secret_id = secret_id


def step_failure(
    exc: Exception, *, step: str, secret_id: str, service: str, holder: str
) -> RotationError | None:
    """The RotationError a step's failure ``exc`` becomes (naming the step, the secret or
    parameter, and the cause, masked), or None for an exception that is nobody's to translate.
    ``service`` names the AWS API in its errors ("Secrets Manager"), ``holder`` what stores the
    values ("secret", "parameter")."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, RotationError):
        problem = exc.problem
    elif isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        # AWS messages describe the request, never a stored value.
        words = " ".join(str(error.get("Message", "")).split())
        problem = f"{service} error {error.get('Code', 'unknown')}: {words}"
    elif isinstance(exc, LocalProtocolError):
        # A value SQL cannot carry (a NUL, an empty name).
        problem = f"cannot quote a value of the {holder} for SQL: {exc}"
    elif isinstance(exc, PoolError | ProtocolViolation):
        # An upstream error may echo the statement it refused: masked like the rest.
        problem = str(exc)
    elif isinstance(exc, BotoCoreError | OSError):
        # e.g. "Could not connect to the endpoint URL", "No such file or directory: 'ca.pem'"
        problem = f"{type(exc).__name__}: {exc}"
    else:
        return None
    return RotationError(redact(problem), step=step, secret_id=secret_id)
