"""``poller cluster status``: what Redis knows about a fleet, read without joining it.

Members (their heartbeats and what they say about themselves) and, per API action, the grants
of the last second (the sliding-window log) and of the last minute (the per-second counters).
A fleet that splits its targets' UIDs (``shard_targets``) also shows its shard leases: the
shards each member holds and how long ago it last renewed them, the leader, the free shards,
and the length of the fleet's change stream. Times are Redis's, like everything the fleet
decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from poller.config import ClusterConfig, mask_url

from .budget import REDIS_TIMEOUT_S, FleetUnavailable, open_redis
from .scripts import FleetKeys, Keys
from .shards import RENEWALS_PER_TTL, token_member

__all__ = [
    "BudgetUse",
    "ClusterView",
    "MemberView",
    "ShardHolder",
    "ShardsView",
    "read_cluster",
    "render_cluster",
]


@dataclass(frozen=True, slots=True)
class MemberView:
    member: str
    heartbeat_age_s: float
    fleet: str
    host: str
    pid: str
    mode: str
    grants: str  # slots the member's shared meters used, as it last reported
    round_trips: str


@dataclass(frozen=True, slots=True)
class BudgetUse:
    action: str
    last_second: int
    last_minute: int


@dataclass(frozen=True, slots=True)
class ShardHolder:
    """One member's shard leases (all its lease tokens together, by member name)."""

    member: str
    shards: frozenset[int]
    #: Time since the least recently renewed of its leases (lease TTL - PTTL); None when no
    #: lease of it has a TTL (or it holds none).
    lease_age_s: float | None
    #: Time since its last lease tick (the shard-members ZSET); None: not a live shard member.
    tick_age_s: float | None


@dataclass(frozen=True, slots=True)
class ShardsView:
    fleet: str
    total: int
    lease_ttl_s: float
    holders: tuple[ShardHolder, ...]  # members holding shards, then live ones holding none
    free: int  # shards without a lease
    leader: str | None  # the leader's member name; None: no leader lease
    changes: int  # entries in the fleet's change stream (XLEN)


@dataclass(frozen=True, slots=True)
class ClusterView:
    account: str
    redis_url: str  # masked
    members: tuple[MemberView, ...]
    budgets: tuple[BudgetUse, ...]
    shards: ShardsView | None = None  # None: the fleet does not shard its targets


