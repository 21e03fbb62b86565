"""rotaproxy itself as a separate process, as it runs in production: ``python -m proxy run``
with its log in a file, ready once every listening port accepts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

from proxy.local.process import Service, ThrowawayError, port_open, socket_open


class ProxyProcess(Service):
    """``python -m proxy run -c CONFIG`` with its log in a file; ready once every port (and
    Unix socket) accepts."""

    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        port: int,
        *,
        extra_ports: Sequence[int] = (),
        sockets: Sequence[Path] = (),
        prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_level: str = "debug",
    ) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.port = port
        self.ports = (port, *extra_ports)
        self.sockets = tuple(sockets)
        self.prefix = tuple(prefix)  # a command the proxy runs under (e.g. prlimit)
        self.env = {**os.environ, **(env or {})}
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, timeout: float = 20.0) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "proxy",
                    "--log-level",
                    self.log_level,
                    "run",
                    "-c",
                    str(self.config_path),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        if wait:
            self.wait_listening(timeout)

    def wait_listening(self, timeout: float = 20.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        waits: list[tuple[str, Callable[[], bool]]] = [
            (str(port), partial(port_open, "127.0.0.1", port)) for port in self.ports
        ]
        waits += [(str(path), partial(socket_open, path)) for path in self.sockets]
        for where, accepts in waits:
            while not accepts():
                if self.process.poll() is not None:
                    raise ThrowawayError(f"rotaproxy exited with {self.process.returncode}:\n{self.logs()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise ThrowawayError(f"rotaproxy did not listen on {where}:\n{self.logs()}")
                time.sleep(0.05)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode
