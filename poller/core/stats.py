"""What happened, counted once: one frozen :class:`Attempt` event per request attempt, and the
counters fed from those events.

The retry loop (:mod:`poller.core.retry`) emits an :class:`Attempt` for every request it
makes, batches and discovery pages alike. Everything that counts requests listens to those
events: a sweep's :class:`SweepStats`, the daemon's :class:`Totals` and the Prometheus metrics,
so a request, a retry or a throttle is counted in exactly one place.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import (
    AttemptTimeout,
    AuthError,
    InvalidRequestError,
    MalformedResponse,
    NonceReusedError,
    PermissionDenied,
    PollerError,
    ThrottledError,
    TransportError,
)
from .merge import MergeCounts
from .records import Record

__all__ = ["Attempt", "AttemptCounts", "AttemptListener", "SweepStats", "Totals", "outcome_of"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request attempt, after its answer (or failure) is known."""

    #: The API action called, e.g. ``BatchGetOnlineUsers`` or ``ListMessageGroupUser``.
    action: str
    #: 1 for a first attempt; retries count on.
    number: int
    #: Low-cardinality result label (see :func:`outcome_of`): ``ok``, ``throttled``, ...
    outcome: str
    #: Seconds from sending to a parsed answer or an error.
    duration_s: float
    #: Seconds this attempt waited for its rate slot.
    rate_wait_s: float
    #: Why this attempt was made again (the previous attempt's code), ``None`` for a first one.
    retry_of: str | None = None
    #: The error, ``None`` when the attempt succeeded.
    error: PollerError | None = None
    #: The sweep it belongs to; ``None`` outside a sweep (discovery).
    sweep: int | None = None

    @property
    def throttled(self) -> bool:
        return isinstance(self.error, ThrottledError)

    @property
    def forbidden(self) -> bool:
        return isinstance(self.error, PermissionDenied)


AttemptListener = Callable[[Attempt], None]
"""Called on the event loop for every attempt; keep it cheap."""


def outcome_of(error: PollerError | None) -> str:
    """A low-cardinality label for one attempt's result."""
    if error is None:
        return "ok"
    for cls, name in _OUTCOMES:
        if isinstance(error, cls):
            return name
    return "server_error" if error.retriable else "client_error"


_OUTCOMES: tuple[tuple[type[PollerError], str], ...] = (
    (ThrottledError, "throttled"),
    (AuthError, "auth_error"),
    (PermissionDenied, "forbidden"),
    (InvalidRequestError, "invalid_request"),
    (NonceReusedError, "nonce_reused"),
    (AttemptTimeout, "timeout"),
    (TransportError, "connection_error"),
    (MalformedResponse, "malformed"),
)


@dataclass(slots=True, kw_only=True)
class AttemptCounts:
    """Request attempts counted from their :class:`Attempt` events (the one place that does)."""

    requests: int = 0
    first_attempts: int = 0
    retries: int = 0
    throttled: int = 0
    forbidden_requests: int = 0

    def on_attempt(self, event: Attempt) -> None:
        self.requests += 1
        if event.retry_of is not None:
            self.retries += 1
        elif event.number == 1:
            self.first_attempts += 1
        if event.throttled:
            self.throttled += 1
        if event.forbidden:
            self.forbidden_requests += 1


@dataclass(slots=True, kw_only=True)
class SweepStats(AttemptCounts):
    """Counters of one sweep (a live object while the sweep runs; read it for progress)."""

    sweep: int
    started_at: float = 0.0
    finished_at: float | None = None
    uids_seen: int = 0
    records: Counter[str] = field(default_factory=Counter)
    batches_ok: int = 0
    batches_failed: int = 0
    duplicates_in_input: int = 0
    #: New connections the builtin HTTP transport opened during the sweep (0 otherwise).
    connections_opened: int = 0
    merge: MergeCounts = field(default_factory=MergeCounts)
    fatal: PollerError | None = None
    stopped: bool = False

    def count_records(self, records: list[Record]) -> None:
        """Count records by status: ``presence`` or the error code (change records by type)."""
        counts = self.records
        presence = 0
        for record in records:
            if record["type"] == "presence":
                presence += 1
            else:
                counts[record["code"] if record["type"] == "error" else record["type"]] += 1
        if presence:
            counts["presence"] += presence

    @property
    def records_total(self) -> int:
        return sum(self.records.values())

    @property
    def duration_s(self) -> float:
        return (self.finished_at or self.started_at) - self.started_at

    def summary(self) -> dict[str, object]:
        return {
            "sweep": self.sweep,
            "duration_s": round(self.duration_s, 3),
            "records": self.records_total,
            "by_status": dict(sorted(self.records.items())),
            "requests": self.requests,
            "retries": self.retries,
            "throttled": self.throttled,
            "batches_ok": self.batches_ok,
            "batches_failed": self.batches_failed,
            "duplicates_in_input": self.duplicates_in_input,
            "connections_opened": self.connections_opened,
            "extra_in_response": self.merge.extra,
            "duplicated_in_response": self.merge.duplicated,
            "missing_in_response": self.merge.missing,
        }


@dataclass(slots=True, kw_only=True)
class Totals(AttemptCounts):
    """Running totals of a long-lived poller (the daemon's "stopped" line): every attempt,
    discovery included, and every finished sweep."""

    sweeps: int = 0
    records: int = 0
    changes: int = 0
    failed_batches: int = 0

    def on_sweep(self, stats: SweepStats, changes: int) -> None:
        self.sweeps += 1
        self.records += stats.records_total
        self.changes += changes
        self.failed_batches += stats.batches_failed
