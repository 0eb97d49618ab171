"""The PostgreSQL sink: who is online now (``presence``) and the history (``changes``), by asyncpg.

The tables, their keys (``group_id`` is ``''`` for an app-wide target) and their versioned
migrations are described in :mod:`poller.engine.pgschema`; ``poller db init --config FILE``
creates or migrates them. The sink connects at its first ``write`` (or ``open()``) and checks the
schema's version at every connect: it refuses (:class:`ConfigError`, naming that command, and
for good) a schema that is missing, older or newer than the one it writes.

Writes. ``write`` gathers records; every ``batch_rows`` of them, and at ``flush`` (the end of a
sweep) the rest, go in one transaction: the batch's presence and change records are copied
(``COPY``, binary) into temporary staging tables, then one ``INSERT ... SELECT ... ON CONFLICT``
per table merges them -- presence rows move forward only, changes are inserted unless already
there -- and the batch's per-sweep counts go to ``sweeps``. The flush's transaction also marks
the sweeps written since the previous flush complete: a sweep cut short by a crash never is.
(Measured against ``executemany`` and an ``unnest`` of arrays: ``COPY`` was the fastest and costs
the least client CPU; see the tests.)

Records leave the sink's buffer only once their batch committed. When the connection is lost
(or cannot be made), ``write``/``flush`` retry the batch, reconnecting with exponential backoff and
full jitter (at most :data:`BACKOFF_CAP_S` between attempts), logging a WARNING at the first
failure, every :data:`STILL_DOWN_WARN_S` while it lasts and when writing works again. Meanwhile
they do not return: polling waits (the bounded queue in front of the sinks), so memory stays
bounded by ``batch_rows`` and nothing is lost; the daemon saves its state only after a flush, so
a daemon stopped or killed while the database is down decides those records again after its
restart. A batch whose commit was cut off is recognised on the retry (its id is in ``sweeps``)
and not written twice; presence and change rows are idempotent anyway.

A batch the database refuses for its data (SQLSTATE classes 22, 23, 54) is dropped, logged and
counted (``lost_records``); any other refusal (a permission, a table dropped) raises
:class:`SinkError`. With ``retain_days``, ``changes`` and ``sweeps`` rows older than that are
deleted at most once an hour, by a background task on a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import asyncpg  # type: ignore[import-untyped]

from poller.config import SinkConfig, env_secret
from poller.config.model import mask_dsn
from poller.core.clock import Clock, system_clock
from poller.core.errors import ConfigError, SinkError
from poller.core.records import Record

from .pgschema import LATEST_VERSION, check_version, migrate, quote_ident, schema_version

__all__ = ["PostgresSink", "PostgresStats", "init_schema", "postgres_dsn"]

log = logging.getLogger("poller.sinks")

BACKOFF_BASE_S: Final = 0.25
BACKOFF_CAP_S: Final = 15.0
CONNECT_TIMEOUT_S: Final = 10.0
#: One batch's transaction (or one connect and schema check) taking longer counts as a lost
#: connection: it is cut off and retried.
BATCH_TIMEOUT_S: Final = 120.0
#: While the database stays unreachable, a WARNING this often.
STILL_DOWN_WARN_S: Final = 60.0
#: ``aclose`` writes what is left for up to this long.
CLOSE_TIMEOUT_S: Final = 10.0
RETENTION_EVERY_S: Final = 3600.0
#: Rows deleted per statement by the retention task (short transactions).
RETENTION_CHUNK: Final = 20_000
#: Sweep numbers remembered as already begun (see ``_seen``).
SEEN_SWEEPS: Final = 1024

_APPLICATION_NAME: Final = "poller"
_STAGE_PRESENCE: Final = "poller_stage_presence"
_STAGE_CHANGES: Final = "poller_stage_changes"


def _ts(column: str) -> str:
    """SQL turning epoch milliseconds into a ``timestamptz`` (NULL stays NULL)."""
    return f"'epoch'::timestamptz + {column} * interval '1 millisecond'"


_STAGING: Final = (
    f"""CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE_PRESENCE} (
        api text, app_id text, group_id text, uid text, online boolean, join_time bigint,
        polled_at bigint, sweep bigint, version bigint
    ) ON COMMIT DELETE ROWS""",
    f"""CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE_CHANGES} (
        api text, app_id text, group_id text, uid text, version bigint, online boolean,
        previous_online boolean, join_time bigint, polled_at bigint, sweep bigint
    ) ON COMMIT DELETE ROWS""",
)


@dataclass(frozen=True, slots=True)
class _Sql:
    """The statements of one schema."""

    merge_presence: str
    insert_changes: str
    begin_sweep: str
    add_to_sweep: str
    complete_sweeps: str
    batch_went_in: str
    prune_changes: str
    prune_sweeps: str

    @classmethod
    def of(cls, schema: str) -> _Sql:
        s = quote_ident(schema)
        sweep_insert = f"""INSERT INTO {s}.sweeps AS w
            (sweep, started_at, presence_records, change_records, error_records, batch)
            VALUES ($1, {_ts("$2::bigint")}, $3, $4, $5, $6)
            ON CONFLICT (sweep) DO UPDATE SET """
        return cls(
            merge_presence=f"""INSERT INTO {s}.presence AS p
                (api, app_id, group_id, uid, online, join_time, polled_at, sweep, version)
                SELECT api, app_id, group_id, uid, online, {_ts("join_time")},
                    {_ts("polled_at")}, sweep, version
                FROM {_STAGE_PRESENCE}
                ON CONFLICT (api, app_id, group_id, uid) DO UPDATE SET
                    online = EXCLUDED.online, join_time = EXCLUDED.join_time,
                    polled_at = EXCLUDED.polled_at, sweep = EXCLUDED.sweep,
                    version = CASE WHEN EXCLUDED.version = 0 THEN p.version
                        ELSE EXCLUDED.version END
                WHERE EXCLUDED.polled_at > p.polled_at
                    OR (EXCLUDED.polled_at = p.polled_at AND EXCLUDED.version <> 0
                        AND EXCLUDED.version <> p.version)""",
            insert_changes=f"""INSERT INTO {s}.changes (api, app_id, group_id, uid, version,
                    online, previous_online, join_time, polled_at, sweep)
                SELECT api, app_id, group_id, uid, version, online, previous_online,
                    {_ts("join_time")}, {_ts("polled_at")}, sweep
                FROM {_STAGE_CHANGES}
                ON CONFLICT DO NOTHING""",
            # The first batch of a sweep in this process starts its row over (a sweep that a
            # restarted daemon polls again); later ones add to it.
            begin_sweep=sweep_insert
            + """started_at = EXCLUDED.started_at, completed_at = NULL,
                presence_records = EXCLUDED.presence_records,
                change_records = EXCLUDED.change_records,
                error_records = EXCLUDED.error_records, batch = EXCLUDED.batch""",
            add_to_sweep=sweep_insert
            + """started_at = least(w.started_at, EXCLUDED.started_at), completed_at = NULL,
                presence_records = w.presence_records + EXCLUDED.presence_records,
                change_records = w.change_records + EXCLUDED.change_records,
                error_records = w.error_records + EXCLUDED.error_records,
                batch = EXCLUDED.batch""",
            complete_sweeps=f"""UPDATE {s}.sweeps SET completed_at = to_timestamp($2)
                WHERE sweep = ANY($1::bigint[])""",
            batch_went_in=f"""SELECT EXISTS (SELECT 1 FROM {s}.sweeps
                WHERE sweep = ANY($1::bigint[]) AND batch = $2)""",
            prune_changes=f"""DELETE FROM {s}.changes WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM {s}.changes
                WHERE polled_at < now() - $1::integer * interval '1 day' LIMIT $2))""",
            prune_sweeps=f"""DELETE FROM {s}.sweeps
                WHERE started_at < now() - $1::integer * interval '1 day'""",
        )


@dataclass(slots=True)
class PostgresStats:
    """Counters of one PostgreSQL sink (metrics read them through ``counters()``)."""

    written_records: int = 0  # records of committed batches
    batches: int = 0  # committed transactions
    duplicate_changes: int = 0  # change rows already there (a retry, a re-emitted change)
    reconnects: int = 0  # connections made after the first
    errors: int = 0  # failed attempts: connects and batches
    lost_records: int = 0  # dropped: refused for their data, or left at close
    retention_deleted: int = 0
    last_batch_s: float = 0.0


@dataclass(slots=True)
class _Batch:
    """One batch's rows: the newest presence per UID, its changes, its per-sweep counts."""

    records: int = 0
    presence: list[tuple[Any, ...]] = field(default_factory=list)
    changes: list[tuple[Any, ...]] = field(default_factory=list)
    #: sweep -> [earliest polled_at, presence, change and error records]
    sweeps: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Sequence[Record]) -> _Batch:
        latest: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}
        changes: list[tuple[Any, ...]] = []
        sweeps: dict[int, list[int]] = {}
        for r in records:
            sweep, polled = r["sweep"], r["polled_at"]
            counts = sweeps.get(sweep)
            if counts is None:
                counts = sweeps[sweep] = [polled, 0, 0, 0]
            elif polled < counts[0]:
                counts[0] = polled
            if r["type"] == "error":
                counts[3] += 1
                continue
            key = (r["api"], r["app_id"], r["group_id"] or "", r["uid"])
            version = 0
            if r["type"] == "change":
                counts[2] += 1
                version = r["version"]
                online, previous = r["online"], r["previous_online"]
                changes.append((*key, version, online, previous, r["join_time"], polled, sweep))
            else:
                counts[1] += 1
            row = latest.get(key)
            if row is None or polled > row[6] or (polled == row[6] and version):
                carried = version or (row[8] if row is not None else 0)
                latest[key] = (*key, r["online"], r["join_time"], polled, sweep, carried)
            elif version and not row[8]:  # an older change after a newer presence record
                latest[key] = (*row[:8], version)
        return cls(len(records), list(latest.values()), changes, sweeps)


