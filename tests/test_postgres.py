"""The PostgreSQL sink against a real server (the ``postgres_server`` fixture): ``poller db init``
and the schema's versions, upserts that never move back, changes that a retry never doubles,
app-wide targets, sweeps marked complete only by a flush, and a connection or server lost in the
middle of a run (nothing lost, nothing doubled), ``poller once``, and a ``poller run`` daemon
under which PostgreSQL goes down and which is killed during a write. The write rate of 100,000
presence records is printed (run with ``-s``), not asserted."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from poller.apps.cli import main
from poller.apps.metrics import Metrics
from poller.config import SinkConfig, parse_config, render_toml
from poller.core.apis import APP_ONLINE_API, LEGACY_API
from poller.core.errors import ConfigError
from poller.core.records import (
    ChangeRecord,
    PresenceRecord,
    Record,
    Target,
    change_record,
    error_record,
    presence_record,
)
from poller.emulator.process import EmulatorProcess
from poller.engine import postgres as pg
from poller.engine.pgschema import LATEST_VERSION, migrate
from poller.engine.postgres import PostgresSink, init_schema
from poller.engine.sinks import TypedSink, metered_sinks, sinks_from_config
from tests.conftest import FakeClock
from tests.daemons import DaemonProcess, Flips, base_config, target, wait_until
from tests.pgserver import PostgresServer

pytestmark = pytest.mark.slow

T0 = 1_700_000_000_000  # epoch ms of sweep 1
GROUP = Target("app", "g1")
APP_WIDE = Target("app", api=APP_ONLINE_API)


# -- helpers ------------------------------------------------------------------------------------


def sink_config(server: PostgresServer, **changes: Any) -> SinkConfig:
    return SinkConfig(kind="postgres", dsn=server.dsn, **changes)


async def ready(server: PostgresServer, **changes: Any) -> PostgresSink:
    """A sink on a freshly initialised schema."""
    config = sink_config(server, **changes)
    await init_schema(config)
    return PostgresSink(config)


def presence(
    uid: str, online: bool, sweep: int, *, target: Target = GROUP, at: int | None = None
) -> PresenceRecord:
    polled = T0 + sweep * 30_000 if at is None else at
    join = polled - 5_000 if online else None
    return presence_record(
        target, uid, online, join, sweep=sweep, polled_at=polled, request_id=f"r{sweep}"
    )


def change(record: PresenceRecord, previous: bool | None, version: int) -> ChangeRecord:
    return change_record(record, previous, version)


async def connect(server: PostgresServer) -> Any:
    return await asyncpg.connect(server.dsn)


async def rows(server: PostgresServer, query: str, *args: Any) -> list[dict[str, Any]]:
    conn = await connect(server)
    try:
        return [dict(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def presence_rows(server: PostgresServer) -> dict[tuple[str, str], dict[str, Any]]:
    found = await rows(server, "SELECT * FROM poller.presence")
    return {(r["group_id"], r["uid"]): r for r in found}


async def change_keys(server: PostgresServer) -> list[tuple[str, str, int]]:
    found = await rows(server, "SELECT group_id, uid, version FROM poller.changes ORDER BY 1, 2, 3")
    return [(r["group_id"], r["uid"], r["version"]) for r in found]


async def sweeps(server: PostgresServer) -> dict[int, dict[str, Any]]:
    return {r["sweep"]: r for r in await rows(server, "SELECT * FROM poller.sweeps")}


@pytest.fixture
async def closing() -> AsyncIterator[list[PostgresSink]]:
    """Sinks appended here are closed at the end of the test."""
    opened: list[PostgresSink] = []
    yield opened
    for sink in opened:
        await sink.aclose()


def flips(uids: int, sweeps: int) -> list[list[Record]]:
    """Per sweep: every UID's presence, and a change for each UID whose state flipped (UID i is
    online in sweep s when (i + s) % 3 == 0), versions counted from the first state (0)."""
    out: list[list[Record]] = []
    versions = [0] * uids
    for s in range(1, sweeps + 1):
        records: list[Record] = []
        for i in range(uids):
            now = presence(f"u{i}", (i + s) % 3 == 0, s)
            records.append(now)
            if s > 1 and ((i + s - 1) % 3 == 0) != now["online"]:
                versions[i] += 1
                records.append(change(now, not now["online"], versions[i]))
        out.append(records)
    return out


# -- config -------------------------------------------------------------------------------------


def test_config_keys_defaults_and_masked_dsn() -> None:
    config = parse_config(
        {
            "sinks": [
                {
                    "kind": "postgres",
                    "dsn": "postgresql://poller:s3cret@db.internal:5432/app?sslmode=require"
                    "&password=other",
                },
                {"kind": "file", "path": "/tmp/x.jsonl"},
            ]
        }
    )
    sink = config.sinks[0]
    assert (sink.schema, sink.batch_rows, sink.retain_days) == ("poller", 5000, 0)
    assert sink.default_types("changes") == ("presence", "change", "error")
    text = render_toml(config)
    assert "s3cret" not in text and "other" not in text
    assert 'dsn = "postgresql://poller:****@db.internal:5432/app?sslmode=require"' in text
    file_entry = text.split("[[sinks]]")[2]
    assert "schema" not in file_entry and "dsn" not in file_entry  # postgres keys: postgres only
    socket_dsn = "postgresql://poller@/poller?host=/run/postgresql&port=5432"
    shown = render_toml(parse_config({"sinks": [{"kind": "postgres", "dsn": socket_dsn}]}))
    assert f'dsn = "{socket_dsn}"' in shown  # no password: user, socket and db shown whole


@pytest.mark.parametrize(
    ("entry", "key", "words"),
    [
        ({"kind": "postgres"}, "sinks[0].dsn", "dsn or dsn_env"),
        ({"kind": "postgres", "dsn": "host=db password=x"}, "sinks[0].dsn", "postgresql://"),
        ({"kind": "postgres", "dsn": "postgres://h/d", "dsn_env": "X"}, "sinks[0].dsn_env", "not"),
        ({"kind": "postgres", "dsn_env": "X", "schema": "Poller"}, "sinks[0].schema", "lower"),
        ({"kind": "postgres", "dsn_env": "X", "batch_rows": 0}, "sinks[0].batch_rows", "between"),
        ({"kind": "postgres", "dsn_env": "X", "retain_days": -1}, "sinks[0].retain_days", ">="),
    ],
)
def test_config_errors(entry: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"sinks": [entry]})
    assert caught.value.key == key and words in caught.value.detail
    assert "password=x" not in str(caught.value)


def test_sinks_from_config_gives_every_type_and_reads_dsn_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = SinkConfig(kind="postgres", dsn_env="TEST_PG_DSN")
    with pytest.raises(ConfigError, match="TEST_PG_DSN is not set"):
        sinks_from_config([config], emit="changes")
    monkeypatch.setenv("TEST_PG_DSN", "postgresql://u:pw@h/db")
    (sink,) = sinks_from_config([config], emit="changes")
    assert isinstance(sink, PostgresSink) and not isinstance(sink, TypedSink)
    assert sink.name == "postgresql://u:****@h/db schema poller"
    typed = sinks_from_config(
        [SinkConfig(kind="postgres", dsn="postgres://h/d", types=("change",))]
    )
    assert isinstance(typed[0], TypedSink) and typed[0].types == {"change"}


def test_the_daemon_metrics_show_a_postgres_sink_without_its_password() -> None:
    sinks = sinks_from_config(
        [
            SinkConfig(
                kind="postgres", dsn="postgresql://u:s3cret@db.internal/app", types=("change",)
            )
        ]
    )
    metrics = Metrics()
    metrics.watch_sinks(lambda: metered_sinks(sinks))
    text = metrics.render().decode()
    label = 'sink="postgresql://u:****@db.internal/app schema poller"'
    assert f"poller_postgres_pending_records{{{label}}} 0.0" in text
    assert f"poller_postgres_written_records_total{{{label}}} 0.0" in text
    assert "s3cret" not in text


# -- the schema ---------------------------------------------------------------------------------


async def test_db_init_creates_the_schema_and_is_idempotent(postgres_server: PostgresServer):
    config = sink_config(postgres_server)
    assert await init_schema(config) == (0, LATEST_VERSION)
    assert await init_schema(config) == (LATEST_VERSION, LATEST_VERSION)
    versions = await rows(postgres_server, "SELECT version FROM poller.schema_version")
    assert [r["version"] for r in versions] == list(range(1, LATEST_VERSION + 1))
    tables = await rows(
        postgres_server,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'poller'",
    )
    assert {r["table_name"] for r in tables} == {"schema_version", "presence", "changes", "sweeps"}


def test_db_init_command(
    postgres_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "poller.toml"
    path.write_text(
        f'[[sinks]]\nkind = "postgres"\ndsn = "{postgres_server.dsn}"\nschema = "presence"\n'
        '\n[[sinks]]\nkind = "stdout"\n'
    )
    assert main(["db", "init", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sinks[0] postgresql://poller@/poller?host=")
    assert out.endswith(f"schema presence: created (version {LATEST_VERSION})\n")
    assert main(["db", "init", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"schema presence: already at version {LATEST_VERSION}" in out
    path.write_text('[[sinks]]\nkind = "stdout"\n')
    assert main(["db", "init", "--config", str(path)]) == 78
    assert 'no [[sinks]] entry with kind = "postgres"' in capsys.readouterr().err


def test_db_init_command_server_down(
    postgres_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "poller.toml"
    path.write_text(f'[[sinks]]\nkind = "postgres"\ndsn = "{postgres_server.dsn}"\n')
    postgres_server.stop()
    assert main(["db", "init", "--config", str(path)]) == 69
    assert "cannot connect to PostgreSQL postgresql://poller@/poller" in capsys.readouterr().err


async def test_an_older_schema_is_refused_then_migrated(
    postgres_server: PostgresServer, closing: list[PostgresSink]
) -> None:
    conn = await connect(postgres_server)
    try:
        assert await migrate(conn, "poller", target=1) == (0, 1)
    finally:
        await conn.close()
    config = sink_config(postgres_server)
    sink = PostgresSink(config)
    closing.append(sink)
    with pytest.raises(ConfigError) as caught:
        await sink.write([presence("u1", True, 1)])
        await sink.flush()
    message = str(caught.value)
    assert "at version 1" in message and "poller db init --config FILE" in message
    assert await init_schema(config) == (1, LATEST_VERSION)
    indexes = await rows(
        postgres_server, "SELECT indexname FROM pg_indexes WHERE schemaname = 'poller'"
    )
    assert {"changes_polled_at", "changes_sweep", "presence_online"} <= {
        r["indexname"] for r in indexes
    }
    sink = PostgresSink(config)
    closing.append(sink)
    await sink.write([presence("u1", True, 1)])
    await sink.flush()
    assert (await presence_rows(postgres_server))[("g1", "u1")]["online"] is True


async def test_a_missing_or_newer_schema_is_refused(
    postgres_server: PostgresServer, closing: list[PostgresSink]
) -> None:
    config = sink_config(postgres_server)
    sink = PostgresSink(config)
    closing.append(sink)
    with pytest.raises(ConfigError) as caught:
        await sink.write([presence("u1", True, 1)])
        await sink.flush()
    assert "no poller tables" in str(caught.value)
    assert "poller db init --config FILE" in str(caught.value)
    with pytest.raises(ConfigError):  # refused for good: no new connection attempts
        await sink.flush()
    await init_schema(config)
    conn = await connect(postgres_server)
    try:
        await conn.execute("INSERT INTO poller.schema_version VALUES (99, 'from the future')")
    finally:
        await conn.close()
    newer = PostgresSink(config)
    closing.append(newer)
    with pytest.raises(ConfigError) as caught:
        await newer.write([presence("u1", True, 1)])
        await newer.flush()
    assert "version 99, newer than this poller knows" in str(caught.value)
    assert "poller db init --config FILE" in str(caught.value)
    with pytest.raises(ConfigError, match="newer than this poller knows"):
        await init_schema(config)


# -- what the tables hold -----------------------------------------------------------------------


async def test_presence_is_the_last_state_and_never_moves_back(
    postgres_server: PostgresServer, closing: list[PostgresSink]
) -> None:
    sink = await ready(postgres_server, batch_rows=7)  # batches end inside sweeps
    closing.append(sink)
    history = flips(uids=20, sweeps=4)
    for records in history:
        for i in range(0, len(records), 3):  # the daemon writes a few records at a time
            await sink.write(records[i : i + 3])
        await sink.flush()
    table = await presence_rows(postgres_server)
    assert len(table) == 20
    last_version = {r["uid"]: r["version"] for rs in history for r in rs if r["type"] == "change"}
    for i in range(20):
        row = table[("g1", f"u{i}")]
        assert row["online"] is ((i + 4) % 3 == 0)
        assert row["sweep"] == 4
        assert row["polled_at"].timestamp() * 1000 == T0 + 4 * 30_000
        assert (row["join_time"] is None) is not row["online"]
        assert row["version"] == last_version[f"u{i}"] == 2  # each UID flipped twice
    # An old record written late (sweep 2's state of u0) does not bring back an old state.
    await sink.write([presence("u0", True, 2), presence("u-new", False, 2)])
    await sink.flush()
    table = await presence_rows(postgres_server)
    assert table[("g1", "u0")]["sweep"] == 4 and table[("g1", "u0")]["online"] is False
    assert table[("g1", "u-new")]["version"] == 0
    # Within one batch too: the newest poll of a UID wins, whatever the order.
    await sink.write([presence("u1", True, 6), presence("u1", False, 5)])
    await sink.flush()
    assert (await presence_rows(postgres_server))[("g1", "u1")]["sweep"] == 6


async def test_changes_are_unique_when_a_batch_is_written_again(
    postgres_server: PostgresServer, closing: list[PostgresSink]
) -> None:
    sink = await ready(postgres_server)
    closing.append(sink)
    history = flips(uids=30, sweeps=3)
    for records in history:
        await sink.write(records)
        await sink.flush()
    before = await change_keys(postgres_server)
    assert len(before) == len(set(before)) == 40  # 20 flips in sweep 2, 20 in sweep 3
    for records in history:  # a retry, or changes re-emitted after a crash: same versions
        await sink.write(records)
        await sink.flush()
    assert await change_keys(postgres_server) == before
    assert sink.counters()["duplicate_changes"] == 40
    # A re-emitted change that was decided again (another poll time) keeps its first row.
    again = change(presence("u1", False, 9), True, 1)
    await sink.write([again])
    await sink.flush()
    rows_u1 = await rows(
        postgres_server, "SELECT sweep FROM poller.changes WHERE uid = 'u1' AND version = 1"
    )
    assert [r["sweep"] for r in rows_u1] == [2]


async def test_app_wide_targets_have_an_empty_group(
    postgres_server: PostgresServer, closing: list[PostgresSink]
) -> None:
    sink = await ready(postgres_server)
    closing.append(sink)
    first = presence("u1", False, 1, target=APP_WIDE)
    now = presence("u1", True, 2, target=APP_WIDE)
    grouped = presence("u1", False, 2)  # the same UID in a group of the same app: another row
    await sink.write([first, grouped])
    await sink.flush()
    await sink.write([now, change(now, False, 1)])
    await sink.flush()
    found = await rows(
        postgres_server, "SELECT api, app_id, group_id, uid, online, version FROM poller.presence"
    )
    assert sorted(tuple(r.values()) for r in found) == [
        (LEGACY_API, "app", "g1", "u1", False, 0),
        (APP_ONLINE_API, "app", "", "u1", True, 1),
    ]
    changes = await rows(
        postgres_server, "SELECT api, group_id, previous_online FROM poller.changes"
    )
    assert changes == [{"api": APP_ONLINE_API, "group_id": "", "previous_online": False}]


async def test_sweeps_are_complete_only_after_their_flush(
    postgres_server: PostgresServer, closing: list[PostgresSink]
) -> None:
    sink = await ready(postgres_server, batch_rows=4)
    closing.append(sink)
    await sink.write([presence(f"u{i}", True, 1) for i in range(6)])
    table = await sweeps(postgres_server)  # one batch of 4 went in; the sweep is not over
    assert table[1]["completed_at"] is None and table[1]["presence_records"] == 4
    error = error_record(GROUP, "u9", "MissingInResponse", "", sweep=1, polled_at=T0)
    await sink.write([change(presence("u0", True, 1), False, 1), error])
    row = (await sweeps(postgres_server))[1]  # a second whole batch: still not over
    assert row["completed_at"] is None
    assert (row["presence_records"], row["change_records"], row["error_records"]) == (6, 1, 1)
    await sink.flush()  # nothing left to write: the flush only marks the sweep complete
    row = (await sweeps(postgres_server))[1]
    assert row["completed_at"] is not None
    assert (row["presence_records"], row["change_records"], row["error_records"]) == (6, 1, 1)
    assert row["started_at"].timestamp() * 1000 == T0  # the earliest poll of the sweep
    # A daemon killed during sweep 2 leaves it incomplete ...
    await sink.write([presence(f"u{i}", False, 2) for i in range(5)])
    assert (await sweeps(postgres_server))[2]["completed_at"] is None
    await sink._disconnect(abort=True)  # the kill: the last record never written
    sink._closed = True
    # ... and when it polls sweep 2 again after its restart the row starts over.
    restarted = PostgresSink(sink_config(postgres_server, batch_rows=4))
    closing.append(restarted)
    await restarted.write([presence(f"u{i}", False, 2) for i in range(3)])
    row = (await sweeps(postgres_server))[2]
    assert row["completed_at"] is None and row["presence_records"] == 4  # 3 < one batch
    await restarted.flush()
    row = (await sweeps(postgres_server))[2]
    assert row["completed_at"] is not None and row["presence_records"] == 3


async def test_retention_deletes_old_history_at_most_hourly(
    postgres_server: PostgresServer, closing: list[PostgresSink], fake_clock: FakeClock
) -> None:
    config = sink_config(postgres_server, retain_days=2)
    await init_schema(config)
    sink = PostgresSink(config, clock=fake_clock)
    closing.append(sink)
    now_ms = int(time.time() * 1000)
    old_ms = now_ms - 3 * 86_400_000

    def history(sweep: int, at: int) -> list[Record]:
        p = presence(f"u{sweep}", True, sweep, at=at)
        return [p, change(p, False, 1)]

    await sink.write(history(1, old_ms))
    await sink.write(history(2, now_ms))
    await sink.flush()
    assert sink._retention is not None
    await sink._retention
    assert await change_keys(postgres_server) == [("g1", "u2", 1)]
    assert set(await sweeps(postgres_server)) == {2}
    assert sink.counters()["retention_deleted_rows"] == 2  # a change and a sweep
    await sink.write(history(3, old_ms))
    await sink.flush()  # within the hour: kept
    assert not sink._retention or sink._retention.done()
    await asyncio.sleep(0.1)
    assert len(await change_keys(postgres_server)) == 2
    fake_clock.now += pg.RETENTION_EVERY_S
    await sink.write(history(4, now_ms))
    await sink.flush()
    assert sink._retention is not None
    await sink._retention
    assert await change_keys(postgres_server) == [("g1", "u2", 1), ("g1", "u4", 1)]


# -- lost connections ---------------------------------------------------------------------------


async def _backends(server: PostgresServer, application: str = "poller") -> list[int]:
    found = await rows(
        server, "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application
    )
    return [r["pid"] for r in found]


async def test_a_connection_killed_mid_batch_loses_and_doubles_nothing(
    postgres_server: PostgresServer,
    closing: list[PostgresSink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="poller.sinks")
    sink = await ready(postgres_server, batch_rows=50)
    closing.append(sink)
    history = flips(uids=40, sweeps=3)
    await sink.write(history[0])
    await sink.flush()
    # Another session holds a lock on presence: the sink's next batch stops after its COPY,
    # inside its transaction; then its backend is terminated, then the lock is released.
    blocker = await connect(postgres_server)
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE poller.presence IN ACCESS EXCLUSIVE MODE")
        writing = asyncio.create_task(sink.write(history[1]))
        for _ in range(200):
            waiting = await blocker.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'poller'"
                " AND wait_event_type = 'Lock'"
            )
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert waiting, "the sink's batch never waited on the lock"
        assert not writing.done()
        assert await blocker.fetchval("SELECT pg_terminate_backend($1)", waiting[0]["pid"])
        await lock.rollback()
    finally:
        await blocker.close()
    await asyncio.wait_for(writing, 30)
    await sink.flush()
    await sink.write(history[2])
    await sink.flush()
    counters = sink.counters()
    assert counters["reconnects"] == 1 and counters["errors"] >= 1
    assert counters["pending_records"] == 0 and counters["lost_records"] == 0
    table = await presence_rows(postgres_server)
    assert {uid: r["online"] for (_, uid), r in table.items()} == {
        f"u{i}": (i + 3) % 3 == 0 for i in range(40)
    }
    keys = await change_keys(postgres_server)
    expected = sorted(
        (r["group_id"] or "", r["uid"], r["version"])
        for records in history
        for r in records
        if r["type"] == "change"
    )
    assert keys == expected
    counts = await sweeps(postgres_server)
    assert [counts[s]["presence_records"] for s in (1, 2, 3)] == [40, 40, 40]
    assert all(counts[s]["completed_at"] is not None for s in (1, 2, 3))
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot write" in m for m in messages), messages
    assert any("writing again after" in m for m in messages), messages


async def test_a_batch_whose_commit_was_cut_off_is_not_counted_twice(
    postgres_server: PostgresServer,
    closing: list[PostgresSink],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = await ready(postgres_server)
    closing.append(sink)
    real = sink._transaction
    calls = 0

    async def commit_then_lose(*args: Any) -> None:
        nonlocal calls
        calls += 1
        await real(*args)
        if calls == 1:  # committed, but the answer never arrived
            raise ConnectionResetError("connection lost at COMMIT")

    monkeypatch.setattr(sink, "_transaction", commit_then_lose)
    history = flips(uids=10, sweeps=2)
    await sink.write(history[0])
    await sink.flush()
    assert calls == 1  # the retry found the batch in and did not write it again
    await sink.write(history[1])
    await sink.flush()
    counts = await sweeps(postgres_server)
    assert (counts[1]["presence_records"], counts[2]["presence_records"]) == (10, 10)
    assert counts[1]["completed_at"] is not None
    assert sink.counters()["batches"] == 2


async def test_the_server_killed_and_restarted_mid_run(
    postgres_server: PostgresServer,
    closing: list[PostgresSink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="poller.sinks")
    sink = await ready(postgres_server, batch_rows=25)
    closing.append(sink)
    history = flips(uids=60, sweeps=3)
    await sink.write(history[0])
    await sink.flush()
    postgres_server.kill()  # a crash: SIGKILL of the postmaster

    async def sweep_two() -> None:
        for i in range(0, len(history[1]), 10):
            await sink.write(history[1][i : i + 10])
        await sink.flush()

    writing = asyncio.create_task(sweep_two())
    await asyncio.sleep(1.5)
    assert not writing.done()  # backpressure: the writer waits for the database
    counters = sink.counters()
    assert counters["connected"] == 0 and counters["errors"] >= 1
    assert counters["pending_records"] <= 25 + 10  # bounded by batch_rows (+ one write)
    await asyncio.to_thread(postgres_server.start)  # crash recovery
    await asyncio.wait_for(writing, 60)
    await sink.write(history[2])
    await sink.flush()
    table = await presence_rows(postgres_server)
    assert {uid: r["online"] for (_, uid), r in table.items()} == {
        f"u{i}": (i + 3) % 3 == 0 for i in range(60)
    }
    keys = await change_keys(postgres_server)
    assert len(keys) == len(set(keys)) == 80
    counts = await sweeps(postgres_server)
    assert [counts[s]["presence_records"] for s in (1, 2, 3)] == [60, 60, 60]
    assert sink.counters()["reconnects"] == 1 and sink.counters()["lost_records"] == 0
    assert any("writing again after" in r.getMessage() for r in caplog.records)


async def test_aclose_gives_up_on_a_database_that_stays_down(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg, "CLOSE_TIMEOUT_S", 1.0)
    sink = await ready(postgres_server)
    await sink.write([presence("u1", True, 1)])
    await sink.flush()
    await sink.write([presence("u1", False, 2)])
    postgres_server.stop()
    await asyncio.wait_for(sink.aclose(), 10)
    assert sink.counters()["lost_records"] == 1


# -- the write rate -----------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_write_rate_of_100000_presence_records(
    postgres_server: PostgresServer, closing: list[PostgresSink]
) -> None:
    """Printed, not asserted: rows/s and the CPU of poller and of the server's backend."""
    sink = await ready(postgres_server)
    closing.append(sink)
    uids = 100_000
    for sweep in (1, 2):  # the first inserts every row, the second updates every row
        records: Sequence[Record] = [
            presence(f"user-{i:06d}", (i + sweep) % 3 == 0, sweep) for i in range(uids)
        ]
        conn = await sink._connection()
        started = time.perf_counter()
        client = time.process_time()
        backend = _cpu_seconds(conn.get_server_pid())
        for i in range(0, uids, 20):  # 20 per answer, as the API gives them
            await sink.write(records[i : i + 20])
        await sink.flush()
        wall = time.perf_counter() - started
        client = time.process_time() - client
        backend = _cpu_seconds(conn.get_server_pid()) - backend
        print(
            f"\npostgres sink, sweep {sweep} ({'insert' if sweep == 1 else 'update'}): "
            f"{uids} presence records in {wall:.2f} s = {uids / wall:,.0f} rows/s; "
            f"poller CPU {client:.2f} s ({client / wall:.0%} of a core), "
            f"server backend CPU {backend:.2f} s"
        )
    table = await rows(postgres_server, "SELECT count(*) AS n FROM poller.presence")
    assert table[0]["n"] == uids


