"""``poller run`` killed with SIGKILL and restarted: the saved state carries over."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from poller.emulator.process import EmulatorProcess
from poller.engine.state import StateStore
from tests.daemons import DaemonProcess, base_config, target

pytestmark = pytest.mark.slow

APP, GROUP = "demo-app", "steady"  # a group made with change_members: it does not churn
UIDS = [f"m-{i:04d}" for i in range(300)]


def changes(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [r for r in daemon.records() if r["type"] == "change"]


def test_kill_9_and_restart_reports_what_changed_meanwhile(tmp_path: Path, daemons: Any) -> None:
    state_dir = tmp_path / "state"
    with EmulatorProcess() as emulator:
        emulator.change_members(APP, GROUP, join=UIDS, offline=UIDS[200:])  # 200 on, 100 off
        config = base_config(emulator, emit="changes", state_dir=str(state_dir))
        config += target(APP, GROUP, uids=UIDS)
        first = daemons(tmp_path / "one", config)
        first.sweeps_done(2)
        early = UIDS[:10]  # flipped while the first daemon runs: version 1 before the restart
        emulator.change_members(APP, GROUP, offline=early)
        first.wait_for(lambda _: len(changes(first)) == 10)
        first.sweeps_done(sum(e["event"] == "sweep" for e in first.logs()) + 1)
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(10) == -signal.SIGKILL
        first.close()

        store = StateStore(state_dir)
        saved = store.load()
        store.close()
        assert {saved.targets[("BatchGetOnlineUsers", APP, GROUP)][u][2] for u in early} == {1}

        went_online = early + UIDS[200:240]  # 50 offline -> online (10 of them for the 2nd time)
        went_offline = UIDS[10:60]  # 50 online -> offline
        emulator.change_members(APP, GROUP, online=went_online, offline=went_offline)

        second = daemons(tmp_path / "two", config)
        second.sweeps_done(2)
        assert second.stop() == 0
    logs = second.logs()
    assert any(e["event"] == "state loaded" and e["last_sweep"] == saved.sweep for e in logs)
    got = changes(second)
    first_sweep = saved.sweep + 1
    assert {r["sweep"] for r in got} == {first_sweep}  # all in the first sweep, numbers continue
    assert len(got) == 100
    by_uid = {r["uid"]: r for r in got}
    assert set(by_uid) == set(went_online) | set(went_offline)
    for uid in went_online:
        r = by_uid[uid]
        version = 2 if uid in early else 1
        assert (r["online"], r["previous_online"], r["version"]) == (True, False, version)
    for uid in went_offline:
        r = by_uid[uid]
        assert (r["online"], r["previous_online"], r["version"]) == (False, True, 1)
    sweeps = [e["sweep"] for e in logs if e["event"] == "sweep"]
    assert sweeps[:2] == [first_sweep, first_sweep + 1]


def test_a_second_daemon_on_the_same_state_dir_exits_78(tmp_path: Path, daemons: Any) -> None:
    with EmulatorProcess() as emulator:
        emulator.change_members(APP, GROUP, join=UIDS[:5])
        config = base_config(emulator, state_dir=str(tmp_path / "state"))
        config += target(APP, GROUP, uids=UIDS[:5])
        first = daemons(tmp_path / "one", config)
        first.sweeps_done(1)
        second = daemons(tmp_path / "two", config)
        assert second.proc.wait(30) == 78
        second.close()
        [error] = [e for e in second.logs() if e["event"] == "configuration error"]
        assert "in use by another poller daemon" in error["error"]
        assert str(first.proc.pid) in error["error"]
        assert first.stop() == 0
