"""Restart-safe daemon state: each target's last known UID states and the sweep counter.

The state lives in ``[daemon] state_dir`` (default: ``$STATE_DIRECTORY`` when systemd sets it,
else ``$XDG_STATE_HOME/poller``, else ``~/.local/state/poller``) as two files:

``state.sqlite3``
    per target (API, app, group) and UID: ``online`` (NULL while every poll failed),
    ``join_time``, ``version`` (the transition counter of change records) and ``announce``;
    plus the number of the last saved sweep.
``lock``
    held with ``fcntl.flock`` by the daemon using the directory (its pid inside), so a second
    daemon on the same ``state_dir`` refuses to start, and ``poller state reset`` refuses to
    clear the state under a running daemon.

Why SQLite (stdlib ``sqlite3``, WAL mode, ``synchronous=NORMAL``) rather than a JSON file
replaced by rename: a sweep over a million UIDs changes a few thousand of them, and SQLite
upserts only those rows in one transaction (a JSON file would be re-serialised and rewritten
whole, ~50 MB, every sweep). A transaction is atomic: after a crash or ``kill -9`` at any point
the file holds the previous or the new sweep's state, never a mix, and WAL keeps readers
(``poller state show``) off the writer's way. The calls block, so the daemon runs them in a
thread (``asyncio.to_thread``). The file is marked with an ``application_id`` and a schema
``user_version``: anything else (another program's database, a newer schema, a damaged file)
is a :class:`StateError` that names ``poller state reset``.

The daemon saves the state only after the sinks flushed the records it reflects: a crash in
between re-emits those change records after the restart, with the same versions (at least
once, de-duplicated by version), and never loses one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from poller.core.changes import StateDelta, UidState
from poller.core.errors import ConfigError
from poller.core.records import TargetKey

from .dirlock import DirectoryBusy, lock_directory

__all__ = [
    "LOCK_FILE",
    "STATE_FILE",
    "Snapshot",
    "StateError",
    "StateStore",
    "TargetSummary",
    "default_state_dir",
    "resolve_state_dir",
]

STATE_FILE: Final = "state.sqlite3"
LOCK_FILE: Final = "lock"
#: ``PRAGMA application_id`` of a poller state file ("polr").
APPLICATION_ID: Final = 0x706F6C72
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE targets (
    id INTEGER PRIMARY KEY,
    api TEXT NOT NULL,
    app_id TEXT NOT NULL,
    group_id TEXT NOT NULL,  -- '' for app-wide targets (no group)
    UNIQUE (api, app_id, group_id)
);
CREATE TABLE uids (
    target INTEGER NOT NULL,
    uid TEXT NOT NULL,
    online INTEGER,
    join_time INTEGER,
    version INTEGER NOT NULL,
    announce INTEGER NOT NULL,
    PRIMARY KEY (target, uid)
) WITHOUT ROWID;
"""
_UPSERT: Final = (
    "INSERT INTO uids (target, uid, online, join_time, version, announce)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (target, uid) DO UPDATE SET online = excluded.online,"
    " join_time = excluded.join_time, version = excluded.version, announce = excluded.announce"
)


class StateError(ConfigError):
    """The state directory is in use, or its state file cannot be used (exit 78)."""

    default_code = "StateError"


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$STATE_DIRECTORY`` (its first entry), else ``$XDG_STATE_HOME/poller``, else
    ``~/.local/state/poller``."""
    env = os.environ if env is None else env
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "poller"


def resolve_state_dir(configured: Path | None) -> Path:
    return configured if configured is not None else default_state_dir()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A saved state: the last saved sweep (0: none) and every target's UID states."""

    sweep: int
    targets: dict[TargetKey, dict[str, UidState]]


@dataclass(frozen=True, slots=True)
class TargetSummary:
    key: TargetKey
    uids: int
    online: int


def _group(key: TargetKey) -> str:
    return key[2] if key[2] is not None else ""