def postgres_dsn(config: SinkConfig) -> str:
    """The sink's DSN: ``dsn``, or the value of the environment variable ``dsn_env``."""
    if not config.dsn_env:
        return config.dsn
    value = env_secret(config.dsn_env, key="dsn_env")
    if not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"environment variable {config.dsn_env} must hold a postgresql:// URL",
            key="dsn_env",
        )
    return value


def _kind_of(exc: BaseException) -> Literal["retry", "drop", "config", "fatal"]:
    """What to do about an exception of a connect or a batch."""
    stale = (asyncpg.exceptions.InvalidCachedStatementError, asyncpg.OutdatedSchemaCacheError)
    if isinstance(exc, stale):
        return "retry"  # the schema changed under a cached statement: a new connection
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state[:2] in ("08", "40", "53", "57", "58"):  # connection, rollback, resources, ...
            return "retry"
        if state[:2] in ("28", "3D"):  # authentication, no such database
            return "config"
        if state[:2] in ("22", "23", "54"):  # the batch's data
            return "drop"
        return "fatal"
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        # asyncpg's client-side DataError (a value it cannot encode), or a bad DSN
        if type(exc).__name__ == "ClientConfigurationError":
            return "config"
        return "drop"
    if isinstance(exc, UnicodeError):
        return "drop"
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return "retry"
    if isinstance(exc, ValueError):  # the DSN did not parse
        return "config"
    return "fatal"


