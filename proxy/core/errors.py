"""Why a borrow or an upstream login failed: errors whose messages are safe to show a client."""

from __future__ import annotations


class PoolError(Exception):
    """A borrow failed; the message is safe to show to a client."""


class BorrowTimeout(PoolError):
    pass


class PoolClosed(PoolError):
    pass


class UpstreamLoginError(PoolError):
    """The upstream refused the login; engines say whether the credentials were the cause."""

    @property
    def is_auth_failure(self) -> bool:
        return False


class UpstreamUnavailable(PoolError):
    """The upstream could not be reached (refused, reset, timed out): worth retrying."""
