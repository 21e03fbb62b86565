"""Throughput through the poolers: pgbench select-only, a ``SELECT 1`` script and the
TPC-B-like default at 10 and 100 clients, direct vs rotaproxy vs PgBouncer (same pool size), in
transaction mode and, where the pool has a server connection per client, in session mode.

PgBouncer comes from Debian's package; when it is missing and we are root on Debian it is
installed, otherwise its column says why it is absent. Runs are interleaved so that the
ratios hold on a noisy machine. Each pooler's CPU time per transaction (user + system, from
/proc) is measured too: on a machine where the clients, the poolers and the database share
the cores, that cost is what sets the ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from proxy.bench.timeline import half_range
from proxy.local.process import free_port
from proxy.local.stack import DATABASE, USER, LocalStack

SELECT_ONE = "SELECT 1;\n"
SESSION_MODE = "rotaproxy-session"
PGBOUNCER_SESSION = "pgbouncer-session"
# The targets that hold a server connection per client: run only where the pool has one each.
SESSION_TARGETS = frozenset({SESSION_MODE, PGBOUNCER_SESSION})
BEYOND_POOL = "more clients than server connections"
# PgBouncer's second alias for the same database, served in session mode by the same process.
PGBOUNCER_SESSION_DATABASE = f"{DATABASE}_session"
SCALE = 10
# A benchmark tool's run: (TPS, average latency ms, transactions processed, problem or "").
ToolResult = tuple[float, float, int, str]


@dataclass
class Run:
    scenario: str
    clients: int
    target: str
    tps: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # the pooler's CPU per transaction

    @property
    def median_tps(self) -> float:
        return statistics.median(self.tps) if self.tps else float("nan")

    @property
    def spread_tps(self) -> float:
        return half_range(self.tps)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def find_pgbouncer() -> tuple[str | None, str]:
    """The pgbouncer binary, installing Debian's package when possible; or why it is absent."""
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if found:
        return found, ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "pgbouncer"], capture_output=True, env=env, check=False
        )
        if Path("/usr/sbin/pgbouncer").exists():
            return "/usr/sbin/pgbouncer", ""
        return None, "apt-get install pgbouncer failed"
    return None, "pgbouncer is not installed (apt-get install pgbouncer)"


class PgBouncer:
    """A throwaway PgBouncer in front of the stack's PostgreSQL: the database in transaction
    mode, and the same database as ``PGBOUNCER_SESSION_DATABASE`` in session mode."""

    def __init__(
        self, binary: str, stack: LocalStack, pool_size: int, workdir: Path, *, max_clients: int = 2000
    ) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = workdir / "pgbouncer"
        self.dir.mkdir(mode=0o755, exist_ok=True)
        (self.dir / "userlist.txt").write_text(f'"{USER}" ""\n')
        server = (
            f"host=127.0.0.1 port={stack.pg.port} dbname={DATABASE} user={USER} "
            f"password={stack.postgres.password}"
        )
        (self.dir / "pgbouncer.ini").write_text(
            f"[databases]\n{DATABASE} = {server}\n"
            f"{PGBOUNCER_SESSION_DATABASE} = {server} pool_mode=session\n\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir =\nauth_type = trust\nauth_file = {self.dir / 'userlist.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = {max_clients}\n"
            "listen_backlog = 4096\n"
            f"server_tls_sslmode = verify-full\nserver_tls_ca_file = {stack.tls.ca_file}\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\npidfile = {self.dir / 'pgbouncer.pid'}\n"
        )
        for path in self.dir.iterdir():
            path.chmod(0o644)
        (self.dir / "pgbouncer.ini").chmod(0o600)
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # from its pidfile

    def __enter__(self) -> PgBouncer:
        command = [self.binary, str(self.dir / "pgbouncer.ini")]
        user = None
        if os.geteuid() == 0:  # it refuses to run as root
            shutil.chown(self.dir, "postgres")
            for path in self.dir.iterdir():
                shutil.chown(path, "postgres")
            # Not runuser: its PAM session would cut the open-files limit to 1024, and a
            # storm of thousands of clients would then measure that limit, not PgBouncer.
            user = "postgres"
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=user, group=user
        )
        deadline = time.monotonic() + 10.0
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                self.pid = int((self.dir / "pgbouncer.pid").read_text())
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log_text = (self.dir / "pgbouncer.log").read_text(errors="replace")[-500:]
                    raise RuntimeError(f"pgbouncer did not start: {log_text}") from None
                time.sleep(0.05)

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@contextlib.asynccontextmanager
async def pgbouncer_for(
    stack: LocalStack, pool_size: int, *, max_clients: int = 2000
) -> AsyncIterator[tuple[PgBouncer | None, str]]:
    """A PgBouncer running for the block, or None and why there is none."""
    binary, absent = await asyncio.to_thread(find_pgbouncer)
    if binary is None:
        yield None, absent
        return
    with PgBouncer(binary, stack, pool_size, stack.log_path.parent, max_clients=max_clients) as bouncer:
        yield bouncer, ""


