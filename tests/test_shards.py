"""UID shards, leases and the fleet's shared state (``[cluster] shard_targets``), against a
real Redis: who polls which UID, how shards move when members come and go, and how the change
stream decides each transition exactly once."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from poller.config import ClusterConfig
from poller.core.clock import system_clock
from poller.core.errors import ConfigError
from poller.core.records import ErrorRecord, PresenceRecord, Record, change_record
from poller.fleet import Fleet
from poller.fleet.budget import ClockSync
from poller.fleet.shards import HeldShards, ShardLeases, shard_of, token_member
from poller.fleet.state import SharedState, target_label
from tests.redisserver import RedisServer

pytestmark = pytest.mark.slow

KEY = ("BatchGetOnlineUsers", "app", "group")


def test_a_uid_lands_in_the_same_shard_in_every_process() -> None:
    # Pinned: a changed hash would move every UID of a running fleet to another member.
    assert [shard_of(f"user-{i}", 64) for i in range(5)] == [
        shard_of(u, 64) for u in ("user-0", "user-1", "user-2", "user-3", "user-4")
    ]
    digest = hashlib.blake2b(b"user-000001", digest_size=8).digest()
    assert shard_of("user-000001", 64) == int.from_bytes(digest, "big") % 64
    assert shard_of("\udcff-undecodable", 64) in range(64)  # lone surrogates do not crash


def test_uids_spread_evenly_over_shards() -> None:
    counts = collections.Counter(shard_of(f"user-{i:06d}", 64) for i in range(64_000))
    assert len(counts) == 64 and max(counts.values()) < 1.15 * 1000


@given(st.frozensets(st.integers(0, 15)), st.lists(st.text(max_size=20), max_size=50))
def test_a_member_polls_exactly_the_uids_of_its_shards(
    shards: frozenset[int], uids: list[str]
) -> None:
    keep = HeldShards(shards, 16).keep()
    assert [u for u in uids if keep(u)] == [u for u in uids if shard_of(u, 16) in shards]


# -- leases ---------------------------------------------------------------------------------


class Members:
    """Fleets and their leases, all in this process, closed at the end."""

    def __init__(self, server: RedisServer, shards: int = 16, ttl_s: float = 30.0) -> None:
        self.server, self.shards, self.ttl_s = server, shards, ttl_s
        self.fleets: list[Fleet] = []
        self.leases: dict[str, ShardLeases] = {}

    async def add(self, name: str) -> ShardLeases:
        cluster = ClusterConfig(redis_url=self.server.url, member=name, account="acct")
        fleet = Fleet(cluster, account="acct")
        await fleet.start()
        self.fleets.append(fleet)
        leases = ShardLeases(fleet, shards=self.shards, ttl_s=self.ttl_s)
        self.leases[name] = leases
        await leases.tick()  # no background renewals: every tick is the test's
        return leases

    async def tick_all(self) -> None:
        for leases in self.leases.values():
            if not leases.left:
                await leases.tick()

    def owners(self) -> dict[int, str]:
        """Shard -> member name, as the last ticks saw it; every shard must be held once."""
        owners: dict[int, str] = {}
        for name, leases in self.leases.items():
            if leases.left:
                continue
            for shard in leases.held:
                assert shard not in owners, f"shard {shard} held by {owners[shard]} and {name}"
                owners[shard] = name
        return owners

    async def aclose(self) -> None:
        for leases in self.leases.values():
            await leases.aclose()
        for fleet in self.fleets:
            await fleet.aclose()


@pytest.fixture
async def members(redis_server: RedisServer) -> AsyncIterator[Members]:
    group = Members(redis_server)
    try:
        yield group
    finally:
        await group.aclose()


def rendezvous(tokens: Sequence[str], shards: int) -> dict[int, str]:
    """The owner of each shard by highest random weight, as the LEASES script computes it."""
    return {
        n: max(tokens, key=lambda t: hashlib.sha1(f"{t}|{n}".encode()).hexdigest())
        for n in range(shards)
    }


async def test_every_shard_has_one_holder_the_rendezvous_owner(members: Members) -> None:
    for name in ("a", "b", "c"):
        await members.add(name)
    await members.tick_all()  # a and b hand over what the later members own
    await members.tick_all()
    owners = members.owners()
    assert sorted(owners) == list(range(16))
    tokens = {leases.token: name for name, leases in members.leases.items()}
    expected = rendezvous(list(tokens), 16)
    assert owners == {n: tokens[t] for n, t in expected.items()}
    assert sum(leases.leader for leases in members.leases.values()) == 1


async def test_a_joining_member_takes_only_its_own_share(members: Members) -> None:
    for name in ("a", "b", "c"):
        await members.add(name)
    await members.tick_all()
    before = members.owners()
    await members.add("d")
    await members.tick_all()
    await members.tick_all()
    after = members.owners()
    moved = {n for n in range(16) if before[n] != after[n]}
    assert moved and all(after[n] == "d" for n in moved)  # nothing moved between a, b and c
    assert members.leases["d"].handovers_in == len(moved)


async def test_a_member_that_leaves_hands_every_shard_over_at_once(members: Members) -> None:
    for name in ("a", "b", "c"):
        await members.add(name)
    await members.tick_all()
    held_by_b = set(members.leases["b"].held)
    await members.leases["b"].leave()
    client = aioredis.Redis.from_url(members.server.url, decode_responses=True)
    try:
        keys = members.leases["a"].keys
        holders = [str(await client.get(keys.shard(n))) for n in range(16)]
    finally:
        await client.aclose()
    # Before anyone else ticks, b's shards already belong to a or c: never a free shard.
    assert all(token_member(h) in ("a", "c") for h in holders)
    await members.tick_all()
    owners = members.owners()
    assert sorted(owners) == list(range(16)) and held_by_b <= {
        n for n, who in owners.items() if who != "b"
    }
    assert members.leases["b"].handovers_out == len(held_by_b)


async def test_a_cancelled_leave_still_hands_over_when_awaited_again(members: Members) -> None:
    """The daemon starts the handover from its stop signal in a task that its exit cancels,
    then awaits leave() again: the handover must run to its end."""
    a = await members.add("a")
    b = await members.add("b")
    await members.tick_all()
    first = asyncio.ensure_future(b.leave())
    await asyncio.sleep(0)  # started, not finished
    first.cancel()
    await b.leave()
    await a.tick()
    assert a.held == frozenset(range(16)) and a.handovers_in > 0


async def test_the_shards_of_a_dead_member_are_taken_when_its_leases_expire(
    redis_server: RedisServer,
) -> None:
    group = Members(redis_server, ttl_s=1.0)
    try:
        for name in ("a", "b"):
            await group.add(name)
        await group.tick_all()
        dead = set(group.leases["b"].held)
        assert dead
        group.leases["b"].left = True  # stops ticking, like a process killed with SIGKILL
        await group.leases["a"].tick()
        assert not dead & group.leases["a"].held  # its leases still run

        async def taken() -> bool:
            await group.leases["a"].tick()
            return len(group.leases["a"].held) == 16

        await wait_async(taken, "the dead member's shards taken over", deadline_s=5.0)
    finally:
        await group.aclose()


async def wait_async(predicate: Any, what: str, deadline_s: float) -> None:
    """Poll ``predicate`` every 50 ms, for at most ``deadline_s`` seconds."""
    for _ in range(int(deadline_s / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_sweep_polls_the_shards_held_before_and_after_its_tick(
    members: Members,
) -> None:
    a = await members.add("a")
    alone = await a.refresh()
    assert alone.shards == frozenset(range(16))
    b = await members.add("b")
    moving = await a.refresh()  # hands b's share over, but still polls it this sweep
    assert moving.shards == frozenset(range(16)) and a.held != moving.shards
    assert (await b.refresh()).shards == b.held and b.held == frozenset(range(16)) - a.held
    assert (await a.refresh()).shards == a.held  # next sweep: only its own


async def test_a_shard_handed_over_between_two_sweep_starts_is_still_polled(
    members: Members,
) -> None:
    """b's sweep starts (it holds nothing yet), then a's background tick hands b its share,
    then a's sweep starts: a still polls that share once, so no shard goes unpolled."""
    a = await members.add("a")
    await a.refresh()
    b = await members.add("b")
    assert (await b.refresh()).shards == frozenset()
    await a.tick()  # a background renewal: b's share moves to b
    assert b.held == frozenset() and a.held != frozenset(range(16))
    assert (await a.refresh()).shards == frozenset(range(16))  # not only what it holds now
    assert (await a.refresh()).shards == a.held
    assert (await b.refresh()).shards == frozenset(range(16)) - a.held


