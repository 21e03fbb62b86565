"""How a rotation runs: the strategy (single-user or alternating-users) and how it logs in to the
database (TLS, timeout, an upstream host instead of the secret's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from proxy.config import TlsMode

Strategy = Literal["single-user", "alternating-users"]


@dataclass(frozen=True)
class RotationSettings:
    strategy: Strategy = "single-user"
    tls: TlsMode = "verify-full"
    tls_ca_file: Path | None = None
    connect_timeout: float = 5.0
    upstream_host: str | None = None  # instead of the secret's host (tests: 127.0.0.1)

    def __post_init__(self) -> None:
        if self.strategy not in get_args(Strategy):
            raise ValueError(
                f"strategy must be one of {', '.join(get_args(Strategy))}; got {self.strategy!r}"
            )
        if self.tls not in get_args(TlsMode):
            raise ValueError(f"tls must be one of {', '.join(get_args(TlsMode))}; got {self.tls!r}")
        if self.tls_ca_file is not None and not self.tls_ca_file.is_file():
            raise ValueError(f"tls_ca_file {self.tls_ca_file} does not exist or is not a file")
