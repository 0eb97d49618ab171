"""The tables of the PostgreSQL sink and their versioned migrations (no driver imported here).

Every table lives in the sink's ``schema`` (default ``poller``). Times are ``timestamptz``
(records carry epoch milliseconds, UTC; converted by the server). A target is identified by
``(api, app_id, group_id)``; ``group_id`` is ``''`` (never NULL) for an app-wide target
(``CheckLiveMessageUsersOnline``), so it takes part in primary keys like any other value: an
API that asks about groups always has a non-empty group, so ``''`` can mean nothing else.

``schema_version``
    one row per applied migration: ``version`` (primary key), ``description``, ``applied_at``.
    The schema's version is the largest ``version``.

``presence`` -- who is online now: one row per target and UID
    ``api, app_id, group_id, uid`` (primary key), ``online``, ``join_time`` (NULL when the
    answer had none), ``polled_at``, ``sweep`` (the sweep of that poll) and ``version`` (the
    UID's transition counter as of the newest change record received; 0 until then, like the
    daemon's first state of a UID). Upserted; a row only moves forward: a record replaces it
    only when its ``polled_at`` is newer (or, at the same ``polled_at``, to add the version of
    that poll's change record), so an old record written late never brings back an old state.
    Rows of UIDs no longer polled stay (their ``polled_at`` says how old they are).

``changes`` -- the history of transitions, append-only
    ``api, app_id, group_id, uid, version`` (primary key: a retried batch, or a change
    re-emitted after a crash with the same version, never doubles a row), ``online``,
    ``previous_online`` (NULL for the first state of a UID added to a known target),
    ``join_time``, ``polled_at``, ``sweep``. With ``retain_days`` rows whose ``polled_at`` is
    older are deleted (at most once an hour).

``sweeps`` -- one row per sweep that wrote records
    ``sweep`` (primary key: the daemon's sweep number), ``started_at`` (the earliest
    ``polled_at`` of its records), ``completed_at`` (NULL until the flush at the sweep's end:
    a sweep cut by a crash stays NULL, and a sweep that a restarted daemon polls again starts
    over, counts included), ``presence_records``, ``change_records``, ``error_records`` (the
    records of each type the sink received for it; error records are counted only) and
    ``batch`` (the last batch written, which tells a retry whether a batch whose commit was
    cut off went in). A reader that wants whole sweeps reads the changes of sweeps whose
    ``completed_at`` is set. Pruned with ``changes`` by ``retain_days``.

Migrations (:data:`MIGRATIONS`) run in one transaction under an advisory lock, so
``poller db init`` is idempotent and two at once do not race:

1. the tables above;
2. the indexes readers and retention use: ``changes (polled_at)``, ``changes (sweep)`` and
   ``presence (api, app_id, group_id) WHERE online`` (who is online in a target).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final, Protocol

from poller.core.errors import ConfigError

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "Migration",
    "SchemaConnection",
    "check_version",
    "migrate",
    "quote_ident",
    "schema_version",
]


class SchemaConnection(Protocol):
    """What the migrations need of a connection (an ``asyncpg.Connection`` has it)."""

    async def execute(self, query: str, *args: Any) -> str: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    def transaction(self) -> AbstractAsyncContextManager[Any]: ...


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    #: Statements with ``{s}`` for the quoted schema name.
    statements: tuple[str, ...]


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "presence, changes and sweeps tables",
        (
            """CREATE TABLE {s}.presence (
                api text NOT NULL,
                app_id text NOT NULL,
                group_id text NOT NULL,
                uid text NOT NULL,
                online boolean NOT NULL,
                join_time timestamptz,
                polled_at timestamptz NOT NULL,
                sweep bigint NOT NULL,
                version bigint NOT NULL DEFAULT 0,
                PRIMARY KEY (api, app_id, group_id, uid)
            ) WITH (fillfactor = 80)""",
            """CREATE TABLE {s}.changes (
                api text NOT NULL,
                app_id text NOT NULL,
                group_id text NOT NULL,
                uid text NOT NULL,
                version bigint NOT NULL,
                online boolean NOT NULL,
                previous_online boolean,
                join_time timestamptz,
                polled_at timestamptz NOT NULL,
                sweep bigint NOT NULL,
                PRIMARY KEY (api, app_id, group_id, uid, version)
            )""",
            """CREATE TABLE {s}.sweeps (
                sweep bigint PRIMARY KEY,
                started_at timestamptz NOT NULL,
                completed_at timestamptz,
                presence_records bigint NOT NULL DEFAULT 0,
                change_records bigint NOT NULL DEFAULT 0,
                error_records bigint NOT NULL DEFAULT 0,
                batch uuid
            )""",
        ),
    ),
    Migration(
        2,
        "indexes for readers and retention",
        (
            "CREATE INDEX changes_polled_at ON {s}.changes (polled_at)",
            "CREATE INDEX changes_sweep ON {s}.changes (sweep)",
            "CREATE INDEX presence_online ON {s}.presence (api, app_id, group_id) WHERE online",
        ),
    ),
)

LATEST_VERSION: Final = MIGRATIONS[-1].version


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


async def schema_version(conn: SchemaConnection, schema: str) -> int | None:
    """The schema's version; ``None`` when it has no ``schema_version`` table (or no row)."""
    table = f"{quote_ident(schema)}.schema_version"
    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table) is not True:
        return None
    version = await conn.fetchval(f"SELECT max(version) FROM {table}")
    return None if version is None else int(version)


def check_version(version: int | None, schema: str, where: str) -> None:
    """Raise :class:`ConfigError` unless ``version`` is the one this poller writes."""
    init = "poller db init --config FILE"
    if version is None:
        raise ConfigError(
            f"PostgreSQL {where}: schema {schema!r} has no poller tables; create them with"
            f" `{init}` (FILE: this config file)",
            key="schema",
        )
    if version > LATEST_VERSION:
        raise ConfigError(
            f"PostgreSQL {where}: schema {schema!r} is at version {version}, newer than this"
            f" poller knows (version {LATEST_VERSION}): upgrade poller (`{init}` does not"
            " downgrade)",
            key="schema",
        )
    if version < LATEST_VERSION:
        raise ConfigError(
            f"PostgreSQL {where}: schema {schema!r} is at version {version}; this poller needs"
            f" version {LATEST_VERSION}: migrate it with `{init}` (FILE: this config file)",
            key="schema",
        )


async def migrate(
    conn: SchemaConnection,
    schema: str,
    *,
    target: int = LATEST_VERSION,
    where: str = "database",
    migrations: Sequence[Migration] = MIGRATIONS,
) -> tuple[int, int]:
    """Create or migrate ``schema`` to version ``target``; ``(version before, version after)``.

    Idempotent; one transaction under an advisory lock on the schema's name. Refuses (with
    :class:`ConfigError`) a schema newer than ``target``.
    """
    s = quote_ident(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"poller-schema:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {s}.schema_version (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )"""
        )
        before = await schema_version(conn, schema) or 0
        if before > target:
            raise ConfigError(
                f"PostgreSQL {where}: schema {schema!r} is at version {before}, newer than"
                f" this poller knows (version {target}): upgrade poller",
                key="schema",
            )
        for migration in migrations:
            if before < migration.version <= target:
                for statement in migration.statements:
                    await conn.execute(statement.format(s=s))
                await conn.execute(
                    f"INSERT INTO {s}.schema_version (version, description) VALUES ($1, $2)",
                    migration.version,
                    migration.description,
                )
        return before, max(before, target)
