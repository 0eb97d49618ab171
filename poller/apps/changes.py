"""Who decides a daemon's transitions: the daemon itself (:class:`LocalChanges`, with its state
file) or, in a sharded fleet, Redis (:class:`poller.apps.sharded.FleetSweeps`). The daemon's
sweep loop sees only the :class:`Changes` protocol; its query endpoint reads the same state
through :meth:`KnownStates.last_known`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from poller.core.changes import ChangeTracker, LastKnown
from poller.core.records import Record, TargetKey
from poller.engine.state import StateError, StateStore

from .logs import log_event

__all__ = ["Changes", "KnownStates", "LocalChanges", "StateUnavailable"]

log = logging.getLogger("poller.daemon")


class StateUnavailable(Exception):
    """The last known states cannot be read just now (a fleet's Redis is unreachable)."""


class KnownStates(Protocol):
    """Where a daemon's last known state of each UID can be read."""

    async def last_known(self, key: TargetKey, uids: Sequence[str]) -> list[LastKnown | None]:
        """Each of ``uids``' last known state in target ``key``, in order (``None``: not
        known). Raises :class:`StateUnavailable` when the state cannot be read now."""
        ...


class Changes(KnownStates, Protocol):
    """What a daemon's sweep asks of whoever decides its transitions."""

    #: Transitions decided so far.
    @property
    def changes(self) -> int: ...

    async def begin(self, number: int | None) -> Callable[[str], bool] | None:
        """At the start of sweep ``number`` (``None``: the next): which UIDs this daemon polls
        (``None``: all)."""
        ...

    async def process(self, records: list[Record]) -> list[Record]:
        """The records to write for one batch of sweep records."""
        ...

    async def end(self, sweep: int, targets: Sequence[TargetKey]) -> dict[TargetKey, int]:
        """After the sinks flushed ``sweep``: online UIDs per target."""
        ...

    def set_emit(self, emit: Literal["changes", "all"], *, presence: bool) -> None:
        """A reload changed ``[daemon] emit`` or the sinks (``presence``: some sink receives
        presence records)."""
        ...


class LocalChanges:
    """Transitions decided by this daemon alone, remembered in its state file.

    The state is saved only after the sinks flushed the records it reflects (see
    :mod:`poller.engine.state`)."""

    def __init__(
        self, emit: Literal["changes", "all"], store: StateStore, *, presence: bool
    ) -> None:
        self.tracker = ChangeTracker(emit, presence=presence)
        self._store = store

    @property
    def changes(self) -> int:
        return self.tracker.changes

    async def load(self) -> int:
        """Load the saved state; the number of the first sweep to run."""
        store = self._store
        snapshot = await asyncio.to_thread(store.load)
        self.tracker.restore(snapshot.targets, snapshot.sweep)
        log_event(
            log,
            logging.INFO,
            "state loaded",
            path=str(store.path),
            last_sweep=snapshot.sweep,
            targets=len(snapshot.targets),
            uids=sum(map(len, snapshot.targets.values())),
        )
        return snapshot.sweep + 1

    async def begin(self, number: int | None) -> Callable[[str], bool] | None:
        return None

    async def process(self, records: list[Record]) -> list[Record]:
        return self.tracker.process(records)

    async def end(self, sweep: int, targets: Sequence[TargetKey]) -> dict[TargetKey, int]:
        online = self.tracker.end_sweep(sweep, set(targets))
        delta = self.tracker.take_delta(sweep)
        try:
            await asyncio.to_thread(self._store.save, delta)
        except StateError as exc:
            self.tracker.save_failed()  # the next save rewrites everything
            log_event(log, logging.ERROR, "saving the state failed", error=str(exc))
        return online

    def set_emit(self, emit: Literal["changes", "all"], *, presence: bool) -> None:
        self.tracker.emit, self.tracker.presence = emit, presence

    async def last_known(self, key: TargetKey, uids: Sequence[str]) -> list[LastKnown | None]:
        tracker = self.tracker
        return [tracker.last_known(key, uid) for uid in uids]