class StateStore:
    """The state file and lock of one ``state_dir``. Blocking: call it from a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self.lock_path = directory / LOCK_FILE
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    # -- lock ------------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the directory's lock (creating the directory), or raise :class:`StateError`."""
        try:
            self._lock_fd = lock_directory(self.directory, LOCK_FILE)
        except DirectoryBusy as busy:
            raise StateError(
                f"state_dir {self.directory} is in use by another poller daemon (pid {busy.pid});"
                " each daemon needs its own [daemon] state_dir"
            ) from None
        except OSError as exc:
            raise StateError(f"cannot use state_dir {self.directory}: {exc}") from exc

    def close(self) -> None:
        """Close the state file and release the lock."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    # -- the file --------------------------------------------------------------------------

    def _bad(self, problem: str) -> StateError:
        return StateError(
            f"state file {self.path} {problem}; to start over (forgetting every UID's state), run:"
            " poller state reset --config FILE"
        )

    def _open(self, *, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if not create and not self.path.exists():
            return None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._bad(f"cannot be opened ({exc})") from exc
        try:
            self._check(conn, create=create)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _check(self, conn: sqlite3.Connection, *, create: bool) -> None:
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id == 0 and version == 0 and tables == 0:
                if not create:
                    raise self._bad("is empty")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(
                    f"BEGIN; {_SCHEMA} PRAGMA application_id = {APPLICATION_ID};"
                    f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
            elif app_id != APPLICATION_ID:
                raise self._bad("is not a poller state file (foreign application_id)")
            elif version != SCHEMA_VERSION:
                raise self._bad(f"has schema version {version}; this poller reads {SCHEMA_VERSION}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            raise self._bad(f"is corrupt or not a database ({exc})") from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        try:
            yield self._open(create=False)
        except sqlite3.DatabaseError as exc:
            raise self._bad(f"is corrupt ({exc})") from exc

    # -- load, save, summary, reset ---------------------------------------------------------

    def load(self) -> Snapshot:
        """The saved state (an empty one when there is no state file yet)."""
        with self._reading() as conn:
            if conn is None:
                return Snapshot(0, {})
            row = conn.execute("SELECT value FROM meta WHERE key = 'sweep'").fetchone()
            keys: dict[int, TargetKey] = {
                tid: (api, app, group or None)
                for tid, api, app, group in conn.execute("SELECT * FROM targets")
            }
            targets: dict[TargetKey, dict[str, UidState]] = {key: {} for key in keys.values()}
            query = "SELECT target, uid, online, join_time, version, announce FROM uids"
            for tid, uid, online, join_time, version, announce in conn.execute(query):
                on = None if online is None else bool(online)
                targets[keys[tid]][uid] = (on, join_time, version, bool(announce))
            return Snapshot(row[0] if row else 0, targets)

    def save(self, delta: StateDelta) -> None:
        """Apply ``delta`` in one transaction (all of it or, after a crash, none of it)."""
        try:
            conn = self._open(create=True)
            assert conn is not None
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._write(conn, delta)
                self._commit(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StateError(f"cannot save the state to {self.path}: {exc}") from exc

    def _write(self, conn: sqlite3.Connection, delta: StateDelta) -> None:
        if delta.full:
            conn.execute("DELETE FROM uids")
            conn.execute("DELETE FROM targets")
        for key in delta.dropped:
            tid = self._target_id(conn, key, create=False)
            if tid is not None:
                conn.execute("DELETE FROM uids WHERE target = ?", (tid,))
                conn.execute("DELETE FROM targets WHERE id = ?", (tid,))
        for key, uids in delta.deletes.items():
            tid = self._target_id(conn, key, create=False)
            if tid is not None:
                conn.executemany(
                    "DELETE FROM uids WHERE target = ? AND uid = ?", ((tid, u) for u in uids)
                )
        for key, rows in delta.upserts.items():
            tid = self._target_id(conn, key, create=True)
            conn.executemany(_UPSERT, ((tid, uid, *state) for uid, state in rows.items()))
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('sweep', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (delta.sweep,),
        )

    def _commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    @staticmethod
    def _target_id(conn: sqlite3.Connection, key: TargetKey, *, create: bool) -> int | None:
        args = (key[0], key[1], _group(key))
        query = "SELECT id FROM targets WHERE api = ? AND app_id = ? AND group_id = ?"
        row = conn.execute(query, args).fetchone()
        if row is None and create:
            cur = conn.execute("INSERT INTO targets (api, app_id, group_id) VALUES (?, ?, ?)", args)
            return cur.lastrowid
        return None if row is None else int(row[0])

    def summary(self) -> tuple[int, list[TargetSummary]] | None:
        """``(last sweep, per-target counts)``, or ``None`` when there is no state file."""
        with self._reading() as conn:
            if conn is None:
                return None
            row = conn.execute("SELECT value FROM meta WHERE key = 'sweep'").fetchone()
            query = (
                "SELECT api, app_id, group_id, count(uid), coalesce(sum(online = 1), 0)"
                " FROM targets LEFT JOIN uids ON uids.target = targets.id"
                " GROUP BY targets.id ORDER BY api, app_id, group_id"
            )
            targets = [
                TargetSummary((api, app, group or None), n, online)
                for api, app, group, n, online in conn.execute(query)
            ]
            return (row[0] if row else 0, targets)

    def reset(self) -> bool:
        """Delete the state file (the caller holds the lock); ``False`` if there was none."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        existed = self.path.exists()
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")
        return existed
