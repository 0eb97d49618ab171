"""UID shards with failover: which member of a fleet polls which UIDs.

Every UID belongs to one of ``[cluster] shards`` shards by a stable hash of its bytes
(:func:`shard_of`: BLAKE2b, the same in every process and on every host; never Python's salted
``hash``). Members hold shards through leases in Redis (:data:`~poller.fleet.scripts.LEASES`):
a lease is the holder's token set with ``PX lease_ttl_s``; the holder renews it (checking the
token) every third of the TTL, and a member that dies loses it when the TTL runs out. Who
should hold which shard is decided by rendezvous hashing over the live members, inside the
same script, so a member joining or leaving moves only its own share and every member computes
the same answer from the same membership.

A shard whose owner changes is handed over by its holder at the holder's next tick: the lease
is set to the new owner's token in one step, so it is never free in between. Every member ticks
at the start of every sweep (the same instant on Redis's clock for all) and polls the shards it
holds after that tick, plus those it gave away since the sweep's start (less
:data:`MARGIN_S` for the members' clock estimates). So a shard handed over by a background tick
that fell between the new holder's sweep-start tick and the old holder's is still polled, by
the old holder (a duplicate poll when the new holder saw it too, never a gap), while a handover
before the sweep started costs nothing: the new holder's sweep-start tick saw it. A member
that stops (SIGTERM) gives every lease to the remaining members first
(:meth:`ShardLeases.leave`); a member killed outright leaves its shards dark until its leases
expire, and the others take them at their next tick.

The leader lease (the same tick) picks one member to list the members of ``discover = true``
targets for the whole fleet.

While Redis is unreachable a member keeps polling the shards it last held: if the others took
them meanwhile, that is a duplicate poll, which the shared state's compare-and-set absorbs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from poller.core.errors import ConfigError

from .budget import Fleet, FleetUnavailable
from .scripts import LEASES, FleetKeys

__all__ = ["HeldShards", "ShardLeases", "shard_of", "token_member"]

log = logging.getLogger("poller.fleet")

#: Leases are renewed this many times per TTL.
RENEWALS_PER_TTL: Final = 3
#: Shards given away less than this (s, Redis time) before a sweep's start are polled once more.
MARGIN_S: Final = 0.25


def shard_of(uid: str, shards: int) -> int:
    """The shard of ``uid`` among ``shards``: stable across processes, hosts and versions."""
    digest = hashlib.blake2b(uid.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def token_member(token: str) -> str:
    """The member name of a lease token (``member#nonce``)."""
    return token.rpartition("#")[0] or token


@dataclass(frozen=True, slots=True)
class HeldShards:
    """The shards a member polls in one sweep."""

    shards: frozenset[int]
    total: int

    def keep(self) -> Callable[[str], bool]:
        """A predicate: does this member poll ``uid``?"""
        shards, total = self.shards, self.total
        if len(shards) == total:
            return lambda uid: True
        return lambda uid: shard_of(uid, total) in shards


class ShardLeases:
    """This member's shard leases; see the module docstring.

    ::

        leases = ShardLeases(fleet, shards=64, ttl_s=10.0)
        await leases.start()
        held = await leases.refresh()  # at each sweep start
        ...
        await leases.leave()  # on SIGTERM, before draining
    """

    def __init__(
        self,
        fleet: Fleet,
        *,
        shards: int,
        ttl_s: float,
        lead: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.fleet = fleet
        self.keys = FleetKeys(fleet.account, fleet.cluster.name)
        self.shards = shards
        self.ttl_s = ttl_s
        self.token = f"{fleet.member}#{secrets.token_hex(4)}"
        self._lead = lead
        self._rng = rng or random.Random()
        self._held: frozenset[int] = frozenset()
        self._lost_at: dict[int, float] = {}  # shard -> Redis time (s) it was given away
        self._tick_at = 0.0  # Redis time (s) of the last tick
        self._holders: tuple[str, ...] = ()
        self.leader = False
        self.leader_token = ""
        self.handovers_in = 0
        self.handovers_out = 0
        self.ticks = 0
        self.left = False
        self._leaving: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        #: Called after every tick that changed the shards held (for metrics and logs).
        self.on_change: Callable[[ShardLeases], None] | None = None

    def __repr__(self) -> str:
        return f"<ShardLeases {self.token!r} holds {len(self._held)}/{self.shards}>"

    @property
    def held(self) -> frozenset[int]:
        return self._held

    @property
    def holders(self) -> tuple[str, ...]:
        """The holder token of every shard ("" for a free one) as of the last tick."""
        return self._holders

    async def start(self) -> None:
        """Take this member's shards now (when Redis answers) and renew them in the background.

        Raises :class:`~poller.core.errors.ConfigError` when the fleet runs with other
        ``shards`` or ``lease_ttl_s``."""
        with contextlib.suppress(FleetUnavailable):
            await self.tick()
        self._task = asyncio.create_task(self._renewals(), name="poller-fleet-leases")

    async def refresh(self, start_s: float | None = None) -> HeldShards:
        """Tick now, at the start of the sweep that starts at ``start_s`` (Redis time; default:
        now): the shards held after the tick and those given away since that start (see the
        module docstring)."""
        await self._tick_logged()  # Redis down: keep polling what was held (no gap)
        if not self.ticks:  # Redis never answered: nobody can say who polls what, so poll all
            return HeldShards(frozenset(range(self.shards)), self.shards)
        since = (self._tick_at if start_s is None else start_s) - MARGIN_S
        lost = {n for n, at in self._lost_at.items() if at >= since}
        self._lost_at.clear()  # polled once more at most
        return HeldShards(self._held | lost, self.shards)

    async def leave(self) -> None:
        """Stop renewing and hand every lease to the remaining members (best effort).

        Idempotent; a caller cancelled meanwhile (a stop signal's task) does not cancel the
        handover, which a later call waits for."""
        if self._leaving is None:
            self._leaving = asyncio.ensure_future(self._leave())
        await asyncio.shield(self._leaving)

    async def _leave(self) -> None:
        self.left = True
        await self._stop_renewals()
        try:
            await self.tick(leaving=True)
        except (FleetUnavailable, ConfigError) as exc:
            log.warning(
                "could not hand the shards over (Redis unreachable): they move when the leases"
                " expire",
                extra={"fields": {"error": str(exc), "lease_ttl_s": self.ttl_s}},
            )
        else:
            log.info(
                "shards handed over to the other members",
                extra={"fields": {"member": self.fleet.member}},
            )

    async def aclose(self) -> None:
        """Stop renewing (the leases expire; use :meth:`leave` to hand them over first)."""
        await self._stop_renewals()

    async def _stop_renewals(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _renewals(self) -> None:
        period = self.ttl_s / RENEWALS_PER_TTL
        while True:
            await self.fleet.clock.sleep(period * (0.9 + 0.1 * self._rng.random()))
            await self._tick_logged()

    async def _tick_logged(self) -> None:
        """A tick that never raises: Redis down is the fleet's to report; a fleet of another
        shape (which :meth:`start` refuses) is logged."""
        try:
            await self.tick()
        except FleetUnavailable:
            pass
        except ConfigError as exc:
            log.error("%s", exc, extra={"fields": {"member": self.fleet.member}})

    async def tick(self, *, leaving: bool = False) -> None:
        """One lease tick (raises :class:`FleetUnavailable` when Redis cannot be used)."""
        keys = [self.keys.shard_members, self.keys.leader, self.keys.shape]
        keys += [self.keys.shard(n) for n in range(self.shards)]
        args = [self.token, int(self.ttl_s * 1000), "1" if leaving else "0"]
        args.append("1" if self._lead and not leaving else "0")
        clock = self.fleet.clock
        sent = clock.monotonic()
        reply = await self.fleet.call(LEASES, keys, args)
        if reply[0] == "shape":
            shards, _, ttl_ms = str(reply[1]).partition(":")
            raise ConfigError(
                f"fleet {self.fleet.cluster.name!r} runs with shards = {shards} and lease_ttl_s ="
                f" {int(ttl_ms) / 1000:g}, this member with shards = {self.shards} and"
                f" lease_ttl_s = {self.ttl_s:g}: every member must use the same (stop the whole"
                " fleet to change them)",
                key="cluster.shards",
            )
        self.fleet.clock_sync.observe(sent, clock.monotonic(), int(reply[0]) / 1000.0)
        self.ticks += 1
        self.leader_token = str(reply[1])
        self.leader = self.leader_token == self.token
        holders = tuple(str(h) for h in reply[2:])
        self._holders = holders
        held = frozenset(n for n, h in enumerate(holders) if h == self.token)
        self._update(held, int(reply[0]) / 1000.0)

    def _update(self, held: frozenset[int], now_s: float) -> None:
        self._tick_at = now_s
        before = self._held
        if held == before:
            return
        for n in before - held:
            self._lost_at[n] = now_s
        for n in held - before:
            self._lost_at.pop(n, None)
        gained, lost = len(held - before), len(before - held)
        if self.ticks > 1 or before:  # the first tick's shards are not a handover
            self.handovers_in += gained
        self.handovers_out += lost
        self._held = held
        log.info(
            "shards now held: %d of %d (+%d, -%d)",
            len(held),
            self.shards,
            gained,
            lost,
            extra={"fields": {"member": self.fleet.member, "shards_held": len(held)}},
        )
        if self.on_change is not None:
            self.on_change(self)
