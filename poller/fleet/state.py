"""The fleet's shared state: each UID's last known presence, and one change stream.

A sharded fleet (``[cluster] shard_targets``) decides transitions in Redis, not in each member:
every batch of poll results goes through the CHANGES script (:mod:`poller.fleet.scripts`),
which compares each UID's result with the state in the target's hash, sets the new state,
bumps the transition ``version`` and appends the change record to the fleet's stream, in one
step. So each transition is decided exactly once, even when two members poll the same UID
during a handover, and a member restarted mid-fleet continues from the fleet's state.

* The stream (``poller:{A}:fleet:F:changes``, capped with ``XADD MAXLEN ~``) is the fleet's
  exactly-once change output.
* A member's own sinks get the change records that member decided, with the same ``version``
  (de-duplicate by target, UID and version). After its sinks flushed a sweep, the member notes
  the last stream entry it decided (``delivered:<member>``); a member restarted under the same
  ``[cluster] member`` name first writes again the records it decided after that entry, so a
  crash between deciding and flushing loses nothing (at least once). Under the default name
  (``hostname-pid``) a restart is a new member, and those records are only in the stream.
* While Redis is unreachable no transition can be decided: the member keeps writing presence
  and error records, and its next sweep after Redis is back reports what changed meanwhile
  (a flip and its flip back within the outage are not seen).
* A Redis that lost its data starts every target afresh: the next sweep learns the states
  silently, so transitions during the loss are missed but no burst of false ones appears.
* Any member reads any UID's last known state (:meth:`SharedState.last_known`, one HMGET),
  whichever member polled it: the query endpoint of every member answers for every UID.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Final, cast

import orjson
import redis.asyncio as aioredis

from poller.core.changes import LastKnown
from poller.core.records import (
    INVALID_USER_ID,
    ChangeRecord,
    PresenceRecord,
    Record,
    Target,
    TargetKey,
    change_record,
    target_key,
)

from .budget import Fleet, FleetUnavailable
from .scripts import CHANGES, FORGET, FleetKeys

__all__ = ["STREAM_MAXLEN", "SharedState", "target_label"]

log = logging.getLogger("poller.fleet")

#: The change stream keeps about this many entries (``XADD MAXLEN ~``).
STREAM_MAXLEN: Final = 100_000
#: A target's state outlives its last poll by at least this long (s).
STATE_TTL_S: Final = 86_400.0
#: A UID not polled for this long (and at least 3 sweeps) left its list: the leader forgets it.
FORGET_AFTER_S: Final = 600.0
#: UIDs checked per FORGET call.
FORGET_CHUNK: Final = 500

_PREVIOUS: Final[dict[str, bool | None]] = {"true": True, "false": False, "null": None}


def target_label(key: TargetKey) -> str:
    """A target as it appears in key names and stream entries: ``api/app_id/group_id``."""
    api, app_id, group_id = key
    return f"{api}/{app_id}/{group_id or ''}"


def _head(rec: PresenceRecord) -> str:
    """The change record's JSON up to the UID (as orjson writes :func:`change_record`)."""
    dumps = orjson.dumps
    return (
        b'{"type":"change","sweep":%d,"api":%s,"app_id":%s,"group_id":%s,"uid":'
        % (rec["sweep"], dumps(rec["api"]), dumps(rec["app_id"]), dumps(rec["group_id"]))
    ).decode()