def pgbench(args: list[str], port: int, password: str | None = None, database: str = DATABASE) -> ToolResult:
    """Run pgbench; return its TPS, average latency (ms), transactions processed and any problem."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password:
        env["PGPASSWORD"] = password
    result = subprocess.run(
        ["pgbench", *args, "-h", "127.0.0.1", "-p", str(port), "-U", USER, database],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    tps = re.search(r"tps = ([\d.]+)", result.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", result.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    processed = re.search(r"number of transactions actually processed: (\d+)", result.stdout)
    problem = ""
    if result.returncode != 0 or not tps or (failed and failed.group(1) != "0"):
        problem = (result.stderr.strip().splitlines() or ["pgbench failed"])[-1]
    return (
        float(tps.group(1)) if tps else 0.0,
        float(latency.group(1)) if latency else 0.0,
        int(processed.group(1)) if processed else 0,
        problem,
    )


async def _measured(run: Run, pid: int | None, tool: Callable[[], ToolResult]) -> None:
    """One run of ``tool`` recorded in ``run``, with the pooler's (``pid``) CPU per transaction."""
    cpu_before = cpu_seconds(pid) if pid else 0.0
    tps, latency, processed, problem = await asyncio.to_thread(tool)
    if pid and processed:
        # Logins are in it too: a few per cent of a run, for both poolers.
        run.cpu_us.append((cpu_seconds(pid) - cpu_before) / processed * 1e6)
    run.tps.append(tps)
    run.latency_ms.append(latency)
    if problem:
        run.errors.append(problem)


@dataclass(frozen=True)
class Target:
    """Where pgbench connects, with which password, and the pooler's pid (None: direct)."""

    port: int
    password: str | None
    pid: int | None
    database: str = DATABASE


async def throughput(
    stack: LocalStack, *, seconds: int, rounds: int, pool_size: int, clients: tuple[int, ...] = (10, 100)
) -> tuple[list[Run], str]:
    """Interleaved pgbench runs; returns the runs and why PgBouncer is absent (or "")."""
    password = stack.postgres.password
    await asyncio.to_thread(pgbench, ["-i", "-q", "-s", str(SCALE)], stack.pg.port, password)
    script = stack.log_path.parent / "select1.sql"
    script.write_text(SELECT_ONE)
    scenarios = {"select-only": ["-S"], "SELECT 1": ["-f", str(script)], "TPC-B-like": ["-b", "tpcb-like"]}
    runs: list[Run] = []
    targets = {
        "direct": Target(stack.pg.port, password, None),
        "rotaproxy": Target(stack.txn_proxy_port, None, stack.proxy_pid),
        SESSION_MODE: Target(stack.postgres.proxy_port, None, stack.proxy_pid),
    }
    async with pgbouncer_for(stack, pool_size) as (bouncer, absent):
        if bouncer is not None:
            targets["pgbouncer"] = Target(bouncer.port, None, bouncer.pid)
            targets[PGBOUNCER_SESSION] = Target(bouncer.port, None, bouncer.pid, PGBOUNCER_SESSION_DATABASE)
        for scenario, args in scenarios.items():
            for count in clients:
                present = {n: t for n, t in targets.items() if n not in SESSION_TARGETS or count <= pool_size}
                series = {name: Run(scenario, count, name) for name in present}
                command = [*args, "-n", "-M", "extended", "-c", str(count), "-j", "2", "-T", str(seconds)]
                for _ in range(rounds):
                    for name, target in present.items():
                        tool = partial(pgbench, command, target.port, target.password, target.database)
                        await _measured(series[name], target.pid, tool)
                runs += series.values()
    return runs, absent


def _ratio(ours: Run | None, reference: Run | None) -> str:
    return (
        f"{ours.median_tps / reference.median_tps:.2f}x"
        if ours and reference and reference.median_tps
        else "-"
    )


def _cpu(*runs: Run | None) -> str:
    """The poolers' median CPU µs per transaction, "a / b"."""
    return " / ".join(f"{statistics.median(run.cpu_us):.0f}" if run and run.cpu_us else "-" for run in runs)