class PostgresSink:
    """Writes records to PostgreSQL; see the module docstring. Connects at the first write."""

    #: Its metrics, ``poller_postgres_<name>{sink}`` (counters get ``_total``).
    metrics_prefix: Final = "poller_postgres"
    metrics: Final = (
        ("written_records", "counter", "Records committed (presence, change and error)."),
        ("batches", "counter", "Batches committed, one transaction each."),
        ("duplicate_changes", "counter", "Change records already in the table (a retry)."),
        ("reconnects", "counter", "Connections opened again after one was lost."),
        ("errors", "counter", "Failed writes (retried while the database is unreachable)."),
        ("lost_records", "counter", "Records dropped: refused as bad data, or left at close."),
        ("retention_deleted_rows", "counter", "Rows deleted past retain_days."),
        ("pending_records", "gauge", "Records written to the sink and not yet committed."),
        ("last_batch_seconds", "gauge", "Duration of the last committed batch."),
        ("connected", "gauge", "1 while the sink holds a working connection."),
        ("down_seconds", "gauge", "How long writes have been failing (0 when they are not)."),
    )

    def __init__(
        self,
        config: SinkConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._dsn = postgres_dsn(config)
        self.schema = config.schema
        self.name = f"{mask_dsn(self._dsn)} schema {config.schema}"
        self._sql = _Sql.of(config.schema)
        self._batch_rows = config.batch_rows
        self._retain_days = config.retain_days
        self._clock = clock or system_clock()
        self._rng = rng or random.Random()
        self.stats = PostgresStats()
        self._pending: list[Record] = []
        #: Sweeps with records written since the last flush (it marks them complete).
        self._unflushed: set[int] = set()
        #: Sweeps whose first batch went in, in this process (later batches add to their row).
        self._seen: dict[int, None] = {}
        self._conn: Any = None  # asyncpg.Connection
        self._connected_once = False
        self._refused: ConfigError | None = None
        self._lock = asyncio.Lock()
        self._failing_since: float | None = None
        self._warned_at = 0.0
        self._retained_at: float | None = None
        self._retention: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<PostgresSink {self.name}>"

    async def open(self) -> None:
        """Connect and check the schema's version (ConfigError when it is not the one this
        poller writes), retrying while the database is unreachable. The first ``write`` does
        it, so a wrong schema stops a daemon at its first records, not a batch later."""
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                await self._commit((), complete=())

    # -- the Sink protocol ----------------------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> None:
        """Gather records; every ``batch_rows`` of them are committed before this returns
        (waiting, and retrying, while the database is unreachable)."""
        if not records:
            return
        if self._closed:
            raise SinkError(f"postgres sink {self.name} is closed")
        if self._refused is not None:
            raise self._refused
        if not self._connected_once:
            await self.open()
        async with self._lock:
            self._pending.extend(records)
            self._unflushed.update(r["sweep"] for r in records)
            while len(self._pending) >= self._batch_rows:
                await self._commit(self._pending[: self._batch_rows], complete=())
                del self._pending[: self._batch_rows]

    async def flush(self) -> None:
        """Commit what is left and mark the sweeps written since the last flush complete."""
        if self._refused is not None:
            raise self._refused
        async with self._lock:
            while len(self._pending) > self._batch_rows:
                await self._commit(self._pending[: self._batch_rows], complete=())
                del self._pending[: self._batch_rows]
            if not self._pending and not self._unflushed:
                return
            await self._commit(self._pending, complete=sorted(self._unflushed))
            self._pending.clear()
            self._unflushed.clear()
        self._maybe_prune()

    async def aclose(self) -> None:
        """Write what is left (for up to :data:`CLOSE_TIMEOUT_S`), then close the connection."""
        if self._closed:
            return
        try:
            if self._refused is None and (self._pending or self._unflushed):
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await self.flush()
                except TimeoutError:
                    self.stats.lost_records += len(self._pending)
                    log.warning(
                        "postgres %s: closing with %d records not written (the database is"
                        " unreachable); a daemon decides them again after its restart",
                        self.name,
                        len(self._pending),
                    )
        finally:
            self._closed = True
            task, self._retention = self._retention, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._disconnect()

    # -- batches --------------------------------------------------------------------------------

    async def _commit(self, records: Sequence[Record], complete: Sequence[int]) -> None:
        """Write ``records`` (and mark ``complete`` sweeps complete) in one transaction,
        retrying until it committed. Raises ConfigError (the schema) or SinkError."""
        if self._refused is not None:
            raise self._refused
        batch = _Batch.of(records)
        token = uuid.uuid4()
        attempt = 0
        while True:
            started = self._clock.monotonic()
            try:
                async with asyncio.timeout(BATCH_TIMEOUT_S):
                    conn = await self._connection()
                    if not batch.records and not complete:
                        pass  # open(): connected and checked
                    elif attempt and batch.records and await self._went_in(conn, batch, token):
                        log.info(
                            "postgres %s: the batch whose commit was cut off went in", self.name
                        )
                    else:
                        await self._transaction(conn, batch, token, complete)
            except asyncio.CancelledError:
                await self._disconnect(abort=True)  # a transaction may be half done
                raise
            except Exception as exc:
                what = _kind_of(exc)
                if isinstance(exc, ConfigError) or what == "config":
                    await self._disconnect(abort=True)
                    self._refused = (
                        exc
                        if isinstance(exc, ConfigError)
                        else ConfigError(f"PostgreSQL {self.name}: {exc}", key="dsn")
                    )
                    raise self._refused from None
                self.stats.errors += 1
                if what == "retry":
                    await self._disconnect(abort=True)
                    attempt += 1
                    self._failing(exc)
                    await self._clock.sleep(self._backoff(attempt))
                    continue
                if what == "drop":
                    self.stats.lost_records += batch.records
                    log.error(
                        "postgres %s: a batch of %d records was refused and is dropped: %s",
                        self.name,
                        batch.records,
                        exc,
                    )
                    if complete and batch.records:
                        await self._commit((), complete)  # the sweep still ended
                    return
                raise SinkError(f"postgres {self.name}: cannot write: {exc}") from exc
            self._recovered()
            if not batch.records and not complete:
                return
            self.stats.batches += 1
            self.stats.written_records += batch.records
            self.stats.last_batch_s = self._clock.monotonic() - started
            for sweep in batch.sweeps:
                self._seen[sweep] = None
            while len(self._seen) > SEEN_SWEEPS:
                del self._seen[next(iter(self._seen))]
            return

    async def _transaction(
        self, conn: Any, batch: _Batch, token: uuid.UUID, complete: Sequence[int]
    ) -> None:
        sql = self._sql
        async with conn.transaction():
            if batch.presence:
                await conn.copy_records_to_table(_STAGE_PRESENCE, records=batch.presence)
                await conn.execute(sql.merge_presence)
            if batch.changes:
                await conn.copy_records_to_table(_STAGE_CHANGES, records=batch.changes)
                status = await conn.execute(sql.insert_changes)
                inserted = int(str(status).rpartition(" ")[2] or 0)
                self.stats.duplicate_changes += len(batch.changes) - inserted
            for sweep, (started_ms, presence, changes, errors) in batch.sweeps.items():
                statement = sql.add_to_sweep if sweep in self._seen else sql.begin_sweep
                await conn.execute(statement, sweep, started_ms, presence, changes, errors, token)
            if complete:
                await conn.execute(sql.complete_sweeps, list(complete), self._clock.time())

    async def _went_in(self, conn: Any, batch: _Batch, token: uuid.UUID) -> bool:
        went_in = await conn.fetchval(self._sql.batch_went_in, list(batch.sweeps), token)
        return went_in is True

    # -- the connection -------------------------------------------------------------------------

    async def _connection(self) -> Any:
        """The open connection, else a new one whose schema version was checked."""
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        conn = await asyncpg.connect(
            self._dsn,
            timeout=CONNECT_TIMEOUT_S,
            server_settings={"application_name": _APPLICATION_NAME},
        )
        try:
            check_version(await schema_version(conn, self.schema), self.schema, self.name)
            for statement in _STAGING:
                await conn.execute(statement)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        if self._connected_once:
            self.stats.reconnects += 1
            if self._failing_since is None:  # else _recovered() says so
                log.info("postgres %s: reconnected (the connection had closed)", self.name)
        self._connected_once = True
        return conn

    async def _disconnect(self, *, abort: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if abort or conn.is_closed():
            conn.terminate()
            return
        try:
            await conn.close(timeout=5.0)
        except Exception:
            conn.terminate()

    def _backoff(self, attempt: int) -> float:
        cap = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempt, 20))
        return self._rng.uniform(cap / 2, cap)

    def _failing(self, exc: BaseException) -> None:
        now = self._clock.monotonic()
        reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if self._failing_since is None:
            self._failing_since = self._warned_at = now
            log.warning(
                "postgres %s: cannot write (%s); %d records wait and are retried (polling"
                " waits meanwhile)",
                self.name,
                reason,
                len(self._pending),
            )
        elif now - self._warned_at >= STILL_DOWN_WARN_S:
            self._warned_at = now
            log.warning(
                "postgres %s: still cannot write after %.0f s (%s); %d records wait",
                self.name,
                now - self._failing_since,
                reason,
                len(self._pending),
            )
        else:
            log.debug("postgres %s: attempt failed: %s", self.name, reason)

    def _recovered(self) -> None:
        if self._failing_since is not None:
            outage = self._clock.monotonic() - self._failing_since
            self._failing_since = None
            log.warning(
                "postgres %s: writing again after %.1f s (%d reconnects so far)",
                self.name,
                outage,
                self.stats.reconnects,
            )

    # -- retention ------------------------------------------------------------------------------

    def _maybe_prune(self) -> None:
        if not self._retain_days or self._closed:
            return
        if self._retention is not None and not self._retention.done():
            return
        now = self._clock.monotonic()
        if self._retained_at is not None and now - self._retained_at < RETENTION_EVERY_S:
            return
        self._retained_at = now
        self._retention = asyncio.create_task(self._prune_logged(), name="poller-pg-retention")

    async def _prune_logged(self) -> None:
        try:
            deleted = await self.prune()
        except Exception as exc:  # tried again an hour later
            log.warning("postgres %s: deleting old history failed: %s", self.name, exc)
            return
        if deleted:
            log.info(
                "postgres %s: deleted %d rows older than %d days",
                self.name,
                deleted,
                self._retain_days,
            )

    async def prune(self) -> int:
        """Delete ``changes`` and ``sweeps`` rows older than ``retain_days`` (on a connection of
        its own, in chunks); the number of rows deleted."""
        if not self._retain_days:
            return 0
        conn = await asyncpg.connect(
            self._dsn,
            timeout=CONNECT_TIMEOUT_S,
            server_settings={"application_name": f"{_APPLICATION_NAME}-retention"},
        )
        deleted = 0
        try:
            while True:
                status = await conn.execute(
                    self._sql.prune_changes, self._retain_days, RETENTION_CHUNK
                )
                count = int(str(status).rpartition(" ")[2] or 0)
                deleted += count
                if count < RETENTION_CHUNK:
                    break
            status = await conn.execute(self._sql.prune_sweeps, self._retain_days)
            deleted += int(str(status).rpartition(" ")[2] or 0)
        finally:
            self.stats.retention_deleted += deleted
            await conn.close()
        return deleted

    # -- for metrics ----------------------------------------------------------------------------

    def counters(self) -> dict[str, float]:
        """Counters (``*_total``) and gauges of this sink, by metric name."""
        stats = self.stats
        down = self._failing_since
        return {
            "written_records": stats.written_records,
            "batches": stats.batches,
            "duplicate_changes": stats.duplicate_changes,
            "reconnects": stats.reconnects,
            "errors": stats.errors,
            "lost_records": stats.lost_records,
            "retention_deleted_rows": stats.retention_deleted,
            "pending_records": len(self._pending),
            "last_batch_seconds": stats.last_batch_s,
            "connected": 1.0 if self._conn is not None and not self._conn.is_closed() else 0.0,
            "down_seconds": 0.0 if down is None else self._clock.monotonic() - down,
        }


async def init_schema(config: SinkConfig) -> tuple[int, int]:
    """``poller db init``: create or migrate the schema of a postgres sink; ``(version before,
    version after)`` (0 before: it had no tables). Raises ConfigError for a schema newer than
    this poller, a refused login or a missing database; SinkError when the server cannot be
    reached."""
    dsn = postgres_dsn(config)
    where = mask_dsn(dsn)
    try:
        conn = await asyncpg.connect(
            dsn,
            timeout=CONNECT_TIMEOUT_S,
            server_settings={"application_name": f"{_APPLICATION_NAME}-db-init"},
        )
    except Exception as exc:
        if _kind_of(exc) == "config":
            raise ConfigError(f"PostgreSQL {where}: {exc}", key="dsn") from None
        raise SinkError(f"cannot connect to PostgreSQL {where}: {exc}") from exc
    try:
        return await migrate(conn, config.schema, target=LATEST_VERSION, where=where)
    except asyncpg.PostgresError as exc:
        raise SinkError(f"PostgreSQL {where}: {exc}") from exc
    finally:
        await conn.close()
