"""The ``postgres_server`` fixture itself: a real server, a clean restart and a crash."""

from __future__ import annotations

import os

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from tests.pgserver import PostgresServer


async def test_select_one_over_the_unix_socket(postgres_server: PostgresServer) -> None:
    assert postgres_server.dsn == (
        f"postgresql://poller@/poller?host={postgres_server.socket_dir}&port={postgres_server.port}"
    )
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_user") == "poller"
        assert await conn.fetchval("SELECT current_database()") == "poller"
        assert await conn.fetchval("SHOW listen_addresses") == ""
        assert await conn.fetchval("SHOW server_encoding") == "UTF8"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = 'poller'")
    finally:
        await conn.close()
    if os.geteuid() == 0:  # PostgreSQL will not run as root: it runs as nobody
        assert os.stat(postgres_server.data_dir).st_uid != 0


async def test_data_survives_stop_and_start(postgres_server: PostgresServer) -> None:
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        await conn.execute("CREATE TABLE t (n int)")
        await conn.execute("INSERT INTO t VALUES (1), (2)")
    finally:
        await conn.close()

    postgres_server.stop()
    assert postgres_server.pid is None
    postgres_server.start()

    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        assert await conn.fetchval("SELECT sum(n) FROM t") == 3
    finally:
        await conn.close()


async def test_kill_is_a_crash_and_start_recovers_committed_data(
    postgres_server: PostgresServer,
) -> None:
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        await conn.execute("CREATE TABLE t (n int)")
        await conn.execute("INSERT INTO t VALUES (1)")  # committed
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO t VALUES (100)")  # never committed

        postgres_server.kill()

        # asyncpg 0.32: ConnectionDoesNotExistError ("connection was closed in the middle of
        # operation"), a PostgresConnectionError.
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
            await conn.fetchval("SELECT 1")
    finally:
        await conn.close(timeout=5)

    postgres_server.start()

    assert "automatic recovery in progress" in postgres_server.log()
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        assert await conn.fetch("SELECT n FROM t") == [(1,)]
    finally:
        await conn.close()
