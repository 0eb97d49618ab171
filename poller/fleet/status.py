"""``poller cluster status``: what Redis knows about a fleet, read without joining it.

Members (their heartbeats and what they say about themselves) and, per API action, the grants
of the last second (the sliding-window log) and of the last minute (the per-second counters).
Times are Redis's, like everything the fleet decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from redis.exceptions import RedisError

from poller.config import ClusterConfig, mask_url

from .budget import REDIS_TIMEOUT_S, FleetUnavailable, open_redis
from .scripts import Keys

__all__ = ["BudgetUse", "ClusterView", "MemberView", "read_cluster", "render_cluster"]


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
class ClusterView:
    account: str
    redis_url: str  # masked
    members: tuple[MemberView, ...]
    budgets: tuple[BudgetUse, ...]


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
    except (RedisError, OSError, TimeoutError) as exc:
        raise FleetUnavailable(f"{type(exc).__name__}: {exc}") from exc
    finally:
        await client.aclose()
    return ClusterView(
        account=account,
        redis_url=mask_url(cluster.redis_url),
        members=tuple(members),
        budgets=tuple(budgets),
    )


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
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
        for row in (header, *rows):
            lines.append(
                "  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
            )
    lines.append("budget used (slots handed out):")
    for b in view.budgets:
        lines.append(
            f"  {b.action}: {b.last_second} in the last second, {b.last_minute} in the last minute"
        )
    return "\n".join(line.rstrip() for line in lines) + "\n"
