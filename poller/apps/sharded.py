"""A daemon's part in a sharded fleet (``[cluster]`` with ``shard_targets = true``).

Imported only then (it imports :mod:`poller.fleet`, hence redis). What changes for the daemon:

* **Aligned sweeps.** Sweeps start at multiples of ``[daemon] interval_s`` on Redis's clock,
  and a sweep's number is that multiple's index, so sweep N is the same moment and the same
  number on every member. A sweep that overruns skips to the next aligned start.
* **Shards.** At each sweep start the member ticks its leases (:mod:`poller.fleet.shards`) and
  polls only the UIDs of the shards it holds.
* **Transitions** are decided in Redis (:mod:`poller.fleet.state`): the fleet's change stream
  gets each one exactly once; this member's sinks get those it decided. The local state file
  is not used (the lock on ``state_dir`` still is).
* **Discovery** is done by the leader, which shares each member list through Redis; the other
  members read it.
* **Queries** from state (``GET /v1/presence``) read the fleet's shared state: every member
  answers for every UID, whichever member polls it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal

from poller.config import PollerConfig
from poller.core.changes import LastKnown
from poller.core.errors import PollerError
from poller.core.records import Record, Target, TargetKey
from poller.engine.poller import Poller
from poller.engine.sinks import wants_presence
from poller.engine.work import WorkBuilder
from poller.fleet import FleetUnavailable
from poller.fleet.shards import ShardLeases
from poller.fleet.state import SharedState

from .changes import StateUnavailable
from .logs import log_event
from .metrics import Metrics, Readiness

__all__ = ["FleetSweeps"]

log = logging.getLogger("poller.daemon")

#: The leader forgets UIDs that left their lists at most this often (s).
FORGET_EVERY_S = 60.0


class FleetSweeps:
    """Aligned sweeps over this member's shards, with transitions decided in Redis."""

    def __init__(
        self,
        poller: Poller,
        config: PollerConfig,
        work: WorkBuilder,
        metrics: Metrics,
        readiness: Readiness,
    ) -> None:
        fleet, cluster = poller.fleet, config.cluster
        assert fleet is not None and cluster is not None
        self.fleet = fleet
        self.leases = ShardLeases(fleet, shards=cluster.shards, ttl_s=cluster.lease_ttl_s)
        self.state = SharedState(fleet, interval_s=config.daemon.interval_s)
        self.interval_s = config.daemon.interval_s
        self.presence = wants_presence(config.sinks, config.daemon.emit)
        self._poller = poller
        self._forgot_at = -math.inf
        self._start_s = 0.0  # the Redis time of the sweep next_sweep() scheduled
        work.discoverer = self._discover
        metrics.watch_shards(self.leases, self.state)
        readiness.shards = self.leases

    async def start(self) -> list[Record]:
        """Take this member's shards; the change records it decided before a restart that its
        sinks may not have flushed (to write again first)."""
        await self.leases.start()
        try:
            return await self.state.undelivered()
        except FleetUnavailable:
            return []

    async def leave(self) -> None:
        """Hand this member's shards to the others (at a stop signal, and at the end)."""
        await self.leases.leave()

    def reconfigure(self, config: PollerConfig) -> None:
        self.interval_s = self.state.interval_s = config.daemon.interval_s

    def set_emit(self, emit: Literal["changes", "all"], *, presence: bool) -> None:
        self.presence = presence

    @property
    def changes(self) -> int:
        """Transitions this member decided."""
        return self.state.changes

    # -- the schedule ---------------------------------------------------------------------------

    def next_sweep(self, last: int | None) -> tuple[int, float]:
        """The next aligned sweep after now (and after sweep ``last``): its number and its
        start on the local monotonic clock."""
        interval = self.interval_s
        aligned = math.floor(self.fleet.redis_time() / interval) + 1
        self._start_s = aligned * interval  # on Redis's clock, for begin()
        start = self.fleet.local_time(self._start_s)
        # Numbers only grow (a longer interval after a reload gives smaller multiples).
        number = aligned if last is None or aligned > last else last + 1
        return number, start

    # -- one sweep ------------------------------------------------------------------------------

    async def begin(self, number: int | None) -> Callable[[str], bool]:
        """Tick the leases: which UIDs sweep ``number`` polls (those of the shards held)."""
        start_s = None if number is None else self._start_s
        return (await self.leases.refresh(start_s)).keep()

    async def process(self, records: list[Record]) -> list[Record]:
        return await self.state.process(records, presence=self.presence)

    async def end(self, sweep: int, targets: Sequence[TargetKey]) -> dict[TargetKey, int]:
        """After the sinks flushed the sweep: online UIDs per target among this member's
        results; the leader also forgets the UIDs that left their lists, about once a minute."""
        online = self.state.take_online()
        await self.state.flushed()  # the daemon flushed the sinks before calling this
        now = self.fleet.clock.monotonic()
        if self.leases.leader and now - self._forgot_at >= FORGET_EVERY_S:
            self._forgot_at = now
            try:
                gone = await self.state.forget_stale(targets, sweep)
            except FleetUnavailable:
                pass
            else:
                if gone:
                    log_event(log, logging.INFO, "forgot UIDs no longer listed", uids=gone)
        return online

    # -- queries --------------------------------------------------------------------------------

    async def last_known(self, key: TargetKey, uids: Sequence[str]) -> list[LastKnown | None]:
        """The fleet's last known state of ``uids`` (whoever polled them), from Redis."""
        try:
            return await self.state.last_known(key, uids)
        except FleetUnavailable as exc:
            raise StateUnavailable(
                "cannot read the fleet's shared state: Redis is unreachable"
            ) from exc

    # -- discovery ------------------------------------------------------------------------------

    async def _discover(self, target: Target) -> list[str]:
        if self.leases.leader:
            members = await self._poller.discover(target)
            try:
                await self.state.publish_members(target, members)
            except FleetUnavailable as exc:
                log_event(
                    log,
                    logging.WARNING,
                    "could not share the member list with the fleet",
                    target=str(target),
                    error=str(exc),
                )
            return members
        try:
            shared = await self.state.read_members(target)
        except FleetUnavailable as exc:
            raise PollerError(f"cannot read the leader's member list: {exc}") from exc
        if shared is None:
            raise PollerError("the fleet's leader has not shared a member list yet")
        return shared
