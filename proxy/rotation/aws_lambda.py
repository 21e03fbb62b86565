"""The AWS Lambda entry point: one rotation step as Secrets Manager calls it, with settings from
the function's environment."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from proxy.config import TlsMode
from proxy.rotation.errors import RotationError
from proxy.rotation.settings import RotationSettings, Strategy
from proxy.rotation.steps import open_rotator

log = logging.getLogger("proxy.rotation")  # the package's name, as in steps.py

ENV_STRATEGY = "ROTAPROXY_STRATEGY"
ENV_TLS = "ROTAPROXY_TLS"
ENV_TLS_CA_FILE = "ROTAPROXY_TLS_CA_FILE"
ENV_UPSTREAM_HOST = "ROTAPROXY_UPSTREAM_HOST"
ENV_ENDPOINT = "SECRETS_MANAGER_ENDPOINT"  # the variable AWS's rotation templates read


def settings_from_environ(environ: Mapping[str, str]) -> RotationSettings:
    """RotationSettings from ROTAPROXY_STRATEGY, ROTAPROXY_TLS, ROTAPROXY_TLS_CA_FILE and
    ROTAPROXY_UPSTREAM_HOST (all optional)."""
    ca_file = environ.get(ENV_TLS_CA_FILE) or None
    return RotationSettings(
        strategy=cast(Strategy, environ.get(ENV_STRATEGY) or "single-user"),
        tls=cast(TlsMode, environ.get(ENV_TLS) or "verify-full"),
        tls_ca_file=Path(ca_file) if ca_file else None,
        upstream_host=environ.get(ENV_UPSTREAM_HOST) or None,
    )


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    """AWS Lambda entry point: one step, as Secrets Manager's rotation calls it."""
    try:
        secret_id, token, step = event["SecretId"], event["ClientRequestToken"], event["Step"]
    except KeyError as exc:
        raise RotationError(f"the event lacks {exc.args[0]!r}") from None
    settings = settings_from_environ(os.environ)
    endpoint = os.environ.get(ENV_ENDPOINT) or None
    log.info("lambda: %s for %s (version %s)", step, secret_id, token)

    async def run_step() -> None:
        async with open_rotator(settings, endpoint_url=endpoint) as rotator:
            await rotator.run_step(secret_id, token, step)

    asyncio.run(run_step())
