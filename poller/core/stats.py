"""Counters of a sweep, the observer hooks metrics plug into, and attempt outcome labels."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from poller.core.errors import (
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
from poller.core.merge import MergeCounts

__all__ = ["Observer", "SweepStats", "outcome_of"]


@dataclass(slots=True)
class SweepStats:
    """Counters of one sweep (a live object while the sweep runs; read it for progress)."""

    sweep: int
    started_at: float = 0.0
    finished_at: float | None = None
    uids_seen: int = 0
    records: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    first_attempts: int = 0
    retries: int = 0
    throttled: int = 0
    forbidden_requests: int = 0
    batches_ok: int = 0
    batches_failed: int = 0
    duplicates_in_input: int = 0
    #: New connections the builtin HTTP transport opened during the sweep (0 otherwise).
    connections_opened: int = 0
    merge: MergeCounts = field(default_factory=MergeCounts)
    fatal: PollerError | None = None
    stopped: bool = False

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


class Observer(Protocol):
    """Hooks for metrics; called on the event loop, so keep them cheap."""

    def request_done(self, outcome: str, duration_s: float) -> None: ...

    def retried(self, reason: str) -> None: ...

    def rate_waited(self, seconds: float) -> None: ...


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
