"""A local AWS Secrets Manager: moto's server on a free loopback port, and the two calls
the tests and the demo make to fill it."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from proxy.local.process import Service, ThrowawayError, free_port, port_open

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler

logger = logging.getLogger(__name__)


class LocalSecretsManager(Service):
    """moto's standalone server (as moto.server.ThreadedMotoServer) on a free loopback port.

    Secrets live in moto's in-process backends, so they survive stop() and start().
    """

    host: str
    port: int
    region: str

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port(self.host)
        self.region = "us-east-1"
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopping = False

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _handler_class(self) -> type[WSGIRequestHandler]:
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        owner = self

        class TrackingHandler(MotoRequestHandler):
            # Clients keep HTTP connections alive; stop() must cut them, or a pooled
            # connection would keep talking to a "stopped" server (and block its shutdown).
            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    if owner._stopping:
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                    else:
                        owner._connections.add(self.connection)

            def finish(self) -> None:
                with owner._lock:
                    owner._connections.discard(self.connection)
                super().finish()

        return TrackingHandler

    def start(self) -> None:
        """Serve on ``self.port``; returns once the port accepts connections."""
        if self._server is not None:
            return
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        # Bound here rather than inside ThreadedMotoServer's thread: there a busy port
        # ends the thread via sys.exit() and its start() then waits forever.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            server = make_server(
                self.host,
                self.port,
                DomainDispatcherApplication(create_backend_app),
                threaded=True,
                request_handler=self._handler_class(),
                fd=listener.fileno(),
            )
        except OSError as exc:
            raise ThrowawayError(f"cannot listen on {self.host}:{self.port} for moto: {exc}") from exc
        finally:
            # make_server duplicated the descriptor.
            listener.close()
        # Handler threads are cut off in stop(); joining them there could only hang.
        server.block_on_close = False  # type: ignore[attr-defined]
        self._stopping = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"moto-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not port_open(self.host, self.port):
            if time.monotonic() >= deadline:
                self.stop()
                raise ThrowawayError(f"moto server on port {self.port} did not come up")
            time.sleep(0.02)
        logger.info("moto Secrets Manager listening on %s", self.endpoint_url)

    def stop(self) -> None:
        """Stop serving and cut open connections; idempotent. Secrets are kept."""
        server, thread = self._server, self._thread
        if server is None:
            return
        with self._lock:
            self._stopping = True
        server.shutdown()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._connections.clear()
        if thread is not None:
            thread.join(timeout=10.0)
        server.server_close()
        self._server = None
        self._thread = None
        logger.info("moto Secrets Manager on port %d stopped", self.port)

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``aioboto3.Session().client("secretsmanager", **kwargs)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }

    def environ(self) -> dict[str, str]:
        """Environment a subprocess (the proxy) needs to talk to this server."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            # Otherwise botocore may probe the EC2 metadata endpoint for credentials.
            "AWS_EC2_METADATA_DISABLED": "true",
        }


async def create_secret(client: Any, secret_id: str, value: Mapping[str, object]) -> str:
    """Create ``secret_id`` holding ``value`` as JSON; return its VersionId."""
    response = await client.create_secret(Name=secret_id, SecretString=json.dumps(dict(value)))
    return str(response["VersionId"])


async def put_secret_json(
    client: Any,
    secret_id: str,
    value: Mapping[str, object],
    stages: Sequence[str] = ("AWSCURRENT",),
) -> str:
    """Store a new version of ``secret_id`` with the given stages; return its VersionId."""
    response = await client.put_secret_value(
        SecretId=secret_id,
        SecretString=json.dumps(dict(value)),
        VersionStages=list(stages),
    )
    return str(response["VersionId"])
