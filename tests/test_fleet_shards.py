"""A sharded fleet of ``poller run`` daemons against the emulator and a real Redis: every UID
polled by exactly one member per aligned sweep, shards that move at once on SIGTERM and within
``lease_ttl_s`` plus one interval on SIGKILL, and one change-stream entry per flip."""

from __future__ import annotations

import collections
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from poller.emulator.process import EmulatorProcess
from poller.fleet.scripts import FleetKeys
from tests.daemons import DaemonProcess, base_config, http_get, readyz, target, wait_until
from tests.redisserver import RedisServer

pytestmark = pytest.mark.slow

APP, GROUP = "demo-app", "demo-group"
INTERVAL_S = 1.5


def member_config(
    emu: EmulatorProcess, server: RedisServer, name: str, uids_file: Path | None, **cluster: Any
) -> str:
    metrics = '\n[metrics]\nlisten = "127.0.0.1:0"\n' if cluster.pop("metrics_listen", 0) else ""
    extra = "".join(f"{k} = {v}\n" for k, v in cluster.items())
    return (
        base_config(emu, interval_s=INTERVAL_S)
        + metrics
        + f'\n[cluster]\nredis_url = "{server.url}"\nmember = "{name}"\naccount = "acct"\n'
        + extra
        + (
            target(APP, GROUP, uids_file=str(uids_file))
            if uids_file is not None
            else target(APP, GROUP, discover=True)
        )
    )


