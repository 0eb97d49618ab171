"""The daemon's state store (SQLite, WAL) and ``poller state show|reset``."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from poller.apps.cli import main
from poller.core.changes import StateDelta, UidState
from poller.core.records import TargetKey
from poller.engine.state import (
    APPLICATION_ID,
    StateError,
    StateStore,
    TargetSummary,
    default_state_dir,
)

A: TargetKey = ("BatchGetOnlineUsers", "app", "g")
B: TargetKey = ("CheckLiveMessageUsersOnline", "app", None)


def saved(tmp_path: Path, delta: StateDelta) -> StateStore:
    store = StateStore(tmp_path / "state")
    store.lock()
    store.save(delta)
    return store


def test_round_trip_and_incremental_upserts(tmp_path: Path) -> None:
    rows: dict[str, UidState] = {"u1": (True, 5, 2, False), "u2": (None, None, 0, True)}
    store = saved(
        tmp_path, StateDelta(3, full=True, upserts={A: rows, B: {"x": (False, 0, 1, False)}})
    )
    store.save(StateDelta(4, upserts={A: {"u1": (False, 5, 3, False)}}, deletes={A: {"u2"}}))
    store.close()
    again = StateStore(tmp_path / "state")
    snap = again.load()
    assert snap.sweep == 4
    assert snap.targets == {A: {"u1": (False, 5, 3, False)}, B: {"x": (False, 0, 1, False)}}
    again.close()
    store = StateStore(tmp_path / "state")
    store.save(StateDelta(5, dropped={B}))
    assert store.load().targets == {A: {"u1": (False, 5, 3, False)}}
    assert store.summary() == (5, [_summary(A, 1, 0)])
    store.close()


def _summary(key: TargetKey, uids: int, online: int) -> TargetSummary:
    return TargetSummary(key, uids, online)


def test_no_state_file_is_an_empty_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "nothing")
    assert store.load().sweep == 0 and store.load().targets == {}
    assert store.summary() is None
    assert not (tmp_path / "nothing").exists()  # reading creates nothing


def test_a_crash_between_write_and_commit_keeps_the_previous_state(tmp_path: Path) -> None:
    """A process killed (``os._exit``) after writing rows, before COMMIT: the old state stays."""
    script = textwrap.dedent(
        f"""
        import os
        from poller.core.changes import StateDelta
        from poller.engine.state import StateStore
        key = {A!r}
        store = StateStore(__import__("pathlib").Path({str(tmp_path / "state")!r}))
        store.lock()
        store.save(StateDelta(1, full=True, upserts={{key: {{"u1": (True, 0, 0, False)}}}}))
        big = {{f"u{{i}}": (False, 1, 7, False) for i in range(20000)}}
        StateStore._commit = lambda self, conn: os._exit(9)
        store.save(StateDelta(2, full=True, upserts={{key: big}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    store = StateStore(tmp_path / "state")
    snap = store.load()
    assert (snap.sweep, snap.targets) == (1, {A: {"u1": (True, 0, 0, False)}})
    store.close()


def test_a_failed_save_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = saved(tmp_path, StateDelta(1, full=True, upserts={A: {"u1": (True, 0, 0, False)}}))

    def fail(self: StateStore, conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(StateStore, "_commit", fail)
    with pytest.raises(StateError, match="cannot save"):
        store.save(StateDelta(2, full=True, upserts={A: {"u9": (False, 0, 0, False)}}))
    monkeypatch.undo()
    assert store.load().targets == {A: {"u1": (True, 0, 0, False)}}
    store.close()


def test_the_lock_keeps_a_second_user_out(tmp_path: Path) -> None:
    first = StateStore(tmp_path / "state")
    first.lock()
    second = StateStore(tmp_path / "state")
    with pytest.raises(StateError, match=r"in use by another poller daemon \(pid \d+\)"):
        second.lock()
    first.close()
    second.lock()  # released with the first store
    second.close()


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    path = tmp_path / "state" / "state.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=r"corrupt or not a database.*poller state reset"):
        StateStore(tmp_path / "state").load()
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match=r"not a poller state file.*poller state reset"):
        StateStore(tmp_path / "state").load()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StateError, match="schema version 99"):
        StateStore(tmp_path / "state").load()


def test_default_state_dir() -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/poller:/x"}) == Path("/var/lib/poller")
    assert default_state_dir({"XDG_STATE_HOME": "/s"}) == Path("/s/poller")
    assert default_state_dir({}) == Path.home() / ".local" / "state" / "poller"


# -- poller state show | reset ----------------------------------------------------------------


def config_file(tmp_path: Path) -> str:
    path = tmp_path / "poller.toml"
    path.write_text('[daemon]\nstate_dir = "state"\n', "utf-8")
    return str(path)


def test_state_show_and_reset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_file(tmp_path)
    assert main(["state", "show", "--config", config]) == 0
    assert "no state yet" in capsys.readouterr().out
    rows: dict[str, UidState] = {f"u{i}": (i % 3 == 0, 0, 1, False) for i in range(10)}
    saved(tmp_path, StateDelta(12, full=True, upserts={A: rows, B: {}})).close()
    assert main(["state", "show", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"state file: {tmp_path / 'state' / 'state.sqlite3'}" in out
    assert "last sweep: 12" in out
    assert "BatchGetOnlineUsers app/g: 10 UIDs known, 4 online" in out
    holder = StateStore(tmp_path / "state")
    holder.lock()
    assert main(["state", "reset", "--config", config]) == 78
    assert "in use by another poller daemon" in capsys.readouterr().err
    holder.close()
    assert main(["state", "reset", "--config", config]) == 0
    assert "state cleared" in capsys.readouterr().out
    assert not (tmp_path / "state" / "state.sqlite3").exists()
    assert main(["state", "show", "--config", config]) == 0
    assert "no state yet" in capsys.readouterr().out


def test_state_show_on_a_corrupt_file_names_reset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.sqlite3").write_bytes(b"\x00garbage" * 1000)
    assert main(["state", "show", "--config", config]) == 78
    assert "poller state reset" in capsys.readouterr().err
    assert main(["state", "reset", "--config", config]) == 0
    assert main(["state", "show", "--config", config]) == 0