async def test_a_member_that_never_reached_redis_polls_every_shard(tmp_path: Any) -> None:
    cluster = ClusterConfig(redis_url=f"unix://{tmp_path}/nothing.sock", member="x", account="a")
    fleet = Fleet(cluster, account="a")
    await fleet.start()
    try:
        leases = ShardLeases(fleet, shards=8, ttl_s=3.0)
        held = await leases.refresh()
        assert held.shards == frozenset(range(8))  # nobody can say who polls what
    finally:
        await fleet.aclose()


# -- the shared state and the change stream -------------------------------------------------


def presence(uid: str, online: bool, sweep: int, polled_at: int, join: int | None = 7) -> Record:
    rec: PresenceRecord = {
        "type": "presence",
        "sweep": sweep,
        "api": KEY[0],
        "app_id": KEY[1],
        "group_id": KEY[2],
        "uid": uid,
        "online": online,
        "join_time": join if online else None,
        "polled_at": polled_at,
        "request_id": "r",
    }
    return rec


def error(uid: str, sweep: int, polled_at: int) -> Record:
    rec: ErrorRecord = {
        "type": "error",
        "sweep": sweep,
        "api": KEY[0],
        "app_id": KEY[1],
        "group_id": KEY[2],
        "uid": uid,
        "code": "InternalError",
        "message": "boom",
        "polled_at": polled_at,
    }
    return rec


