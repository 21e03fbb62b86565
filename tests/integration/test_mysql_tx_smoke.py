"""Temporary smoke of MySQL transaction mode (to be folded into test_mysql_transaction.py)."""

from __future__ import annotations

import threading
from typing import Any

import mysql.connector
import pymysql

from proxy.local.mariadb import ThrowawayMariaDB
from proxy.local.process import free_port
from tests.conftest import MySqlUsers, ProxyLauncher, get_json, new_secret, pool_toml, rds_mysql_secret


async def test_smoke(
    launcher: ProxyLauncher, mariadb: ThrowawayMariaDB, mysql_users: MySqlUsers, sm_client: Any
) -> None:
    secret = await new_secret(sm_client, rds_mysql_secret(mariadb, "app", mysql_users.app))
    admin = free_port()
    config = pool_toml(
        "txdb",
        secret,
        engine="mysql",
        mode="transaction",
        upstream=f"127.0.0.1:{mariadb.port}",
        database="appdb",
        tls="disable",
        max_server_connections=1,
        borrow_timeout="5s",
    )
    running = launcher.start(config, admin_port=admin)

    def connect() -> Any:
        return pymysql.connect(
            host="127.0.0.1", port=running.port, user="x", database="appdb", autocommit=True
        )

    a, b = connect(), connect()
    ca, cb = a.cursor(), b.cursor()
    ca.execute("SELECT @@time_zone, DATABASE()")
    default_tz = ca.fetchone()[0]
    ca.execute("SET time_zone = '+05:00'")
    cb.execute("SELECT @@time_zone")
    assert cb.fetchone()[0] == default_tz
    ca.execute("SELECT @@time_zone")
    assert ca.fetchone()[0] == "+05:00"
    ca.execute("CREATE TABLE IF NOT EXISTS tx_smoke (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
    ca.execute("INSERT INTO tx_smoke (v) VALUES (1)")
    a_id = ca.lastrowid
    cb.execute("INSERT INTO tx_smoke (v) VALUES (2)")
    ca.execute("SELECT LAST_INSERT_ID()")
    assert ca.fetchone()[0] == a_id
    ca.execute("UPDATE tx_smoke SET v = v + 1 WHERE id = %s", (a_id,))
    assert ca.rowcount == 1
    a.begin()
    ca.execute("INSERT INTO tx_smoke (v) VALUES (3)")
    done = threading.Event()

    def other() -> None:
        cb.execute("SELECT 1")
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    assert not done.wait(0.5)
    a.commit()
    assert done.wait(5)
    thread.join()
    # prepared statements
    conn = mysql.connector.connect(
        host="127.0.0.1", port=running.port, user="x", database="appdb", autocommit=True
    )
    cur = conn.cursor(prepared=True)
    for i in range(5):
        cur.execute("SELECT ?, ? + 1", (i, i))
        assert cur.fetchone() == (i, i + 1)
        cb.execute("SELECT 2")
    conn.close()
    print(get_json(admin, "/pools"))
    a.close()
    b.close()
