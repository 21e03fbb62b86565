"""Who is on the other end of a Unix-domain socket: the caller's uid, gid, groups and pid
as the kernel reports them (SO_PEERCRED, SO_PEERGROUPS), for ``[pool.clients] allow_uids``.

TCP has no such notion, even on loopback: any local user or container sharing the network
namespace looks the same there, which is why a pool that restricts its callers needs a Unix socket.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any, Final

_UCRED: Final = struct.Struct("iII")  # struct ucred: pid, uid, gid
# SO_PEERGROUPS (Linux 4.13): the caller's supplementary groups; Python names it from 3.13 on.
SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)
_GROUPS_BUFFER: Final = 4 * 1024  # 1,024 groups; a caller in more is judged by its primary gid


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    pid: int  # 0 when the caller lives in a PID namespace this process cannot see
    uid: int
    gid: int
    groups: frozenset[int]  # primary and supplementary

    def __str__(self) -> str:
        return f"uid {self.uid} (gid {self.gid}, pid {self.pid})"


def peer_credentials(sock: Any) -> PeerCredentials | None:
    """The caller on a connected Unix socket (a ``socket.socket`` or the transport's
    ``get_extra_info("socket")``); None for any other kind of socket."""
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    try:
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return None
    groups = {gid}
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _GROUPS_BUFFER)
        groups.update(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except OSError:
        pass  # an old kernel, or more groups than the buffer holds
    return PeerCredentials(pid, uid, gid, frozenset(groups))