async def read_cluster(cluster: ClusterConfig, account: str, actions: Sequence[str]) -> ClusterView:
    """Read the fleet of ``account``; raises :class:`FleetUnavailable` when Redis cannot be used."""
    keys = Keys(account)
    client = open_redis(cluster)
    try:
        async with asyncio.timeout(5 * REDIS_TIMEOUT_S):
            seconds, micros = await client.time()
            now_ms = seconds * 1000.0 + micros / 1000.0
            members = []
            # The client decodes replies (decode_responses=True); redis-py's types cannot say so.
            heartbeats = cast(
                list[tuple[str, float]], await client.zrange(keys.members, 0, -1, withscores=True)
            )
            for member, beat in heartbeats:
                info = cast(dict[str, str], await client.hgetall(keys.member(member)))
                members.append(
                    MemberView(
                        member=member,
                        heartbeat_age_s=max(0.0, (now_ms - beat) / 1000.0),
                        fleet=info.get("fleet", "?"),
                        host=info.get("host", "?"),
                        pid=info.get("pid", "?"),
                        mode=info.get("mode", "?"),
                        grants=info.get("grants", "?"),
                        round_trips=info.get("round_trips", "?"),
                    )
                )
            budgets = []
            for action in actions:
                budget = keys.budget(action)
                second = await client.zcount(budget.log, now_ms - 1000.0, now_ms)
                usage = cast(dict[str, str], await client.hgetall(budget.usage))
                oldest = int(now_ms // 1000) - 60
                minute = sum(int(n) for s, n in usage.items() if int(s) > oldest)
                budgets.append(BudgetUse(action, int(second), minute))
            shards = await _read_shards(client, cluster, account) if cluster.shard_targets else None
    except (RedisError, OSError, TimeoutError) as exc:
        raise FleetUnavailable(f"{type(exc).__name__}: {exc}") from exc
    finally:
        await client.aclose()
    return ClusterView(
        account=account,
        redis_url=mask_url(cluster.redis_url),
        members=tuple(members),
        budgets=tuple(budgets),
        shards=shards,
    )


async def _read_shards(client: aioredis.Redis, cluster: ClusterConfig, account: str) -> ShardsView:
    """The shard leases, leader and change stream of ``cluster``'s fleet, in one round trip."""
    keys = FleetKeys(account, cluster.name)
    total = cluster.shards
    ttl_ms = int(cluster.lease_ttl_s * 1000)  # as the members set it (ShardLeases.tick)
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.get(keys.leader)
    pipe.xlen(keys.changes)
    pipe.zrange(keys.shard_members, 0, -1, withscores=True)
    for n in range(total):
        pipe.get(keys.shard(n))
        pipe.pttl(keys.shard(n))
    # The client decodes replies (decode_responses=True); redis-py's types cannot say so.
    replies: list[Any] = await pipe.execute()
    seconds, micros = cast(tuple[int, int], replies[0])
    now_ms = seconds * 1000.0 + micros / 1000.0
    leader = cast(str | None, replies[1])
    changes = int(replies[2])
    ticks = cast(list[tuple[str, float]], replies[3])
    held: dict[str, set[int]] = {}
    ages: dict[str, float] = {}
    free = 0
    for n in range(total):
        token = cast(str | None, replies[4 + 2 * n])
        pttl = int(replies[5 + 2 * n])
        if token is None:
            free += 1
            continue
        member = token_member(token)
        held.setdefault(member, set()).add(n)
        if pttl >= 0:  # -1: no TTL (not set by a member); -2: expired since the GET
            age = max(0.0, (ttl_ms - pttl) / 1000.0)
            ages[member] = max(ages.get(member, 0.0), age)
    last_tick: dict[str, float] = {}
    for token, tick in ticks:
        if tick >= now_ms - ttl_ms:  # what LEASES counts as live
            member = token_member(token)
            last_tick[member] = max(last_tick.get(member, tick), tick)
    names = sorted(held) + sorted(set(last_tick) - set(held))
    holders = tuple(
        ShardHolder(
            member=name,
            shards=frozenset(held.get(name, ())),
            lease_age_s=ages.get(name),
            tick_age_s=(
                max(0.0, (now_ms - last_tick[name]) / 1000.0) if name in last_tick else None
            ),
        )
        for name in names
    )
    return ShardsView(
        fleet=cluster.name,
        total=total,
        lease_ttl_s=cluster.lease_ttl_s,
        holders=holders,
        free=free,
        leader=None if leader is None else token_member(leader),
        changes=changes,
    )


def _ranges(shards: frozenset[int], limit: int = 48) -> str:
    """``0-3,7,9-10``, cut after about ``limit`` characters."""
    parts: list[str] = []
    start = prev = -2
    for n in sorted(shards):
        if n != prev + 1:
            if prev >= 0:
                parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = n
        prev = n
    if prev >= 0:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    text = ",".join(parts)
    return text if len(text) <= limit else text[: text.rfind(",", 0, limit) + 1] + "..."


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        for row in (header, *rows)
    ]


def render_cluster(view: ClusterView) -> str:
    """The view as text for a terminal."""
    lines = [f"fleet budget {view.account!r} on {view.redis_url}"]
    lines.append(f"members seen in the last minute: {len(view.members)}")
    if view.members:
        header = ("member", "fleet", "host", "pid", "mode", "heartbeat", "grants", "round trips")
        rows = [
            (
                m.member,
                m.fleet,
                m.host,
                m.pid,
                m.mode,
                f"{m.heartbeat_age_s:.1f} s ago",
                m.grants,
                m.round_trips,
            )
            for m in view.members
        ]
        lines += _table(header, rows)
    lines.append("budget used (slots handed out):")
    for b in view.budgets:
        lines.append(
            f"  {b.action}: {b.last_second} in the last second, {b.last_minute} in the last minute"
        )
    if view.shards is not None:
        lines += _render_shards(view.shards)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _render_shards(s: ShardsView) -> list[str]:
    lines = [
        f"shards: {s.total} in fleet {s.fleet!r}, {s.free} free"
        f" (lease ttl {s.lease_ttl_s:g} s, renewed every {s.lease_ttl_s / RENEWALS_PER_TTL:.1f} s)",
        f"  leader: {s.leader if s.leader is not None else '(none)'}",
        f"  change stream: {s.changes} entries",
    ]
    if s.holders:
        header = ("member", "shards held", "lease age", "last tick", "which")
        rows = [
            (
                h.member,
                str(len(h.shards)),
                "-" if h.lease_age_s is None else f"{h.lease_age_s:.1f} s",
                "not live" if h.tick_age_s is None else f"{h.tick_age_s:.1f} s ago",
                _ranges(h.shards),
            )
            for h in s.holders
        ]
        lines += _table(header, rows)
    return lines
