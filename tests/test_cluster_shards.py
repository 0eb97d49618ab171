"""``poller cluster status`` of a sharded fleet: who holds which shard, the leader, free shards.

Real members (:class:`Fleet` + :class:`ShardLeases`) on a real ``redis-server``; the status is
read with :func:`read_cluster` as ``poller cluster status`` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from poller.config import ClusterConfig
from poller.fleet import Fleet
from poller.fleet.shards import ShardLeases
from poller.fleet.status import ClusterView, read_cluster, render_cluster
from tests.redisserver import RedisServer

pytestmark = pytest.mark.slow

SHARDS = 8
TTL_S = 5.0
ACTIONS = ("BatchGetOnlineUsers",)


def cluster(server: RedisServer, member: str, **changes: Any) -> ClusterConfig:
    return ClusterConfig(
        redis_url=server.url,
        member=member,
        account="acct",
        shards=SHARDS,
        lease_ttl_s=TTL_S,
        **changes,
    )


@contextlib.asynccontextmanager
async def members(server: RedisServer, names: Sequence[str]) -> AsyncIterator[list[ShardLeases]]:
    """Started members, one ``ShardLeases`` each, converged: every shard held by its owner."""
    fleets: list[Fleet] = []
    leases: list[ShardLeases] = []
    try:
        for name in names:
            fleet = Fleet(cluster(server, name), account="acct")
            fleets.append(fleet)
            await fleet.start()
            lease = ShardLeases(fleet, shards=SHARDS, ttl_s=TTL_S)
            leases.append(lease)
            await lease.start()
        await converge(leases)
        yield leases
    finally:
        for lease in leases:
            await lease.aclose()
        for fleet in fleets:
            await fleet.aclose()


async def converge(leases: Sequence[ShardLeases]) -> None:
    """Tick every member until nobody's shards change (instead of waiting for renewals): a
    holder hands a shard over at its own tick, its new owner sees it at the next one."""
    for _ in range(5):
        before = [lease.held for lease in leases]
        for lease in leases:
            await lease.tick()
        if [lease.held for lease in leases] == before:
            return
    raise AssertionError(f"the shard leases did not settle: {list(leases)}")


async def status(server: RedisServer) -> tuple[ClusterView, str]:
    view = await read_cluster(cluster(server, "reader"), "acct", ACTIONS)
    return view, render_cluster(view)


def held_in_view(view: ClusterView) -> dict[str, frozenset[int]]:
    assert view.shards is not None
    return {h.member: h.shards for h in view.shards.holders if h.shards}


def shards_section(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("shards:"))
    return lines[start:]


def holder_row(section: Sequence[str], member: str) -> list[str]:
    return next(line.split() for line in section if line.split()[:1] == [member])


async def test_status_shows_who_holds_which_shard_and_the_leader(
    redis_server: RedisServer,
) -> None:
    async with members(redis_server, ("a", "b", "c")) as leases:
        view, text = await status(redis_server)
        assert view.shards is not None
        shards = view.shards
        assert shards.total == SHARDS and shards.free == 0
        assert shards.fleet == "presence" and shards.changes == 0
        held = held_in_view(view)
        assert held == {lease.fleet.member: lease.held for lease in leases if lease.held}
        assert sum(len(s) for s in held.values()) == SHARDS
        assert frozenset().union(*held.values()) == frozenset(range(SHARDS))
        leader = next(lease.fleet.member for lease in leases if lease.leader)
        assert shards.leader == leader
        for holder in shards.holders:
            # Every member ticked just now: renewed (or handed over) moments ago, and live.
            assert holder.tick_age_s is not None and 0.0 <= holder.tick_age_s < TTL_S
            if holder.shards:
                assert holder.lease_age_s is not None and 0.0 <= holder.lease_age_s < TTL_S

        # The text: the member and budget lines first, then the shards section.
        assert text.index("budget used (slots handed out):") < text.index("\nshards:")
        section = shards_section(text)
        assert f"{SHARDS} in fleet 'presence', 0 free" in section[0]
        assert any(line.split() == ["leader:", leader] for line in section)
        assert any(line.split()[:3] == ["change", "stream:", "0"] for line in section)
        for lease in leases:  # tokens are random: a member may hold no shard at all
            row = holder_row(section, lease.fleet.member)
            assert row[1] == str(len(lease.held))
            if lease.held:
                assert row[3] == "s" and 0.0 <= float(row[2]) < TTL_S  # "<age> s"
            else:
                assert row[2] == "-"


async def test_the_lease_age_is_the_time_since_the_last_renewal(
    redis_server: RedisServer,
) -> None:
    async with members(redis_server, ("a", "b")) as leases:
        # Renewals come every TTL/3 (>= 1.5 s here); converge() has just renewed every lease.
        await asyncio.sleep(0.3)
        view, _ = await status(redis_server)
        assert view.shards is not None
        ages = {h.member: h.lease_age_s for h in view.shards.holders if h.shards}
        assert ages and all(a is not None and 0.25 <= a < 1.5 for a in ages.values()), ages
        await converge(leases)  # a tick renews: the age starts again
        view, _ = await status(redis_server)
        assert view.shards is not None
        assert all(
            h.lease_age_s is not None and h.lease_age_s < 0.25
            for h in view.shards.holders
            if h.shards
        )


async def test_a_member_that_leaves_hands_its_shards_to_the_others(
    redis_server: RedisServer,
) -> None:
    async with members(redis_server, ("a", "b", "c")) as leases:
        leaving = next(lease for lease in leases if lease.leader)
        staying = [lease for lease in leases if lease is not leaving]
        await leaving.leave()
        view, text = await status(redis_server)
        assert view.shards is not None
        # Handed over at once: nothing free, nothing left with the member that left.
        assert view.shards.free == 0
        held = held_in_view(view)
        assert leaving.fleet.member not in held
        assert sum(len(s) for s in held.values()) == SHARDS
        # The leader lease, too, went straight to a member still there.
        assert view.shards.leader in {lease.fleet.member for lease in staying}
        assert f"leader: {view.shards.leader}" in text

        await converge(staying)
        view, text = await status(redis_server)
        assert view.shards is not None and view.shards.free == 0
        held = held_in_view(view)
        assert held == {lease.fleet.member: lease.held for lease in staying if lease.held}
        assert sum(len(lease.held) for lease in staying) == SHARDS
        new_leader = next(lease.fleet.member for lease in staying if lease.leader)
        assert view.shards.leader == new_leader
        section = shards_section(text)
        assert all(line.split()[:1] != [leaving.fleet.member] for line in section)
        assert sum(int(holder_row(section, m)[1]) for m in held) == SHARDS


async def test_free_shards_and_no_section_without_shard_targets(
    redis_server: RedisServer,
) -> None:
    async with members(redis_server, ("a",)) as (lease,):
        assert lease.held == frozenset(range(SHARDS))
        await lease.leave()  # the last member: nobody to hand over to, the leases go
        view, text = await status(redis_server)
        assert view.shards is not None
        assert view.shards.free == SHARDS and held_in_view(view) == {}
        assert view.shards.leader is None
        assert f"{SHARDS} in fleet 'presence', {SHARDS} free" in text

        plain = await read_cluster(
            cluster(redis_server, "reader", shard_targets=False), "acct", ACTIONS
        )
        assert plain.shards is None and "shards:" not in render_cluster(plain)