@pytest.fixture
async def states(redis_server: RedisServer) -> AsyncIterator[list[SharedState]]:
    fleets = []
    out = []
    for name in ("a", "b"):
        cluster = ClusterConfig(redis_url=redis_server.url, member=name, account="acct")
        fleet = Fleet(cluster, account="acct")
        await fleet.start()
        fleets.append(fleet)
        out.append(SharedState(fleet, interval_s=1.0))
    try:
        yield out
    finally:
        for fleet in fleets:
            await fleet.aclose()


async def stream(state: SharedState) -> list[dict[str, str]]:
    client = aioredis.Redis.from_url(state.fleet.cluster.redis_url, decode_responses=True)
    try:
        entries = await client.xrange(state.keys.changes)
    finally:
        await client.aclose()
    return [cast(dict[str, str], fields) for _id, fields in entries or []]


def changes(records: list[Record]) -> list[Record]:
    return [r for r in records if r["type"] == "change"]


async def test_the_first_sweep_learns_silently_then_each_flip_is_one_change(
    states: list[SharedState],
) -> None:
    a, _ = states
    first = [presence(f"u{i}", i % 2 == 0, 100, 1000) for i in range(5)]
    assert changes(await a.process(first, presence=False)) == []
    out = await a.process([presence("u1", True, 101, 2000)], presence=False)
    expected = change_record(presence("u1", True, 101, 2000), False, 1)  # type: ignore[arg-type]
    assert out == [expected]
    entries = await stream(a)
    assert len(entries) == 1
    entry = entries[0]
    assert entry["record"].encode() == orjson.dumps(expected)  # byte for byte the sink's record
    assert (entry["uid"], entry["online"], entry["version"], entry["member"]) == (
        "u1",
        "1",
        "1",
        "a",
    )
    assert entry["target"] == target_label(KEY)
    # same state again: nothing; a re-join (new join time) is a change
    assert changes(await a.process([presence("u1", True, 102, 3000)], presence=False)) == []
    rejoin = await a.process([presence("u1", True, 103, 4000, join=9)], presence=False)
    assert [(r["version"], r["previous_online"]) for r in rejoin] == [(2, True)]  # type: ignore[typeddict-item]


async def test_two_members_polling_one_uid_stream_its_flip_once(
    states: list[SharedState],
) -> None:
    a, b = states
    await a.process([presence("u", False, 1, 1000)], presence=False)
    won_a = changes(await a.process([presence("u", True, 2, 2000)], presence=False))
    won_b = changes(await b.process([presence("u", True, 2, 2001)], presence=False))
    assert len(won_a) + len(won_b) == 1 and len(await stream(a)) == 1
    # a slower member's older answer (offline, polled before the flip) is ignored
    assert changes(await b.process([presence("u", False, 2, 1500)], presence=False)) == []
    assert len(await stream(a)) == 1