class SharedState:
    """Decides the transitions of a sharded fleet in Redis; see the module docstring."""

    def __init__(
        self, fleet: Fleet, *, interval_s: float, stream_maxlen: int = STREAM_MAXLEN
    ) -> None:
        self.fleet = fleet
        self.keys = FleetKeys(fleet.account, fleet.cluster.name)
        self.interval_s = interval_s
        self.stream_maxlen = stream_maxlen
        self.changes = 0  # transitions this member decided
        self.deferred = 0  # poll results whose transitions could not be decided (Redis down)
        self._ttl_ms = int(max(STATE_TTL_S, 10 * interval_s) * 1000)
        self._online: dict[TargetKey, int] = {}
        self._warned_sweep = -1
        self._decided: str | None = None  # the last stream entry this member decided
        self._delivered: str | None = None  # ... whose record its sinks flushed

    # -- poll results ---------------------------------------------------------------------------

    async def process(self, records: list[Record], *, presence: bool) -> list[Record]:
        """The records a member writes for one batch of sweep records: its presence records
        (with ``presence``), error records and the transitions the fleet's state shows."""
        out: list[Record] = []
        by_target: dict[TargetKey, list[Record]] = {}
        for rec in records:
            if rec["type"] == "presence":
                if presence:
                    out.append(rec)
                key = target_key(rec)
                if rec["online"]:
                    self._online[key] = self._online.get(key, 0) + 1
                else:
                    self._online.setdefault(key, 0)
                by_target.setdefault(key, []).append(rec)
            else:
                out.append(rec)
                if rec["type"] == "error" and rec["code"] != INVALID_USER_ID:
                    by_target.setdefault(target_key(rec), []).append(rec)
        for key, recs in by_target.items():
            out += await self._compare_and_set(key, recs)
        return out

    async def _compare_and_set(self, key: TargetKey, recs: list[Record]) -> list[Record]:
        label = target_label(key)
        head = ""
        sweep = recs[0]["sweep"]
        args: list[str | int] = []
        for rec in recs:
            if rec["type"] == "presence":
                head = head or _head(rec)
                result = "1" if rec["online"] else "0"
                join_time = "null" if rec["join_time"] is None else str(rec["join_time"])
            else:
                result, join_time = "e", "null"
            uid = rec["uid"]
            args += [uid, orjson.dumps(uid).decode(), result, join_time, str(rec["polled_at"])]
        if not head:  # errors only: no change record can come of them
            head = "{}"
        keys = [self.keys.state(label), self.keys.born(label), self.keys.changes, self.keys.origin]
        head_args: list[str | int] = [
            sweep,
            self.fleet.member,
            self.stream_maxlen,
            self._ttl_ms,
            head,
            label,
        ]
        try:
            reply = await self.fleet.call(CHANGES, keys, head_args + args)
        except FleetUnavailable as exc:
            self._defer(sweep, len(recs), exc)
            return []
        out: list[Record] = []
        for index, previous, version, stream_id in reply:
            self._decided = str(stream_id)
            rec = recs[int(index) - 1]
            assert rec["type"] == "presence"
            change: ChangeRecord = change_record(rec, _PREVIOUS[previous], int(version))
            out.append(change)
        self.changes += len(out)
        return out

    def _defer(self, sweep: int, count: int, exc: FleetUnavailable) -> None:
        self.deferred += count
        if self._warned_sweep != sweep:
            self._warned_sweep = sweep
            log.warning(
                "cannot decide transitions while Redis is unreachable: presence and error"
                " records are still written; the next sweep after Redis is back reports what"
                " changed meanwhile",
                extra={"fields": {"sweep": sweep, "error": str(exc)}},
            )

    # -- at least once for the member's own sinks ---------------------------------------------

    async def flushed(self) -> None:
        """The sinks flushed everything written so far: note the last entry decided."""
        decided = self._decided
        if decided is None or decided == self._delivered:
            return
        key = self.keys.delivered(self.fleet.member)
        try:
            await self.fleet.command(lambda r: r.set(key, decided, px=self._ttl_ms))
        except FleetUnavailable:
            return  # noted at the next sweep; a restart meanwhile writes a few records twice
        self._delivered = decided

    async def undelivered(self, limit: int = 100_000) -> list[Record]:
        """The change records this member (by name) decided after the last entry its sinks
        flushed: a restarted member writes them first. Empty when nothing is noted. The stream
        is read a page at a time, each its own Redis call."""
        key = self.keys.delivered(self.fleet.member)
        start = await self.fleet.command(lambda r: r.get(key))
        if start is None:
            return []
        records: list[Record] = []
        cursor = str(start)
        while len(records) < limit:
            page = await self.fleet.command(
                functools.partial(_stream_page, stream=self.keys.changes, after=cursor)
            )
            if not page:
                break
            for stream_id, fields in page:
                cursor = stream_id
                if fields.get("member") == self.fleet.member:
                    records.append(cast(Record, orjson.loads(fields["record"])))
                    self._decided = stream_id
        return records[:limit]

    async def last_known(self, key: TargetKey, uids: Sequence[str]) -> list[LastKnown | None]:
        """Each of ``uids``' last known state in target ``key`` as the fleet knows it (``None``:
        not known), with one HMGET; :class:`FleetUnavailable` when Redis cannot be read."""
        if not uids:
            return []
        state_key = self.keys.state(target_label(key))
        names = list(uids)
        # The client decodes replies (decode_responses=True); redis-py's types cannot say so.
        raws = cast(list[str | None], await self.fleet.command(lambda r: r.hmget(state_key, names)))
        return [None if raw is None else _last_known(raw) for raw in raws]

    def take_online(self) -> dict[TargetKey, int]:
        """Online UIDs per target among this member's results since the last call."""
        online, self._online = self._online, {}
        return online

    # -- discovery through the leader -----------------------------------------------------------

    async def publish_members(self, target: Target, uids: Sequence[str]) -> None:
        """The leader shares the member list it listed for ``target``."""
        key = self.keys.discovered(target_label(target.key))
        value = orjson.dumps(list(uids))
        await self.fleet.command(lambda r: r.set(key, value, px=self._ttl_ms))

    async def read_members(self, target: Target) -> list[str] | None:
        """The member list the leader last shared for ``target`` (None: none yet)."""
        key = self.keys.discovered(target_label(target.key))
        raw = await self.fleet.command(lambda r: r.get(key))
        if raw is None:
            return None
        return cast(list[str], orjson.loads(raw))

    # -- forgetting UIDs that left their lists --------------------------------------------------

    def forget_before(self, sweep: int) -> int:
        """The oldest sweep whose UIDs are kept when ``sweep`` has just ended."""
        sweeps = max(3, math.ceil(FORGET_AFTER_S / self.interval_s))
        return sweep - sweeps

    async def forget_stale(self, targets: Sequence[TargetKey], sweep: int) -> int:
        """Forget the UIDs of ``targets`` not polled for a while (run by the leader). The hash
        is read a page at a time (each its own Redis call, well inside the call timeout, so a
        million-UID target neither stalls Redis nor looks like an unreachable one)."""
        keep = self.forget_before(sweep)
        gone = 0
        for key in targets:
            state_key = self.keys.state(target_label(key))
            cursor = 0
            while True:
                cursor, stale = await self.fleet.command(
                    functools.partial(_stale_page, key=state_key, keep=keep, cursor=cursor)
                )
                if stale:
                    gone += int(await self.fleet.call(FORGET, [state_key], [keep, *stale]))
                if not cursor:
                    break
        return gone


