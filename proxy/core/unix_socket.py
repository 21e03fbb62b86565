"""Listening on a Unix-domain socket file: bound with its permissions from the start, a
stale file replaced safely, removed on close only if it is still ours.

A socket file left by a process that died is *stale*: connecting to it is refused. A file
that accepts a connection belongs to a live process (another rotaproxy, say) and is never
removed; a file that is not a socket is never removed either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

# The socket file exists from bind until chmod; until then only its owner may connect.
_BIND_UMASK = 0o177
_PROBE_TIMEOUT = 1.0


class SocketFileInUse(OSError):
    """The path is taken: a live listener, or a file that is not a socket."""


FileIdentity = tuple[int, int, int]  # device, inode, change time: a removed file's inode is reused


def _identity(path: str) -> FileIdentity:
    info = os.lstat(path)
    return info.st_dev, info.st_ino, info.st_ctime_ns


def bind_unix_socket(path: str, mode: int, group: int | None) -> tuple[socket.socket, FileIdentity]:
    """A bound, non-blocking Unix stream socket at ``path`` with permissions ``mode`` (and
    group ``group``); the file's identity, for ``remove_socket_file``."""
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o755, exist_ok=True)
    remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(_BIND_UMASK)
        try:
            sock.bind(path)
        finally:
            os.umask(previous)
        if group is not None:
            os.chown(path, -1, group)
        os.chmod(path, mode)
        sock.setblocking(False)
        return sock, _identity(path)
    except BaseException:
        sock.close()
        raise


def remove_stale_socket(path: str) -> None:
    """Remove ``path`` if it is a socket nobody listens on; refuse if it is anything else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketFileInUse(errno.EEXIST, f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: its process is gone
        return
    except FileNotFoundError:
        return  # removed meanwhile
    except OSError as exc:
        raise SocketFileInUse(
            errno.EADDRINUSE, f"cannot tell whether {path} is in use ({exc.strerror or exc}); not removing it"
        ) from None
    finally:
        probe.close()
    raise SocketFileInUse(errno.EADDRINUSE, f"another process listens on {path}")


def remove_socket_file(path: str, identity: FileIdentity) -> None:
    """Remove the socket file at ``path`` if it is still the one we bound."""
    with contextlib.suppress(OSError):
        if _identity(path) == identity:
            os.unlink(path)
