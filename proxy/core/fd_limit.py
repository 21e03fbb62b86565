"""How many file descriptors the process may hold, raised to what it is allowed at start.

Every client and every server connection is a descriptor. The soft RLIMIT_NOFILE is often
1,024 while the hard one is far higher; past the limit ``accept`` fails and new clients of
every pool with it, so the proxy raises the soft limit to the hard one at start and refuses
new clients with a protocol error while the descriptors left are few (``proxy.client_limits``).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the effective soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d to %d: %s", soft, target, exc)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