def _last_known(raw: str) -> LastKnown:
    """A UID's state as the CHANGES script writes it (its JSON)."""
    state = orjson.loads(raw)
    online = state.get("online")
    if online is None:  # every poll failed so far: its polled_at is a failed poll's
        return LastKnown(None, None, None, None)
    return LastKnown(
        bool(online), state.get("join_time"), state.get("polled_at"), state.get("sweep")
    )


async def _stale_page(
    redis: aioredis.Redis, *, key: str, keep: int, cursor: int
) -> tuple[int, list[str]]:
    """One HSCAN page of the state hash ``key``: the next cursor (0: done) and the UIDs on it
    last polled before sweep ``keep``."""
    # The client decodes replies (decode_responses=True); redis-py's types cannot say so.
    cursor, page = cast(
        tuple[int, dict[str, str]], await redis.hscan(key, cursor, count=FORGET_CHUNK)
    )
    return cursor, [uid for uid, raw in page.items() if orjson.loads(raw)["sweep"] < keep]


async def _stream_page(
    redis: aioredis.Redis, *, stream: str, after: str
) -> list[tuple[str, dict[str, str]]]:
    """Up to 1,000 entries of ``stream`` after the entry ``after``."""
    # The client decodes replies (decode_responses=True); redis-py's types cannot say so.
    return cast(
        list[tuple[str, dict[str, str]]],
        await redis.xrange(stream, min=f"({after}", count=1000),
    )
