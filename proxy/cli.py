"""The ``rotaproxy`` command line: run, check-config, status, demo, bench, rotate."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import platform
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from proxy.build import build
from proxy.config import Config, ConfigError, load_config, parse_duration, quick_config
from proxy.logs import LOG_FORMATS, setup_logging

log = logging.getLogger("rotaproxy")

DEFAULT_ADMIN_URL = "http://127.0.0.1:9631"
STATUS_TIMEOUT = 5.0


def version_line() -> str:
    """``rotaproxy --version``: the release, and which build runs (compiled or pure Python)."""
    try:
        release = importlib.metadata.version("rotaproxy")
    except importlib.metadata.PackageNotFoundError:
        release = "(not installed)"
    return f"rotaproxy {release} ({build()}, Python {platform.python_version()})"


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _interruptible(main: Coroutine[Any, Any, int]) -> int:
    """Run the demo or the bench; Ctrl-C (or SIGTERM, from a timeout or a supervisor) stops
    them after everything they started is stopped."""
    # SIGTERM goes the way of Ctrl-C: the runner cancels the task and every context on the
    # way out stops what it started (by default SIGTERM would leave the servers running).
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        return run_async(main)
    except KeyboardInterrupt:
        # The runner cancelled the task: every server, process and temporary directory was
        # stopped and removed on the way out.
        print("interrupted: the throwaway servers and the proxy were stopped", file=sys.stderr)
        return 130


def _add_run_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("-c", "--config", type=Path, help="TOML config file")
    run.add_argument("--engine", choices=["postgres", "mysql"], help="quick form: engine")
    run.add_argument("--listen", help="quick form: listen address (default 127.0.0.1:6432)")
    run.add_argument("--secret-id", help="quick form: Secrets Manager secret id or ARN")
    run.add_argument("--upstream", help="quick form: HOST:PORT (default: host/port in the secret)")
    run.add_argument("--database", help="quick form: database name (and pool name)")
    run.add_argument("--mode", default="session", choices=["session", "transaction"])
    run.add_argument(
        "--tls", default="verify-full", choices=["disable", "require", "verify-ca", "verify-full"]
    )
    run.add_argument("--tls-ca-file", help="quick form: CA bundle for verify-ca / verify-full")
    run.add_argument("--endpoint-url", help="quick form: Secrets Manager endpoint (local testing)")
    run.add_argument("--region", help="quick form: AWS region")
    run.add_argument("--admin-listen", help="quick form: admin HTTP address")
    run.add_argument(
        "--log-format", choices=LOG_FORMATS, help="text or json lines (default: [logging] format, else text)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rotaproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: [logging] level in the config, else info",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(commands)
    check = commands.add_parser("check-config", help="validate a config file and print the pools")
    check.add_argument("-c", "--config", type=Path, required=True)
    status = commands.add_parser("status", help="the pools of a running rotaproxy, from its admin API")
    status.add_argument(
        "--admin", help=f"admin API URL (default: [admin] listen of -c, else {DEFAULT_ADMIN_URL})"
    )
    status.add_argument("-c", "--config", type=Path, help="take the admin address from this config file")
    demo = commands.add_parser("demo", help="throwaway PostgreSQL + local Secrets Manager + proxy")
    demo.add_argument("--clients", type=int, default=10, help="concurrent clients per database")
    demo.add_argument("--duration", type=parse_duration, default=20.0, help="how long the load runs (20s)")
    demo.add_argument("--rotations", type=int, default=4, help="secret rotations during the load")
    demo.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the live terminal view (default: when stdout is a terminal); --no-live for plain lines",
    )
    demo.add_argument(
        "--chart",
        type=Path,
        default=Path("rotaproxy-demo.png"),
        help="where to write the PNG chart (default rotaproxy-demo.png)",
    )
    bench = commands.add_parser(
        "bench", help="direct vs rotaproxy (vs PgBouncer): connections, throughput, storm, rotation"
    )
    bench.add_argument("--quick", action="store_true", help="a short run (about two minutes)")
    bench.add_argument("--json", type=Path, dest="json_path", help="also write the results as JSON")
    bench.add_argument("--plots", type=Path, help="also draw PNG charts into this directory")
    bench.add_argument(
        "--scenarios",
        default="connections,throughput,storm,rotation",
        help="comma-separated: connections, throughput, storm, rotation (default all)",
    )
    _add_rotate_parser(commands)
    return parser


def _add_rotate_parser(commands: Any) -> None:
    rotate = commands.add_parser(
        "rotate",
        help="rotate a secret's database password now (the four Secrets Manager rotation steps; "
        "for Parameter Store, alternating users)",
    )
    rotate.add_argument("--source", default="secretsmanager", choices=["secretsmanager", "parameterstore"])
    rotate.add_argument("--secret-id", help="Secrets Manager secret id or ARN (--source secretsmanager)")
    rotate.add_argument("--parameter", help="SSM parameter name or path (--source parameterstore)")
    rotate.add_argument(
        "--strategy",
        default=None,
        choices=["single-user", "alternating-users"],
        help="default: single-user for Secrets Manager; Parameter Store takes alternating-users only",
    )
    rotate.add_argument(
        "--pause-after",
        nargs=2,
        action="append",
        default=[],
        metavar=("STEP", "DURATION"),
        help="sleep DURATION (e.g. 30s) after STEP (createSecret, setSecret, testSecret; Parameter Store: "
        "setPassword, testPassword); repeatable",
    )
    rotate.add_argument("--token", help="ClientRequestToken: resume or repeat a rotation (default: new)")
    rotate.add_argument("--endpoint-url", help="Secrets Manager endpoint (local testing)")
    rotate.add_argument("--region", help="AWS region")
    rotate.add_argument(
        "--tls", default="verify-full", choices=["disable", "require", "verify-ca", "verify-full"]
    )
    rotate.add_argument("--tls-ca-file", type=Path, help="CA bundle for verify-ca / verify-full")
    rotate.add_argument("--upstream-host", help="connect here instead of the secret's host")


def _rotate(args: argparse.Namespace) -> int:
    from proxy.rotation.command import rotate_command, rotate_parameter_command
    from proxy.rotation.errors import RotationError
    from proxy.rotation.parameter_store import PARAMETER_STEPS, refuse_single_user
    from proxy.rotation.settings import RotationSettings, Strategy
    from proxy.rotation.steps import STEPS

    parameter_store = args.source == "parameterstore"
    steps = PARAMETER_STEPS if parameter_store else STEPS
    strategy: Strategy = args.strategy or ("alternating-users" if parameter_store else "single-user")
    pauses: dict[str, float] = {}
    try:
        if parameter_store:
            if not args.parameter or args.secret_id:
                raise ValueError("--source parameterstore takes --parameter NAME (and no --secret-id)")
            if args.token:
                raise ValueError("--token is for Secrets Manager versions; Parameter Store has none to give")
            refuse_single_user(strategy)
        elif not args.secret_id or args.parameter:
            raise ValueError("--source secretsmanager takes --secret-id ID (and no --parameter)")
        for step, text in args.pause_after:
            if step not in steps:
                raise ValueError(f"unknown step {step!r}; steps are {', '.join(steps)}")
            pauses[step] = parse_duration(text)
        settings = RotationSettings(
            strategy=strategy,
            tls=args.tls,
            tls_ca_file=args.tls_ca_file,
            upstream_host=args.upstream_host,
        )
    except (ValueError, RotationError) as exc:
        print(f"rotaproxy: rotate: {exc}", file=sys.stderr)
        return 2

    async def rotate() -> int:
        if parameter_store:
            await rotate_parameter_command(
                args.parameter,
                settings,
                endpoint_url=args.endpoint_url,
                region=args.region,
                pause_after=pauses,
                out=lambda line: print(line, flush=True),
            )
            return 0
        await rotate_command(
            args.secret_id,
            settings,
            endpoint_url=args.endpoint_url,
            region=args.region,
            token=args.token,
            pause_after=pauses,
            out=lambda line: print(line, flush=True),
        )
        return 0

    try:
        return run_async(rotate())
    except RotationError as exc:
        print(f"rotaproxy: rotate: {exc}", file=sys.stderr)
        return 1


def config_from_args(args: argparse.Namespace) -> Config:
    if args.config is not None:
        return load_config(args.config)
    if not args.engine or not args.secret_id:
        raise ConfigError("<command line>", "", "give -c FILE, or --engine and --secret-id")
    return quick_config(
        engine=args.engine,
        listen=args.listen,
        secret_id=args.secret_id,
        upstream=args.upstream,
        database=args.database,
        mode=args.mode,
        endpoint_url=args.endpoint_url,
        region=args.region,
        tls=args.tls,
        tls_ca_file=args.tls_ca_file,
        admin_listen=args.admin_listen,
    )


def describe(config: Config) -> str:
    lines = [f"config {config.source}: {len(config.pools)} pool(s)"]
    for pool in config.pools:
        upstream = str(pool.upstream) if pool.upstream else "host/port from the secret"
        database = pool.database or "dbname from the secret, else the pool name"
        lines.append(
            f"  pool {pool.name!r}: {pool.engine} {pool.mode} mode, listen {pool.listen}, "
            f"upstream {upstream}, database {database}, tls {pool.tls}, "
            f"server connections {pool.min_server_connections}..{pool.max_server_connections}, "
            f"borrow_timeout {pool.borrow_timeout:g}s, credentials: {pool.credentials.description}"
        )
    if config.admin.listen:
        lines.append(f"  admin API on http://{config.admin.listen} (/healthz /readyz /metrics /pools)")
    lines.append(f"  shutdown_timeout {config.shutdown_timeout:g}s (SIGTERM lets open transactions finish)")
    return "\n".join(lines)


# --- rotaproxy status --------------------------------------------------------------------------
class StatusError(Exception):
    """The admin API could not be asked; the message says where and why."""


def fetch_pools(admin_url: str) -> dict[str, Any]:
    """``GET /pools`` of a running rotaproxy."""
    url = admin_url.rstrip("/") + "/pools"
    try:
        with urllib.request.urlopen(url, timeout=STATUS_TIMEOUT) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise StatusError(f"{url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise StatusError(f"cannot reach the admin API at {url}: {reason}") from None
    except ValueError:
        raise StatusError(f"{url} did not answer JSON: is this rotaproxy's admin API?") from None
    if not isinstance(body, dict):
        raise StatusError(f"{url} answered JSON that is not an object of pools")
    return body


def _age(timestamp: object, now: float) -> str:
    if not isinstance(timestamp, int | float):
        return "never"
    seconds = max(0.0, now - timestamp)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def status_table(pools: dict[str, Any], now: float | None = None) -> Any:
    """One row per pool: readiness, clients, server connections, credentials, rotation."""
    from rich.table import Table

    now = time.time() if now is None else now
    table = Table(title="rotaproxy pools", title_justify="left")
    table.add_column("pool", no_wrap=True, style="bold")
    table.add_column("engine/mode", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("clients\nact/wait/pin", justify="right", no_wrap=True)
    table.add_column("server\nidle/busy/max", justify="right", no_wrap=True)
    table.add_column("gen", justify="right")
    table.add_column("credential version", overflow="fold")
    table.add_column("refreshed", no_wrap=True)
    table.add_column("rotated", no_wrap=True)
    table.add_column("problem", overflow="fold")
    for name, pool in pools.items():
        clients = pool.get("clients", {})
        credentials = pool.get("credentials", {})
        state = "[green]ready[/]" if pool.get("ready") else "[red]not ready[/]"
        if pool.get("paused"):
            state += " [yellow]paused[/]"
        problem = pool.get("rotation_error") or pool.get("last_error") or credentials.get("last_poll_error")
        version = credentials.get("version_id") or "-"
        if credentials.get("stage"):
            version += f" ({credentials['stage']})"
        table.add_row(
            name,
            f"{pool.get('engine')}/{pool.get('mode')}",
            state,
            f"{clients.get('active', 0)}/{clients.get('waiting', 0)}/{clients.get('pinned', 0)}",
            # A kept connection is idle: its client is between transactions (transaction mode).
            f"{pool.get('idle', 0) + pool.get('kept', 0)}/{pool.get('busy', 0)}/"
            f"{pool.get('max_server_connections', '?')}",
            str(pool.get("generation", "")),
            version,
            _age(pool.get("last_refresh_at"), now),
            _age(pool.get("last_rotation_at"), now),
            str(problem or ""),
        )
    return table


def _status(args: argparse.Namespace) -> int:
    from rich.console import Console

    admin_url = args.admin
    if admin_url is None and args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"rotaproxy: {exc}", file=sys.stderr)
            return 2
        if config.admin.listen is None:
            print(f"rotaproxy: status: {args.config} has no [admin] listen", file=sys.stderr)
            return 2
        admin_url = f"http://{config.admin.listen}"
    try:
        pools = fetch_pools(admin_url or DEFAULT_ADMIN_URL)
    except StatusError as exc:
        print(f"rotaproxy: status: {exc}", file=sys.stderr)
        return 1
    Console(width=200 if not sys.stdout.isatty() else None).print(status_table(pools))
    return 0


# A second Ctrl-C while open transactions finish: the operator wants out now.
EXIT_INTERRUPTED = 130


async def _run(config: Config, config_path: Path | None = None) -> int:
    """SIGTERM or Ctrl-C: graceful shutdown (a second Ctrl-C exits at once). SIGHUP: reload
    ``config_path`` (and re-read every secret); with the quick form, re-read the secrets."""
    from proxy.app import RELOAD, STOP, Command, Proxy

    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Command] = asyncio.Queue()
    stopping = False

    def stop(signum: signal.Signals) -> None:
        nonlocal stopping
        if stopping:
            if signum == signal.SIGINT:
                log.warning("second interrupt: exiting now without waiting for open transactions")
                logging.shutdown()
                os._exit(EXIT_INTERRUPTED)
            log.info("already shutting down (send SIGINT again to exit at once)")
            return
        stopping = True
        log.info("%s received: shutting down gracefully", signum.name)
        commands.put_nowait(STOP)

    def reload() -> None:
        if stopping:
            log.info("SIGHUP ignored: shutting down")
            return
        log.info("SIGHUP received: %s", f"reloading {config_path}" if config_path else "re-reading secrets")
        commands.put_nowait(RELOAD)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await Proxy(config).serve(commands, config_path)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except ConfigError as exc:  # (a file the config names that does not load: a TLS key, say)
        log.error("cannot start: %s", exc)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level or "info")
    if args.command == "status":
        return _status(args)
    if args.command == "demo":
        from proxy.bench.demo import run_demo

        return _interruptible(
            run_demo(
                clients=args.clients,
                duration=args.duration,
                rotations=args.rotations,
                live=args.live,
                chart=args.chart,
            )
        )
    if args.command == "bench":
        from proxy.bench.bench import run_bench

        scenarios = tuple(name.strip() for name in args.scenarios.split(",") if name.strip())
        return _interruptible(
            run_bench(quick=args.quick, json_path=args.json_path, plots=args.plots, scenarios=scenarios)
        )
    if args.command == "rotate":
        return _rotate(args)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"rotaproxy: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(describe(config))
        return 0
    setup_logging(args.log_level or config.logging.level or "info", args.log_format or config.logging.format)
    return run_async(_run(config, args.config))