def throughput_markdown(runs: list[Run], absent: str) -> str:
    lines = [
        "| scenario | clients | direct TPS | rotaproxy TPS | PgBouncer TPS | rotaproxy/direct "
        "| rotaproxy/PgBouncer | latency ms (direct / rotaproxy / PgBouncer) "
        "| pooler CPU µs/transaction (rotaproxy / PgBouncer) | rotaproxy session mode TPS "
        "| PgBouncer session mode TPS | session/PgBouncer session "
        "| session mode pooler CPU µs/transaction (rotaproxy / PgBouncer) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keyed = {(r.scenario, r.clients, r.target): r for r in runs}
    for scenario, clients in dict.fromkeys((r.scenario, r.clients) for r in runs):
        direct = keyed[(scenario, clients, "direct")]
        ours = keyed[(scenario, clients, "rotaproxy")]
        bouncer = keyed.get((scenario, clients, "pgbouncer"))
        session = keyed.get((scenario, clients, SESSION_MODE))
        bouncer_session = keyed.get((scenario, clients, PGBOUNCER_SESSION))

        def cell(run: Run | None, why: str = f"absent: {absent}") -> str:
            return f"{run.median_tps:,.0f} ± {run.spread_tps:,.0f}" if run else why

        latencies = " / ".join(
            f"{statistics.median(run.latency_ms):.2f}" if run else "-" for run in (direct, ours, bouncer)
        )
        # Beyond the pool there are no session rows; within it, PgBouncer's may still be absent.
        bouncer_session_why = BEYOND_POOL if session is None else f"absent: {absent}"
        lines.append(
            f"| {scenario} | {clients} | {cell(direct)} | {cell(ours)} | {cell(bouncer)} | "
            f"{_ratio(ours, direct)} | {_ratio(ours, bouncer)} | {latencies} | {_cpu(ours, bouncer)} | "
            f"{cell(session, BEYOND_POOL)} | {cell(bouncer_session, bouncer_session_why)} | "
            f"{_ratio(session, bouncer_session)} | {_cpu(session, bouncer_session)} |"
        )
    return "\n".join(lines)


SYSBENCH_TABLES = ["--tables=2", "--table-size=10000"]
SYSBENCH_SCRIPTS = ("oltp_read_only", "oltp_read_write")


def sysbench(args: list[str], port: int, password: str | None, script: str = "oltp_read_only") -> ToolResult:
    """Run a sysbench OLTP script; return TPS, average latency (ms), transactions and any problem."""
    common = [
        "--db-driver=mysql",
        "--mysql-host=127.0.0.1",
        f"--mysql-port={port}",
        f"--mysql-user={USER}",
        f"--mysql-password={password or ''}",
        f"--mysql-db={DATABASE}",
        *SYSBENCH_TABLES,
    ]
    result = subprocess.run(["sysbench", script, *common, *args], capture_output=True, text=True, check=False)
    tps = re.search(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec", result.stdout)
    latency = re.search(r"avg:\s+([\d.]+)", result.stdout)
    problem = ""
    if result.returncode != 0 or not tps:
        problem = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or ["failed"])[-1]
    return (
        float(tps.group(2)) if tps else 0.0,
        float(latency.group(1)) if latency else 0.0,
        int(tps.group(1)) if tps else 0,
        problem,
    )


async def mysql_throughput(stack: LocalStack, *, seconds: int, rounds: int, clients: int = 10) -> list[Run]:
    """sysbench oltp_read_only and oltp_read_write, direct (password) vs rotaproxy in session
    mode vs rotaproxy in transaction mode, interleaved."""
    upstream = stack.mysql
    if upstream is None:
        return []  # MariaDB is not installed here
    await asyncio.to_thread(sysbench, ["prepare"], upstream.port, upstream.password)
    targets = {"direct": (upstream.port, upstream.password), "rotaproxy": (upstream.proxy_port, "")}
    if stack.mysql_txn_proxy_port is not None:
        targets["rotaproxy-transaction"] = (stack.mysql_txn_proxy_port, "")
    runs: list[Run] = []
    for script in SYSBENCH_SCRIPTS:
        series = {name: Run(f"sysbench {script}", clients, name) for name in targets}
        for _ in range(rounds):
            for name, (port, password) in targets.items():
                pid = stack.proxy_pid if name.startswith("rotaproxy") else None
                run = [f"--threads={clients}", f"--time={seconds}", "run"]
                await _measured(series[name], pid, partial(sysbench, run, port, password, script))
        runs += series.values()
    return runs


def mysql_markdown(runs: list[Run]) -> str:
    lines = [
        "| scenario | threads | direct TPS | session mode TPS | transaction mode TPS "
        "| session/direct | transaction/direct | latency ms (direct / session / transaction) "
        "| rotaproxy CPU µs/transaction (session / transaction) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keyed = {(r.scenario, r.target): r for r in runs}
    for scenario in dict.fromkeys(r.scenario for r in runs):
        direct, ours = keyed[(scenario, "direct")], keyed[(scenario, "rotaproxy")]
        multiplexed = keyed.get((scenario, "rotaproxy-transaction"))
        measured = [ours] if multiplexed is None else [ours, multiplexed]
        cpu = " / ".join(f"{statistics.median(r.cpu_us):.0f}" if r.cpu_us else "-" for r in measured)
        latency = " / ".join(f"{statistics.median(r.latency_ms):.2f}" for r in [direct, *measured])
        tx_tps = tx_ratio = "-"
        if multiplexed is not None:
            tx_tps = f"{multiplexed.median_tps:,.0f} ± {multiplexed.spread_tps:,.0f}"
            tx_ratio = _ratio(multiplexed, direct)
        lines.append(
            f"| {scenario} | {ours.clients} | {direct.median_tps:,.0f} ± {direct.spread_tps:,.0f} | "
            f"{ours.median_tps:,.0f} ± {ours.spread_tps:,.0f} | {tx_tps} | {_ratio(ours, direct)} | "
            f"{tx_ratio} | {latency} | {cpu} |"
        )
    return "\n".join(lines)