async def test_a_uid_added_later_is_announced_and_errors_change_nothing(
    states: list[SharedState],
) -> None:
    a, b = states
    await a.process([presence("old", True, 1, 1000), error("failing", 1, 1000)], presence=True)
    out = await b.process(
        [presence("new", True, 2, 2000), error("old", 2, 2000), presence("failing", True, 2, 2000)],
        presence=False,
    )
    # "new" joined the list after the target's first sweep: announced from null, its version
    # its answer's polled_at (as the local tracker does: never an earlier membership's);
    # "failing" was listed from the start (its polls failed): learned silently, like "old".
    assert [(r["uid"], r["previous_online"], r["version"]) for r in changes(out)] == [  # type: ignore[typeddict-item]
        ("new", None, 2000)
    ]
    assert [r["type"] for r in out].count("error") == 1  # the error record is written
    assert changes(await a.process([presence("old", True, 3, 3000)], presence=False)) == []


async def test_a_redis_that_lost_its_data_learns_again_silently(
    states: list[SharedState], redis_server: RedisServer
) -> None:
    a, _ = states
    await a.process([presence(f"u{i}", False, 1, 1000) for i in range(20)], presence=False)
    redis_server.restart()  # empty: no persistence
    flipped = [presence(f"u{i}", True, 2, 2000) for i in range(20)]
    assert changes(await a.process(flipped, presence=False)) == []  # no burst of false changes
    assert await stream(a) == []


async def test_while_redis_is_down_records_flow_and_changes_wait(
    states: list[SharedState], redis_server: RedisServer
) -> None:
    a, _ = states
    await a.process([presence("u", False, 1, 1000)], presence=False)
    redis_server.stop()
    out = await a.process([presence("u", True, 2, 2000)], presence=True)
    assert [r["type"] for r in out] == ["presence"] and a.deferred == 1
    redis_server.start()  # empty again; a persisted Redis would report the flip now
    await a.process([presence("u", True, 3, 3000)], presence=True)


async def test_the_leader_forgets_uids_no_longer_listed(states: list[SharedState]) -> None:
    a, _ = states
    await a.process(
        [presence("gone", True, 1, 1000), presence("kept", True, 1, 1000)], presence=False
    )
    for sweep in range(2, 6):
        await a.process([presence("kept", True, sweep, 1000 * sweep)], presence=False)
    keep_from = a.forget_before(5 + 600)
    assert keep_from > 1
    assert await a.forget_stale([KEY], 5 + 600) == 1
    client = aioredis.Redis.from_url(a.fleet.cluster.redis_url, decode_responses=True)
    try:
        state = await client.hgetall(a.keys.state(target_label(KEY)))
    finally:
        await client.aclose()
    assert list(state) == ["kept"]
    assert orjson.loads(state["kept"])["online"] is True


async def test_concurrent_members_stream_each_flip_exactly_once(
    states: list[SharedState],
) -> None:
    """Both members report every observation of 40 UIDs over 12 sweeps, concurrently and in
    random order: the stream holds each real flip once, versions 1, 2, 3... per UID."""
    rng = random.Random(7)
    online = {f"u{i}": rng.random() < 0.5 for i in range(40)}
    flips: collections.Counter[str] = collections.Counter()
    for sweep in range(1, 13):
        if sweep > 1:
            for uid in online:
                if rng.random() < 0.3:
                    online[uid] = not online[uid]
                    flips[uid] += 1
        batch = [presence(uid, on, sweep, 1000 * sweep) for uid, on in online.items()]
        order = list(states)
        rng.shuffle(order)
        await asyncio.gather(*(s.process(batch, presence=False) for s in order))
    entries = await stream(states[0])
    versions: dict[str, list[int]] = collections.defaultdict(list)
    for entry in entries:
        versions[entry["uid"]].append(int(entry["version"]))
    assert {uid: len(v) for uid, v in versions.items()} == {u: n for u, n in flips.items() if n}
    assert all(v == list(range(1, len(v) + 1)) for v in versions.values())
    assert states[0].changes + states[1].changes == len(entries)


async def test_a_restarted_member_writes_again_what_its_sinks_may_not_have_flushed(
    states: list[SharedState],
) -> None:
    a, b = states
    await a.process(
        [presence("u1", False, 1, 1000), presence("u2", False, 1, 1000)], presence=False
    )
    await a.process([presence("u1", True, 2, 2000)], presence=False)
    await a.flushed()  # sweep 2 flushed: its change is delivered
    lost = changes(await a.process([presence("u2", True, 3, 3000)], presence=False))
    await b.process([presence("u1", False, 3, 3001)], presence=False)  # b's own: not a's
    # a is killed before it flushed sweep 3; it restarts under the same member name
    again = SharedState(a.fleet, interval_s=1.0)
    assert await again.undelivered() == lost
    await again.flushed()
    assert await SharedState(a.fleet, interval_s=1.0).undelivered() == []


