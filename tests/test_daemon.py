"""``poller run`` as a subprocess against the emulator (also a subprocess)."""

from __future__ import annotations

import itertools
import signal
import socket
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from poller.emulator.process import EmulatorProcess
from tests.daemons import base_config, sweeps_before, target

pytestmark = pytest.mark.slow


def presence_by_sweep(records: list[dict[str, Any]], group: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = defaultdict(dict)
    for r in records:
        if r["type"] == "presence" and r["group_id"] == group:
            assert r["uid"] not in out[r["sweep"]], "duplicate record in a sweep"
            out[r["sweep"]][r["uid"]] = (r["online"], r["join_time"])
    return out


def test_change_records_follow_the_emulators_membership(tmp_path: Path, daemons: Any) -> None:
    vips = [f"vip-{i}" for i in range(6)]
    with EmulatorProcess("--group", "demo-app/churn:200", "--churn-per-s", "20") as emulator:
        emulator.change_members("demo-app", "static", join=vips)  # a group without churn
        config = (
            base_config(emulator)
            + target("demo-app", "churn", uids=[f"user-{i:06d}" for i in range(1, 201)])
            + target("demo-app", "static", uids=vips)
        )
        daemon = daemons(tmp_path, config)
        daemon.sweeps_done(2)
        flipped_off, rejoined = vips[:3], vips[3:]
        emulator.change_members("demo-app", "static", offline=flipped_off, join=rejoined)
        changed_at = sum(e["event"] == "sweep" for e in daemon.logs())
        daemon.sweeps_done(changed_at + 3)
        assert daemon.stop() == 0
    records = daemon.records()
    changes = [r for r in records if r["type"] == "change"]

    # The churning group: every change record is exactly a difference between two sweeps.
    by_sweep = presence_by_sweep(records, "churn")
    expected = set()
    sweeps = sorted(by_sweep)
    for prev, cur in itertools.pairwise(sweeps):
        for uid, state in by_sweep[cur].items():
            if uid in by_sweep[prev] and by_sweep[prev][uid] != state:
                expected.add((cur, uid, state[0], by_sweep[prev][uid][0]))
    got = {
        (r["sweep"], r["uid"], r["online"], r["previous_online"])
        for r in changes
        if r["group_id"] == "churn"
    }
    assert got == expected
    assert len(got) >= 5  # churn at 20 flips/s really produced changes

    # The static group: exactly the changes we made, once each, in one sweep.
    static = [r for r in changes if r["group_id"] == "static"]
    assert sorted(r["uid"] for r in static) == sorted(vips)
    for r in static:
        if r["uid"] in flipped_off:
            assert (r["online"], r["previous_online"], r["join_time"]) == (False, True, 0)
        else:  # a re-join: still online, with a new join time
            assert r["online"] is True and r["previous_online"] is True
    assert len({r["sweep"] for r in static}) == 1


def test_sighup_adds_a_target_and_a_bad_config_is_rejected(tmp_path: Path, daemons: Any) -> None:
    with EmulatorProcess("--group", "demo-app/a:40", "--group", "demo-app/b:40") as emulator:
        one = base_config(emulator) + target("demo-app", "a", uids=["user-000001", "user-000002"])
        daemon = daemons(tmp_path, one)
        daemon.sweeps_done(1)
        daemon.config_path.write_text(one + target("demo-app", "b", uids=["user-000003"]))
        daemon.proc.send_signal(signal.SIGHUP)
        logs = daemon.wait_for(lambda logs: any(e["event"] == "reloaded" for e in logs))
        reloaded_after = sweeps_before(logs, lambda e: e["event"] == "reloaded")
        daemon.sweeps_done(reloaded_after + 1)
        daemon.config_path.write_text("[limits]\nqps = -1\n")
        daemon.proc.send_signal(signal.SIGHUP)
        logs = daemon.wait_for(lambda logs: any("rejected" in e["event"] for e in logs))
        rejected_after = sweeps_before(logs, lambda e: "rejected" in e["event"])
        daemon.sweeps_done(rejected_after + 2)
        assert daemon.stop() == 0
    rejected = next(e for e in daemon.logs() if "rejected" in e["event"])
    assert "limits.qps" in rejected["error"] and "poller.toml" in rejected["error"]
    b_sweeps = sorted({r["sweep"] for r in daemon.records() if r["group_id"] == "b"})
    assert b_sweeps and b_sweeps[0] == reloaded_after + 1  # the very next sweep
    assert b_sweeps[-1] >= rejected_after + 2  # still polling with the old config


def test_sigterm_mid_sweep_drains_and_exits_cleanly(tmp_path: Path, daemons: Any) -> None:
    uids = tmp_path / "uids.txt"
    uids.write_text("\n".join(f"user-{i:06d}" for i in range(1, 5001)), "utf-8")
    with EmulatorProcess("--group", "demo-app/demo-group:5000", "--latency-ms", "20") as emulator:
        config = base_config(emulator, interval_s=30, drain_timeout_s=2.0) + target(
            "demo-app", "demo-group", uids_file=str(uids)
        )
        daemon = daemons(tmp_path, config)
        daemon.wait_for(lambda logs: any(e["event"] == "started" for e in logs))
        while len(daemon.records()) < 600:  # well into the sweep (~2.5 s long)
            time.sleep(0.02)
        sent = time.monotonic()
        code = daemon.stop(signal.SIGTERM)
        elapsed = time.monotonic() - sent
    assert code == 0
    assert elapsed <= 2.0 + 1.0
    records = daemon.records()  # parses every line, and the file ends with a newline
    counts = Counter(r["uid"] for r in records)
    assert max(counts.values()) == 1
    assert len(counts) == 5000  # completed batches present, the rest "Cancelled"
    statuses = Counter(r.get("code", r["type"]) for r in records)
    assert statuses["presence"] >= 600 and statuses["Cancelled"] > 0
    stopped = [e for e in daemon.logs() if e["event"] == "stopped"]
    assert stopped and stopped[0]["signal"] == "SIGTERM"


def test_small_target_is_not_starved_and_metrics_agree_with_records(
    tmp_path: Path, daemons: Any
) -> None:
    big = tmp_path / "big.txt"
    big.write_text("\n".join(f"user-{i:06d}" for i in range(1, 20001)), "utf-8")
    args = ("--qps", "0", "--group", "demo-app/big:20000", "--group", "demo-app/small:200")
    with EmulatorProcess(*args) as emulator:
        config = (
            base_config(emulator, interval_s=600)
            + "\n[limits]\nqps = 1000\nmax_in_flight = 32\n"
            + '\n[metrics]\nlisten = "127.0.0.1:0"\n'
            + target("demo-app", "big", uids_file=str(big))
            + target("demo-app", "small", uids=[f"user-{i:06d}" for i in range(1, 201)])
        )
        daemon = daemons(tmp_path, config)
        logs = daemon.sweeps_done(1)
        url = next(e["url"] for e in logs if e["event"] == "metrics listening")
        with urllib.request.urlopen(url, timeout=5) as resp:
            metrics = resp.read().decode()
        with urllib.request.urlopen(url.replace("/metrics", "/readyz"), timeout=5) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(url.replace("/metrics", "/healthz"), timeout=5) as resp:
            assert resp.status == 200
        assert daemon.stop() == 0
    records = [r for r in daemon.records() if r["sweep"] == 1]
    start = min(r["polled_at"] for r in records)
    big_end = max(r["polled_at"] for r in records if r["group_id"] == "big") - start
    small_end = max(r["polled_at"] for r in records if r["group_id"] == "small") - start
    assert small_end <= 0.1 * big_end, (small_end, big_end)

    values = {}
    for line in metrics.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    by_status = Counter(r["type"] if r["type"] != "error" else r["code"] for r in records)
    assert values['poller_uids_total{status="presence"}'] == by_status["presence"] == 20200
    assert values["poller_sweeps_total"] == 1
    assert values['poller_requests_total{action="BatchGetOnlineUsers",outcome="ok"}'] == 1010
    assert values[
        'poller_online_users{api="BatchGetOnlineUsers",app_id="demo-app",group_id="small"}'
    ] == sum(r["online"] for r in records if r["group_id"] == "small")
    assert not any("uid=" in name for name in values)  # never a user ID as a label
    # Keep-alive: 1,010 requests over at most max_in_flight + 8 connections, as the log says.
    [sweep_log] = [e for e in logs if e["event"] == "sweep"]
    assert 1 <= values["poller_http_connections_opened_total"] <= 32 + 8
    assert values["poller_http_connections_opened_total"] == sweep_log["connections_opened"]


def test_discovery_polls_exactly_the_members_including_new_ones(
    tmp_path: Path, daemons: Any
) -> None:
    with EmulatorProcess("--group", "demo-app/disc:120") as emulator:
        config = base_config(emulator) + target("demo-app", "disc", discover=True)
        daemon = daemons(tmp_path, config)
        daemon.sweeps_done(1)
        emulator.change_members("demo-app", "disc", join=["newbie-1", "newbie-2"])
        emulator.change_members("demo-app", "disc", leave=["user-000007"])
        after = sum(e["event"] == "sweep" for e in daemon.logs()) + 1  # one may be running
        daemon.sweeps_done(after + 1)
        members = {m["user_id"] for m in emulator.members("demo-app", "disc")["members"]}
        assert daemon.stop() == 0
    by_sweep = presence_by_sweep(daemon.records(), "disc")
    assert set(by_sweep[1]) == {f"user-{i:06d}" for i in range(1, 121)}
    assert set(by_sweep[after + 1]) == members
    assert {"newbie-1", "newbie-2"} <= members and "user-000007" not in members


def test_systemd_notify_ready_reload_watchdog_stopping(tmp_path: Path, daemons: Any) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    messages: list[str] = []

    def receive_until(prefix: str) -> str:
        while True:
            message = sock.recv(4096).decode()
            messages.append(message)
            if message.startswith(prefix):
                return message

    try:
        with EmulatorProcess() as emulator:
            config = base_config(emulator) + target("demo-app", "demo-group", uids=["user-000001"])
            env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
            daemon = daemons(tmp_path, config, env=env)
            receive_until("READY=1")
            receive_until("WATCHDOG=1")
            daemon.sweeps_done(1)
            daemon.proc.send_signal(signal.SIGHUP)
            reloading = receive_until("RELOADING=1")
            assert "MONOTONIC_USEC=" in reloading
            receive_until("READY=1")
            daemon.proc.send_signal(signal.SIGTERM)
            receive_until("STOPPING=1")
            assert daemon.proc.wait(20) == 0
    finally:
        sock.close()
    assert messages[0].startswith("READY=1")


def test_bad_config_exits_78_naming_the_key(tmp_path: Path, daemons: Any) -> None:
    daemon = daemons(tmp_path, '[daemon]\nemit = "sometimes"\n')
    assert daemon.proc.wait(30) == 78
    assert "daemon.emit" in daemon.stderr() and "poller.toml" in daemon.stderr()