# -- poller once and the daemon -----------------------------------------------------------------


class ThreadedDb:
    """One asyncpg connection on an event loop of its own thread, for tests that block."""

    def __init__(self, dsn: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.conn = self.run(asyncpg.connect(dsn))

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in self.run(self.conn.fetch(query, *args))]

    def close(self) -> None:
        self.run(self.conn.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def test_poller_once_writes_presence_and_a_complete_sweep(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    uids = [f"user-{i:06d}" for i in range(1, 121)]
    with EmulatorProcess("--group", "demo-app/g:120") as emu:
        config = tmp_path / "once.toml"
        config.write_text(
            emu.config_toml()
            + f'\n[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
            + f'\n[[sinks]]\nkind = "postgres"\ndsn = "{postgres_server.dsn}"\nbatch_rows = 50\n'
        )

        def once() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    *(sys.executable, "-m", "poller", "once", "--config", str(config)),
                    *("--target", "demo-app/g", "--uids", ",".join(uids), "-q"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )

        refused = once()  # no tables yet
        assert refused.returncode == 78, refused.stderr
        assert "poller db init --config FILE" in refused.stderr
        assert "Traceback" not in refused.stderr
        asyncio.run(init_schema(sink_config(postgres_server)))
        result = once()
        members = emu.members("demo-app", "g")["members"]
    assert result.returncode == 0, result.stderr
    table = asyncio.run(presence_rows(postgres_server))
    online = {m["user_id"]: m["online"] for m in members}
    assert {uid: r["online"] for (_, uid), r in table.items()} == online
    (row,) = asyncio.run(sweeps(postgres_server)).values()
    assert row["completed_at"] is not None and row["presence_records"] == 120


def test_daemon_killed_during_a_write_and_postgres_restarted(
    postgres_server: PostgresServer,
    tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """The acceptance run: flips at the emulator, PostgreSQL restarted under the daemon, the
    daemon SIGKILLed while a batch waits inside its transaction, then restarted: ``presence``
    equals the emulator's state, ``changes`` holds each flip once, and every sweep marked
    complete has every UID's record."""
    app, group = "demo-app", "static"
    uids = [f"vip-{i}" for i in range(8)]
    asyncio.run(init_schema(sink_config(postgres_server)))
    db: ThreadedDb | None = None
    try:
        with EmulatorProcess("--group", "demo-app/other:1") as emu:
            emu.change_members(app, group, join=uids)
            config = (
                base_config(emu, emit="changes")  # the postgres sink gets presence anyway
                + target(app, group, uids=uids)
                + f'\n[[sinks]]\nkind = "postgres"\ndsn = "{postgres_server.dsn}"\n'
                + "batch_rows = 3\n"  # several transactions per sweep
            )
            flip = Flips(emu, app, group)
            daemon = daemons(tmp_path / "d", config)
            daemon.sweeps_done(2)
            flip("vip-0", False)
            daemon.sweeps_done(daemon.sweep_count() + 3)
            postgres_server.stop()  # under the running daemon, which waits for it

            def sink_events() -> list[str]:
                return [e["event"] for e in daemon.logs() if e["logger"] == "poller.sinks"]

            wait_until(lambda: any("cannot write" in e for e in sink_events()), "a warning")
            stalled = daemon.sweep_count()
            time.sleep(1.5)
            assert daemon.sweep_count() <= stalled + 1  # polling held
            postgres_server.start()
            flip("vip-1", False)
            daemon.sweeps_done(daemon.sweep_count() + 3)
            assert any("writing again after" in e for e in sink_events()), sink_events()
            # A batch waits inside its transaction (a lock held here), and the daemon is killed.
            db = ThreadedDb(postgres_server.dsn)
            flip("vip-0", True)
            db.run(db.conn.execute("BEGIN; LOCK TABLE poller.presence IN ACCESS EXCLUSIVE MODE"))
            wait_until(
                lambda: db.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'poller'"
                    " AND wait_event_type = 'Lock'"
                ),
                "a batch waiting on the lock",
            )
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait(10)
            db.run(db.conn.execute("ROLLBACK"))
            for row in db.fetch("SELECT * FROM poller.sweeps WHERE completed_at IS NOT NULL"):
                assert row["presence_records"] == len(uids), row  # none complete that is not
            again = daemons(tmp_path / "d", config)  # the same state_dir
            again.sweeps_done(2)
            flip("vip-2", False)
            again.sweeps_done(again.sweep_count() + 3)
            assert again.stop() == 0
            members = emu.members(app, group)["members"]
        presence_now = {
            r["uid"]: r["online"]
            for r in db.fetch("SELECT uid, online FROM poller.presence WHERE group_id = $1", group)
        }
        assert presence_now == {m["user_id"]: m["online"] for m in members}
        changes = db.fetch("SELECT uid, online, version FROM poller.changes ORDER BY uid, version")
        assert sorted((r["uid"], r["online"]) for r in changes) == sorted(flip.made)
        for row in db.fetch("SELECT * FROM poller.sweeps"):
            assert row["completed_at"] is not None, row  # the killed sweep was polled again
            assert row["presence_records"] + row["error_records"] == len(uids), row
    finally:
        if db is not None:
            db.close()
