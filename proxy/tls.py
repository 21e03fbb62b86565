"""TLS contexts for upstream connections, one per pool, built once at start-up."""

from __future__ import annotations

import ssl

from proxy.config import PoolConfig


def upstream_ssl_context(pool: PoolConfig) -> ssl.SSLContext | None:
    """The context for ``pool.tls``; ``None`` for "disable".

    require: encrypt, verify nothing; verify-ca: the chain must lead to the CA;
    verify-full: and the certificate must name the host we dialled (libpq's semantics).
    """
    if pool.tls == "disable":
        return None
    cafile = str(pool.tls_ca_file) if pool.tls_ca_file else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if pool.tls == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif pool.tls == "verify-ca":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
    return context
