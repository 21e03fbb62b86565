"""What ``rotaproxy rotate`` runs: the four Secrets Manager steps (or, for Parameter Store, the
three alternating-users steps) in order on clients of its own, one line of output per step
(names and ids only)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from proxy.rotation.parameter_store import open_parameter_rotator
from proxy.rotation.settings import RotationSettings
from proxy.rotation.steps import open_rotator


async def rotate_command(
    secret_id: str,
    settings: RotationSettings,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    token: str | None = None,
    pause_after: dict[str, float] | None = None,
    out: Callable[[str], None] = print,
) -> str:
    """``rotaproxy rotate``: the four steps, one line of output per step (names and ids only)."""
    pauses = pause_after or {}

    def report(step: str) -> None:
        pause = f" (pausing {pauses[step]:g}s)" if pauses.get(step, 0) > 0 else ""
        out(f"{step}: done for secret {secret_id} version {chosen}{pause}")

    chosen = token or str(uuid.uuid4())
    async with open_rotator(settings, endpoint_url=endpoint_url, region=region) as rotator:
        await rotator.rotate(secret_id, token=chosen, pause_after=pauses, on_step=report)
    return chosen


async def rotate_parameter_command(
    name: str,
    settings: RotationSettings,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    pause_after: dict[str, float] | None = None,
    out: Callable[[str], None] = print,
) -> str:
    """``rotaproxy rotate --source parameterstore``: alternating users, one line per step."""
    pauses = pause_after or {}

    def report(step: str) -> None:
        pause = f" (pausing {pauses[step]:g}s)" if pauses.get(step, 0) > 0 else ""
        out(f"{step}: done for parameter {name}{pause}")

    async with open_parameter_rotator(settings, endpoint_url=endpoint_url, region=region) as rotator:
        version = await rotator.rotate(name, pause_after=pauses, on_step=report)
    out(f"parameter {name} is at version {version}")
    return version
