"""Change detection across sweeps (pure): remember each UID's last presence, report flips.

A ``change`` record is emitted when a UID's ``online`` flips or its ``join_time`` changes (a
re-join) between two sweeps. Error records never change the remembered state (a failed poll
says nothing about presence). UIDs absent from a sweep are forgotten after it, so a UID list
that shrinks on reload does not leak memory.
"""

from __future__ import annotations

from typing import Literal

from .records import ChangeRecord, Record, TargetKey, change_record, target_key

__all__ = ["ChangeTracker"]


class ChangeTracker:
    """Per-target memory of ``uid -> (online, join_time, sweep)``, keyed by the target's
    identity (API, app, group)."""

    def __init__(self, emit: Literal["changes", "all"] = "changes") -> None:
        self.emit = emit
        self._state: dict[TargetKey, dict[str, tuple[bool, int | None, int]]] = {}
        self._first_sweep: dict[TargetKey, int] = {}
        self.changes = 0

    def process(self, records: list[Record]) -> list[Record]:
        """Records to write for one batch of sweep records (in order)."""
        out: list[Record] = []
        emit_all = self.emit == "all"
        for rec in records:
            if rec["type"] == "presence":
                key = target_key(rec)
                states = self._state.get(key)
                if states is None:
                    states = self._state[key] = {}
                    self._first_sweep[key] = rec["sweep"]
                first = self._first_sweep[key] == rec["sweep"]
                uid, online, join_time = rec["uid"], rec["online"], rec["join_time"]
                prev = states.get(uid)
                states[uid] = (online, join_time, rec["sweep"])
                if emit_all:
                    out.append(rec)
                # A flip or a re-join is a change; so is a UID new to a known target (added to
                # its list, or a new member). On a target's very first sweep state is learned.
                changed = prev is not None and (prev[0] != online or prev[1] != join_time)
                if changed or (prev is None and not first and not emit_all):
                    self.changes += 1
                    change: ChangeRecord = change_record(rec, None if prev is None else prev[0])
                    out.append(change)
            elif rec["type"] == "error":
                states = self._state.get(target_key(rec))
                if states is not None and rec["uid"] in states:
                    online, join_time, _ = states[rec["uid"]]
                    states[rec["uid"]] = (online, join_time, rec["sweep"])  # keep, not forget
                out.append(rec)
            else:
                out.append(rec)
        return out

    def end_sweep(self, sweep: int, targets: set[TargetKey]) -> dict[TargetKey, int]:
        """Forget UIDs (and targets) not seen in ``sweep``; return online counts per target."""
        for key in list(self._state):
            if key not in targets:
                del self._state[key]
                del self._first_sweep[key]
        online: dict[TargetKey, int] = {}
        for key, states in self._state.items():
            stale = [uid for uid, (_, _, s) in states.items() if s != sweep]
            for uid in stale:
                del states[uid]
            online[key] = sum(1 for on, _, _ in states.values() if on)
        return online
