"""Change detection across sweeps (pure): remember each UID's last known presence, report
transitions, and hand the daemon what to persist.

Semantics, per target (API, app, group) and UID:

* a ``change`` record is emitted when the state differs from the last *known* one: ``online``
  flips or ``join_time`` changes (a re-join). Error records never change the known state (a
  failed poll says nothing about presence); they only mark the UID as still present;
* a target's first sweep learns states silently (no record; version 0 in the tracker's first
  sweep, else a fresh base as below, since a target can come back too). A UID that was in the
  list from the target's first sweep but whose polls all failed so far is learned silently on
  its first success too; a UID added to a known target later gets a change record with
  ``previous_online: None``, unless ``emit = "all"`` already writes its presence. Its version
  starts at the ``polled_at`` of that first answer (epoch ms), not at 1: the tracker does not
  remember forgotten UIDs, and a UID listed again after it was forgotten must not repeat the
  versions of its earlier membership (sinks de-duplicate on them);
* each transition increments the UID's ``version`` (see :mod:`poller.core.records`);
* UIDs absent from a sweep's input are forgotten after it (an error record counts as present),
  and so are targets absent from it, so a shrinking list does not leak memory.

The tracker keeps track of what changed since the state was last saved (:meth:`take_delta`),
so a store upserts only the changed rows of a million-UID target at each sweep.

In memory (never persisted) each UID also carries when its state was last confirmed: the
``polled_at`` and sweep of its last successful poll, which :meth:`ChangeTracker.last_known`
answers with (the query endpoint's answers from state). A state loaded at start has neither
until the UID is polled again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeAlias

from .records import (
    INVALID_USER_ID,
    ChangeRecord,
    ErrorRecord,
    PresenceRecord,
    Record,
    TargetKey,
    change_record,
    target_key,
)

__all__ = ["ChangeTracker", "LastKnown", "StateDelta", "UidState", "joined_version"]

UidState: TypeAlias = tuple[bool | None, int | None, int, bool]
"""What is remembered (and persisted) of a UID: ``(online, join_time, version, announce)``;
``online`` is ``None`` while every poll of the UID failed, and ``announce`` says whether its
first success is reported (a UID added after the target's first sweep)."""

# In memory, each UID also carries (not persisted) the last sweep it was seen in, then the
# polled_at and sweep of its last successful poll (None after a restore, until polled again):
# (online, join_time, version, announce, seen_sweep, polled_at, polled_sweep).
_Entry: TypeAlias = tuple[bool | None, int | None, int, bool, int, int | None, int | None]


class LastKnown(NamedTuple):
    """A UID's last known presence, as a daemon answers it from its state."""

    #: ``None`` while every poll of the UID failed (its presence is not known).
    online: bool | None
    join_time: int | None
    #: Epoch ms of the last poll that found this state; ``None`` when not known (a state
    #: loaded at start, until the UID is polled again).
    polled_at: int | None
    #: The sweep of that poll, when known.
    sweep: int | None


def joined_version(polled_at: int) -> int:
    """The version of a UID's first state in a known target: the epoch ms of that answer.

    Larger than any version the UID had before it was forgotten (an earlier membership began
    at 0 or at an earlier answer's ms, and gained one per transition, at most one per sweep),
    so a change's ``(target, uid, version)`` never repeats."""
    return max(1, polled_at)


@dataclass(slots=True)
class StateDelta:
    """What changed since the last :meth:`ChangeTracker.take_delta`: the rows to upsert, the
    UIDs and targets to delete; ``full`` replaces the whole stored state with ``upserts``."""

    sweep: int
    full: bool = False
    upserts: dict[TargetKey, dict[str, UidState]] = field(default_factory=dict)
    deletes: dict[TargetKey, set[str]] = field(default_factory=dict)
    dropped: set[TargetKey] = field(default_factory=set)

    def __len__(self) -> int:
        return sum(map(len, self.upserts.values())) + sum(map(len, self.deletes.values()))


class ChangeTracker:
    """Per-target memory of each UID's last known state, keyed by the target's identity."""

    def __init__(
        self, emit: Literal["changes", "all"] = "changes", *, presence: bool | None = None
    ) -> None:
        self.emit = emit
        #: Pass presence records on (some sink receives them); default: ``emit == "all"``.
        self.presence = emit == "all" if presence is None else presence
        self._state: dict[TargetKey, dict[str, _Entry]] = {}
        self._first_sweep: dict[TargetKey, int] = {}
        # The tracker's first sweep (or the one its saved state was taken after): a target
        # first seen later learns at a fresh version base (see joined_version).
        self._origin: int | None = None
        self._dirty: dict[TargetKey, set[str]] = {}
        self._deleted: dict[TargetKey, set[str]] = {}
        self._dropped: set[TargetKey] = set()
        self._full = True  # nothing saved yet: the first delta replaces whatever is stored
        self.changes = 0

    # -- records ---------------------------------------------------------------------------

    def process(self, records: list[Record]) -> list[Record]:
        """Records to write for one batch of sweep records (in order)."""
        out: list[Record] = []
        for rec in records:
            if rec["type"] == "presence":
                self._presence(rec, out)
            else:
                if rec["type"] == "error":
                    self._error(rec)
                out.append(rec)
        return out

    def _target(self, rec: PresenceRecord | ErrorRecord) -> tuple[TargetKey, dict[str, _Entry]]:
        key = target_key(rec)
        states = self._state.get(key)
        if states is None:
            states = self._state[key] = {}
            self._first_sweep[key] = rec["sweep"]
            if self._origin is None:
                self._origin = rec["sweep"]
        return key, states

    def _set(self, key: TargetKey, states: dict[str, _Entry], uid: str, entry: _Entry) -> None:
        states[uid] = entry
        dirty = self._dirty.get(key)
        if dirty is None:
            dirty = self._dirty[key] = set()
        dirty.add(uid)

    def _presence(self, rec: PresenceRecord, out: list[Record]) -> None:
        key, states = self._target(rec)
        uid, online, join_time, sweep = rec["uid"], rec["online"], rec["join_time"], rec["sweep"]
        prev = states.get(uid)
        emit_all = self.emit == "all"
        if self.presence:
            out.append(rec)
        polled_at = rec["polled_at"]
        if prev is None or prev[0] is None:  # the first known state of this UID
            new = self._first_sweep[key] != sweep if prev is None else prev[3]
            # Silent in a target's first sweep; version 0 only for the tracker's first targets:
            # a target added later (or forgotten and listed again) may have had versions.
            late = new or self._first_sweep[key] != self._origin
            version = joined_version(polled_at) if late else 0
            entry = (online, join_time, version, False, sweep, polled_at, sweep)
            self._set(key, states, uid, entry)
            if new and not emit_all:
                self.changes += 1
                out.append(change_record(rec, None, version))
            return
        if prev[0] == online and prev[1] == join_time:
            # unchanged: nothing to save, but the state is confirmed as of this poll
            states[uid] = (online, join_time, prev[2], prev[3], sweep, polled_at, sweep)
            return
        version = prev[2] + 1
        self._set(key, states, uid, (online, join_time, version, False, sweep, polled_at, sweep))
        self.changes += 1
        change: ChangeRecord = change_record(rec, prev[0], version)
        out.append(change)

    def _error(self, rec: ErrorRecord) -> None:
        if rec["code"] == INVALID_USER_ID:
            return  # never sent, never polled: no state to keep (and it may not be valid text)
        key, states = self._target(rec)
        uid, sweep = rec["uid"], rec["sweep"]
        prev = states.get(uid)
        if prev is None:  # present, state unknown: learned (or announced) on its first success
            announce = self._first_sweep[key] != sweep
            self._set(key, states, uid, (None, None, 0, announce, sweep, None, None))
        elif prev[4] != sweep:  # keep, not forget (a failed poll confirms nothing)
            states[uid] = (prev[0], prev[1], prev[2], prev[3], sweep, prev[5], prev[6])

    # -- end of sweep ----------------------------------------------------------------------

    def end_sweep(self, sweep: int, targets: set[TargetKey]) -> dict[TargetKey, int]:
        """Forget UIDs (and targets) not seen in ``sweep``; return online counts per target."""
        for key in list(self._state):
            if key not in targets:
                del self._state[key]
                del self._first_sweep[key]
                self._dirty.pop(key, None)
                self._deleted.pop(key, None)
                self._dropped.add(key)
        online: dict[TargetKey, int] = {}
        for key, states in self._state.items():
            stale = [uid for uid, entry in states.items() if entry[4] != sweep]
            if stale:
                dirty = self._dirty.get(key, set())
                deleted = self._deleted.setdefault(key, set())
                for uid in stale:
                    del states[uid]
                    dirty.discard(uid)
                    deleted.add(uid)
            online[key] = sum(1 for entry in states.values() if entry[0])
        return online

    # -- persistence -----------------------------------------------------------------------

    def take_delta(self, sweep: int) -> StateDelta:
        """What changed since the last call (everything after :meth:`restore` failed or on the
        first call), and forget it: the caller saves it or calls :meth:`save_failed`."""
        delta = StateDelta(sweep, full=self._full)
        if self._full:
            delta.upserts = {k: {u: e[:4] for u, e in s.items()} for k, s in self._state.items()}
            delta.dropped = set(self._dropped)
        else:
            for key, uids in self._dirty.items():
                states = self._state[key]
                delta.upserts[key] = {uid: states[uid][:4] for uid in uids}
            delta.deletes, delta.dropped = self._deleted, self._dropped
        self._dirty, self._deleted, self._dropped = {}, {}, set()
        self._full = False
        return delta

    def save_failed(self) -> None:
        """The last delta was not saved: the next one rewrites the whole state."""
        self._full = True

    def restore(self, targets: dict[TargetKey, dict[str, UidState]], sweep: int) -> None:
        """Start from a saved state (taken after sweep ``sweep``); nothing is dirty."""
        self._state = {
            key: {uid: (*state, sweep, None, None) for uid, state in states.items()}
            for key, states in targets.items()
        }
        self._first_sweep = dict.fromkeys(self._state, sweep)
        self._origin = sweep if sweep > 0 else None  # sweep 0: nothing was ever saved
        self._dirty, self._deleted, self._dropped = {}, {}, set()
        self._full = False

    def known(self, key: TargetKey) -> dict[str, UidState]:
        """The remembered state of one target's UIDs (a copy)."""
        return {uid: entry[:4] for uid, entry in self._state.get(key, {}).items()}

    def last_known(self, key: TargetKey, uid: str) -> LastKnown | None:
        """``uid``'s last known presence in target ``key`` (``None``: not remembered)."""
        states = self._state.get(key)
        entry = None if states is None else states.get(uid)
        if entry is None:
            return None
        return LastKnown(entry[0], entry[1], entry[5], entry[6])