async def test_a_member_with_another_shard_count_is_refused(members: Members) -> None:
    await members.add("a")
    cluster = ClusterConfig(redis_url=members.server.url, member="odd", account="acct")
    fleet = Fleet(cluster, account="acct")
    await fleet.start()
    members.fleets.append(fleet)
    odd = ShardLeases(fleet, shards=32, ttl_s=members.ttl_s)
    with pytest.raises(ConfigError, match=r"shards = 16 .* shards = 32"):
        await odd.start()
    await members.tick_all()
    assert len(members.leases["a"].held) == 16  # nothing of a's was touched


class ScriptedFleet:
    """Just what ShardLeases uses of a Fleet, answering LEASES ticks from a script of
    (Redis time in s, the shards this member holds) instead of Redis."""

    def __init__(self, ticks: list[tuple[float, set[int]]]) -> None:
        self.cluster = ClusterConfig(redis_url="redis://127.0.0.1:1/0", member="m")
        self.account, self.member = "acct", "m"
        self.clock = system_clock()
        self.clock_sync = ClockSync()
        self._ticks = ticks
        self.token = ""

    async def call(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> list[str]:
        now_s, held = self._ticks.pop(0)
        holders = [str(args[0]) if n in held else "other#1" for n in range(8)]
        return [f"{now_s * 1000:.0f}", "", *holders]


async def test_a_shard_given_away_well_before_a_sweep_is_not_polled_twice() -> None:
    fleet = ScriptedFleet(
        [
            (100.0, set(range(8))),  # sweep 1 starts at 100: all held
            (103.0, {0, 1, 2, 3}),  # a background tick hands 4..7 over 2 s before sweep 2
            (105.0, {0, 1, 2, 3}),  # sweep 2 starts at 105
            (110.01, {0, 1}),  # a background tick hands 2, 3 over just after sweep 3 started
            (110.02, {0, 1}),  # sweep 3's tick (late by 20 ms)
            (115.0, {0, 1}),  # sweep 4 starts
        ]
    )
    leases = ShardLeases(cast(Fleet, fleet), shards=8, ttl_s=10.0)
    assert (await leases.refresh(100.0)).shards == frozenset(range(8))
    await leases.tick()
    assert (await leases.refresh(105.0)).shards == {0, 1, 2, 3}  # the new holder saw 4..7
    await leases.tick()
    # the new holder's tick for sweep 3 may have come before the handover: polled once more
    assert (await leases.refresh(110.0)).shards == {0, 1, 2, 3}
    assert (await leases.refresh(115.0)).shards == {0, 1}
    assert (leases.handovers_out, leases.handovers_in) == (6, 0)


async def test_forgetting_reads_a_large_target_page_by_page(states: list[SharedState]) -> None:
    """1,500 UIDs (three pages of the hash), 1,200 of them no longer polled: all forgotten,
    through several small Redis calls (none long enough to count as Redis being down)."""
    a, _ = states
    await a.process([presence(f"u{i}", True, 1, 1000) for i in range(1500)], presence=False)
    later = 1 + 700
    await a.process([presence(f"u{i}", True, later, 2000) for i in range(300)], presence=False)
    calls = a.fleet.round_trips
    assert await a.forget_stale([KEY], later) == 1200
    assert a.fleet.round_trips - calls >= 4 and a.fleet.mode == "shared"


async def test_a_target_polled_again_after_its_state_expired_never_repeats_a_version(
    states: list[SharedState],
) -> None:
    a, _ = states
    await a.process([presence("u", False, 1, 1000)], presence=False)  # the fleet's first sweep
    await a.process([presence("u", True, 2, 2000)], presence=False)  # version 1
    label = target_label(KEY)
    client = aioredis.Redis.from_url(a.fleet.cluster.redis_url, decode_responses=True)
    try:  # a day without polls: the target's state and birth expire
        await client.delete(a.keys.state(label), a.keys.born(label))
    finally:
        await client.aclose()
    reborn = await a.process([presence("u", False, 50, 50_000)], presence=False)
    assert changes(reborn) == []  # learned silently, as any target's first sweep
    await a.process([presence("u", True, 51, 51_000)], presence=False)
    versions = [int(e["version"]) for e in await stream(a) if e["uid"] == "u"]
    assert versions == [1, 50_001]  # the second life starts at its first answer's polled_at
