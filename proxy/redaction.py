"""Defence in depth for secrets: a registry of secret values and a log filter that masks them.

Code never formats a password on purpose; this filter catches the accident (an upstream
error echoing input, a driver exception) before it reaches a log line.
"""

from __future__ import annotations

import logging

MASK = "********"
# Short values would mask ordinary words; real passwords and tokens are longer.
_MIN_SECRET_LENGTH = 6
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    if len(value) >= _MIN_SECRET_LENGTH:
        _secrets.add(value)


def forget_secret(value: str) -> None:
    """Stop masking a value that can no longer be used (an expired RDS IAM token), so a
    process that signs a token every few minutes does not grow the registry without end."""
    _secrets.discard(value)


def redact(text: str) -> str:
    # Longest first: a secret that contains another must be masked whole.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks registered secrets in a record's final message (and its exception text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # The formatter prints exc_text as it is when exc_info is gone.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