class Fleet:
    def __init__(
        self, tmp: Path, emu: EmulatorProcess, server: RedisServer, daemons: Any, n: int
    ) -> None:
        self.tmp, self.emu, self.server, self._daemons = tmp, emu, server, daemons
        self.uids_file = tmp / "uids.txt"
        self.uids = [f"user-{i:06d}" for i in range(1, n + 1)]
        self.uids_file.write_text("".join(u + "\n" for u in self.uids))
        self.members: dict[str, DaemonProcess] = {}

    def start(self, name: str, *, discover: bool = False, **cluster: Any) -> DaemonProcess:
        uids_file = None if discover else self.uids_file
        config = member_config(self.emu, self.server, name, uids_file, **cluster)
        daemon: DaemonProcess = self._daemons(self.tmp / name, config)
        self.members[name] = daemon
        return daemon

    def polls(self) -> dict[int, collections.Counter[str]]:
        """Sweep number -> how many members polled each UID in it."""
        per_sweep: dict[int, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        for daemon in self.members.values():
            for rec in daemon.records():
                if rec["type"] == "presence":
                    per_sweep[rec["sweep"]][rec["uid"]] += 1
        return per_sweep

    def covered(self, sweep: int) -> bool:
        return len(self.polls().get(sweep, ())) == len(self.uids)

    def last_sweep(self) -> int:
        return max(
            (e["sweep"] for d in self.members.values() for e in d.logs() if e["event"] == "sweep"),
            default=0,
        )

    def stream(self) -> list[dict[str, str]]:
        client = redis.Redis.from_url(self.server.url, decode_responses=True)
        try:
            entries = client.xrange(FleetKeys("acct", "presence").changes)
        finally:
            client.close()
        return [cast(dict[str, str], fields) for _id, fields in cast(list[Any], entries)]


@pytest.fixture
def fleet_of(tmp_path: Path, redis_server: RedisServer, daemons: Any) -> Iterator[Any]:
    emulators: list[EmulatorProcess] = []

    def make(n: int) -> Fleet:
        emu = EmulatorProcess("--qps", "100", "--group", f"{APP}/{GROUP}:{n}")
        emu.__enter__()
        emulators.append(emu)
        return Fleet(tmp_path, emu, redis_server, daemons, n)

    try:
        yield make
    finally:
        for emu in emulators:
            emu.__exit__(None, None, None)


def test_three_members_poll_every_uid_once_per_aligned_sweep(fleet_of: Any) -> None:
    fleet: Fleet = fleet_of(1200)
    for name in ("m1", "m2", "m3"):
        fleet.start(name, **({"metrics_listen": True} if name == "m1" else {}))
    for daemon in fleet.members.values():
        daemon.sweeps_done(5, timeout=60)
    url = next(e["url"] for e in fleet.members["m1"].logs() if e["event"] == "metrics listening")
    metrics = http_get(url)[1].decode()
    found = re.search(r"^poller_fleet_shards_held (\S+)$", metrics, re.M)
    assert found is not None
    held = float(found[1])
    assert 0 < held < 64
    assert "poller_fleet_shard_handovers_total" in metrics
    assert "poller_fleet_changes_deferred_total 0.0" in metrics
    status, body = readyz(url)
    assert status == 200 and body["fleet"]["shards_held"] == held
    for daemon in fleet.members.values():
        assert daemon.stop() == 0
    polls = fleet.polls()
    sweeps = sorted(polls)
    # Every member numbers its sweeps alike (multiples of the interval on Redis time).
    numbers = [
        {e["sweep"] for e in d.logs() if e["event"] == "sweep"} for d in fleet.members.values()
    ]
    common = sorted(set.intersection(*numbers))
    assert len(common) >= 3
    for sweep in common[1:-1]:  # the first may see members arriving, the last leaving
        counts = polls[sweep]
        assert len(counts) == 1200 and set(counts.values()) == {1}, f"sweep {sweep}"
    assert sweeps[0] > 1_000_000  # aligned numbers, not 1, 2, 3
    stats = fleet.emu.stats()["total"]
    assert stats["max_requests_in_any_1s_window"] <= 100
    assert stats["throttled_total"] == 0


def flip(emu: EmulatorProcess, uid: str) -> bool:
    """Flip one member's presence in the emulator; returns its new state."""
    state = next(m for m in emu.members(APP, GROUP)["members"] if m["user_id"] == uid)
    if state["online"]:
        emu.change_members(APP, GROUP, offline=[uid])
    else:
        emu.change_members(APP, GROUP, join=[uid])
    return not state["online"]


def test_a_killed_members_shards_move_within_the_lease_and_no_flip_is_lost(
    fleet_of: Any,
) -> None:
    fleet: Fleet = fleet_of(600)
    ttl = 3.0
    for name in ("m1", "m2", "m3"):
        fleet.start(name, lease_ttl_s=ttl)
    for daemon in fleet.members.values():
        daemon.sweeps_done(3, timeout=60)
    flipped: list[str] = []
    spacing_s = 2.5 * INTERVAL_S

    def flip_one(i: int) -> None:
        uid = fleet.uids[i * 37]
        flip(fleet.emu, uid)
        flipped.append(uid)
        time.sleep(spacing_s)  # flips spaced more than two intervals apart

    flip_one(1)
    flip_one(2)
    victim = fleet.members["m2"]
    killed_at = time.time()
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    flip_one(3)  # during the gap: seen once the shards moved
    # The first sweep after the kill in which the survivors cover every UID
    first = wait_until(
        lambda: next(
            (s for s in sorted(fleet.polls()) if s * INTERVAL_S > killed_at and fleet.covered(s)),
            None,
        ),
        "the survivors cover every UID",
        timeout=30,
    )
    assert first * INTERVAL_S - killed_at <= ttl + INTERVAL_S + 0.5
    flip_one(4)
    flip_one(5)
    target_sweep = fleet.last_sweep() + 2
    for name in ("m1", "m3"):
        fleet.members[name].wait_for(
            lambda logs: any(e["event"] == "sweep" and e["sweep"] >= target_sweep for e in logs)
        )
    entries = fleet.stream()
    assert collections.Counter(e["uid"] for e in entries) == collections.Counter(flipped)
    assert all(e["version"] == "1" for e in entries)
    stats = fleet.emu.stats()["total"]
    assert stats["max_requests_in_any_1s_window"] <= 100 and stats["throttled_total"] == 0


def test_sigterm_hands_the_shards_over_at_once(fleet_of: Any) -> None:
    fleet: Fleet = fleet_of(600)
    for name in ("m1", "m2"):
        fleet.start(name, lease_ttl_s=60.0)  # a gap of a lease would fail this test
    for daemon in fleet.members.values():
        daemon.sweeps_done(3, timeout=60)
    stopped_at = time.time()
    assert fleet.members["m2"].stop(signal.SIGTERM) == 0
    logs = fleet.members["m2"].logs()
    assert any(e["event"] == "shards handed over to the other members" for e in logs)
    first = wait_until(
        lambda: next(
            (s for s in sorted(fleet.polls()) if s * INTERVAL_S > stopped_at and fleet.covered(s)),
            None,
        ),
        "m1 covers every UID",
        timeout=20,
    )
    assert first * INTERVAL_S - stopped_at <= 2 * INTERVAL_S + 0.5  # not 60 s
    assert all(n == 1 for s, counts in fleet.polls().items() if s > first for n in counts.values())


def test_the_leader_lists_the_members_and_each_is_polled_once(fleet_of: Any) -> None:
    fleet: Fleet = fleet_of(300)
    for name in ("m1", "m2"):
        fleet.start(name, discover=True)
    for daemon in fleet.members.values():
        daemon.sweeps_done(3, timeout=60)
    fleet.emu.change_members(APP, GROUP, join=["newbie-1", "newbie-2"], leave=["user-000007"])
    members = {m["user_id"] for m in fleet.emu.members(APP, GROUP)["members"]}
    after = fleet.last_sweep() + 3  # the leader lists at one sweep, the others read it at the next
    for daemon in fleet.members.values():
        daemon.wait_for(lambda logs: any(e.get("sweep", 0) > after + 2 for e in logs), timeout=30)
    for daemon in fleet.members.values():
        assert daemon.stop() == 0
    # the first sweep from `after` that both ran (a loaded machine may make one overrun)
    ran = [{e["sweep"] for e in d.logs() if e["event"] == "sweep"} for d in fleet.members.values()]
    checked = min(s for s in set.intersection(*ran) if s >= after)
    counts = fleet.polls()[checked]
    assert set(counts) == members and set(counts.values()) == {1}
    failures = [
        e for d in fleet.members.values() for e in d.logs() if e["event"] == "discovery failed"
    ]
    # at most a follower's first sweeps, before the leader shared a list
    assert all("has not shared a member list yet" in e["error"] for e in failures)
