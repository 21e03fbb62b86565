"""Log output: JSON lines (time, level, logger, message) from a real rotaproxy, chosen in the
config or with ``run --log-format``; secrets masked in both formats."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.local.postgres import ThrowawayPostgres
from proxy.local.process import free_port
from proxy.local.secrets_manager import LocalSecretsManager
from proxy.logs import setup_logging
from proxy.redaction import MASK, register_secret
from tests.conftest import ProxyLauncher, Secrets, Users, new_secret, pool_toml, rds_secret

JSON_KEYS = {"time", "level", "logger", "message"}


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """setup_logging replaces the root handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    for entry in entries:
        assert set(entry) >= JSON_KEYS, entry
        datetime.fromisoformat(entry["time"])
    return entries


def test_json_lines_carry_time_level_logger_message_and_mask_secrets(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "pw-" + secrets.token_urlsafe(18)
    register_secret(secret)
    setup_logging("info", "json")
    logging.getLogger("rotaproxy.test").info("pool %s: the upstream said %r", "orders", secret)
    try:
        raise RuntimeError(f"driver error echoing {secret}")
    except RuntimeError:
        logging.getLogger("rotaproxy.test").exception("it failed")
    logging.getLogger("rotaproxy.test").debug("below the level")

    err = capsys.readouterr().err
    assert secret not in err
    first, second = json_lines(err)
    assert first["level"] == "info" and first["logger"] == "rotaproxy.test"
    assert first["message"] == f"pool orders: the upstream said '{MASK}'"
    assert first["time"].endswith("+00:00")
    assert second["level"] == "error" and second["message"] == "it failed"
    assert "RuntimeError: driver error echoing " + MASK in second["exception"]


def test_text_stays_the_default(root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()
    logging.getLogger("rotaproxy.test").warning("plain words")
    err = capsys.readouterr().err
    assert err.rstrip().endswith("WARNING rotaproxy.test: plain words")
    with pytest.raises(ValueError, match="one of text, json"):
        setup_logging("info", "xml")


async def test_a_proxy_configured_for_json_logs_only_json_lines(
    launcher: ProxyLauncher, pg: ThrowawayPostgres, users: Users, sm_client: Any, known_secrets: Secrets
) -> None:
    secret_id = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    running = launcher.start(
        pool_toml("jsonlogs", secret_id, database="appdb", tls="disable")
        + pool_toml("jsonbroken", "no/such/secret", tls="disable")
        + '[logging]\nformat = "json"\n'
    )
    with psycopg.connect(f"host=127.0.0.1 port={running.port} dbname=jsonlogs user=x") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(f"host=127.0.0.1 port={running.port} dbname=jsonbroken user=x")
    await asyncio.sleep(0.3)

    logs = running.logs()
    entries = json_lines(logs)
    messages = [entry["message"] for entry in entries]
    assert any(message.startswith("listening on 127.0.0.1:") for message in messages)
    assert any(
        "'no/such/secret'" in message and entry["level"] == "warning"
        for entry, message in zip(entries, messages, strict=True)
    )
    assert {entry["logger"] for entry in entries} >= {"proxy.listener", "proxy.credentials"}
    assert not any(value in logs for value in known_secrets.values)


async def test_run_log_format_flag_overrides_the_config(
    workdir: Path, sm: LocalSecretsManager, pg: ThrowawayPostgres, users: Users, sm_client: Any
) -> None:
    secret_id = await new_secret(sm_client, rds_secret(pg, "app", users.app))
    port = free_port()
    config = workdir / f"logs-{secrets.token_hex(3)}.toml"
    config.write_text(
        f'[aws]\nendpoint_url = "{sm.endpoint_url}"\nregion = "{sm.region}"\n\n[logging]\nformat = "text"\n\n'
        + pool_toml("flagjson", secret_id, database="appdb", tls="disable").replace("{port}", str(port))
    )
    log_path = config.with_suffix(".log")
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "proxy", "run", "--log-format", "json", "-c", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **sm.environ()},
        )
    try:
        deadline = time.monotonic() + 20
        while "listening on" not in log_path.read_text():
            assert process.returncode is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 15)
    entries = json_lines(log_path.read_text())
    assert entries[-1]["message"] == "rotaproxy stopped"
    assert users.app not in log_path.read_text()
