"""TLS files for the throwaway servers: a fresh CA (trustme) and a localhost certificate it
signs, and the copies a server reads them from."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a server certificate signed by a throwaway CA."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls_files(directory: Path, name: str = "test") -> TlsFiles:
    """Create a new CA and a server cert for localhost, 127.0.0.1 and ::1 under ``directory``.

    Every call makes a different CA, so a second call gives a "wrong CA" for tests.
    """
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    files = TlsFiles(
        ca_file=directory / f"{name}-ca.pem",
        cert_file=directory / f"{name}-cert.pem",
        key_file=directory / f"{name}-key.pem",
    )
    files.ca_file.write_bytes(ca.cert_pem.bytes())
    files.cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    # Created 0600 from the start so the key is never readable by others, not even briefly.
    with contextlib.suppress(FileNotFoundError):
        files.key_file.unlink()
    fd = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as key_out:
        key_out.write(leaf.private_key_pem.bytes())
    return files


def copy_tls_files(tls: TlsFiles, directory: Path, owner: tuple[int, int] | None) -> TlsFiles:
    """Copies of ``tls`` in ``directory`` (ca.pem, server.crt, server.key), the key mode 0600.

    Servers refuse a key readable by group/others, and the caller's files may sit where the
    server's OS user cannot reach them (or be deleted while the server still runs).
    """
    copies = TlsFiles(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.crt",
        key_file=directory / "server.key",
    )
    for source, target, mode in (
        (tls.ca_file, copies.ca_file, 0o644),
        (tls.cert_file, copies.cert_file, 0o644),
        (tls.key_file, copies.key_file, 0o600),
    ):
        shutil.copyfile(source, target)
        target.chmod(mode)
        if owner is not None:
            os.chown(target, *owner)
    return copies
