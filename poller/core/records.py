"""Records poller emits (JSON Lines, one object per line), the batch they come from, the local
record codes, and the only functions that build records.

Records are plain ``TypedDict`` s: dicts at run time (cheap to build, serialised by orjson
without a conversion step), precisely typed for mypy. Times are epoch milliseconds, UTC.

A target is identified by its API, app and group (:attr:`Target.key`); records carry all three,
so state, sinks and the fleet can key on the full identity whatever backend answered.

A ``change`` record carries ``version``: a per-(target, UID) transition counter, the
idempotency key of a change (sinks and the fleet de-duplicate on target, ``uid`` and
``version``). The states learned in the daemon's (or fleet's) first sweep are version 0 and
emit no record; each transition (a flip, a re-join) increments the version by one. A UID that
joins a known target later, or any UID of a target added later (either may have been
forgotten, absent from a sweep's input, and listed again), starts at the epoch milliseconds of
its first answer (a change record from ``previous_online: null`` carries it when the UID is
announced), so its versions never repeat those of an earlier membership. Every
change record has ``version >= 1``. The daemon persists versions, so they keep growing across
restarts; a re-emitted change (a crash after the sinks were written but before the state was
saved) repeats its version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, NotRequired, TypeAlias, TypedDict

from .apis import API_ACTIONS, APP_WIDE_ACTIONS, LEGACY_API

if TYPE_CHECKING:
    from .errors import PollerError

__all__ = [
    "API_ACTIONS",
    "APP_WIDE_ACTIONS",
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "INVALID_USER_ID",
    "LEGACY_API",
    "MISSING_IN_RESPONSE",
    "Batch",
    "ChangeRecord",
    "ErrorRecord",
    "PresenceRecord",
    "Record",
    "Target",
    "TargetKey",
    "change_record",
    "error_record",
    "error_records",
    "presence_record",
    "target_key",
]


# Local record codes (the cloud's own ``Code`` strings are used as they come).
#: A user ID that is never sent: empty, a ``,``, control characters, too long, undecodable.
INVALID_USER_ID: Final = "InvalidUserId"
#: The answer left this user ID out (after one re-poll).
MISSING_IN_RESPONSE: Final = "MissingInResponse"
#: Not sent, or cancelled in flight, because poller is stopping.
CANCELLED: Final = "Cancelled"
#: Not polled before the sweep's deadline.
DEADLINE_EXCEEDED: Final = "DeadlineExceeded"

TargetKey: TypeAlias = tuple[str, str, str | None]
"""``(api, app_id, group_id)``: what identifies a target in state, sinks and the fleet."""


@dataclass(frozen=True, slots=True)
class Target:
    """One message group of one interactive-messaging app, and the API that asks about it.

    ``group_id`` is ``None`` for app-wide actions. ``data_center`` (``DataCenter`` of the newer
    API family) routes the call but is not part of the identity: an app lives in one data
    center.
    """

    app_id: str
    group_id: str | None = None
    api: str = LEGACY_API
    data_center: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.app_id:
            raise ValueError("a target needs an app_id")
        if self.api not in API_ACTIONS:
            raise ValueError(f"unknown API {self.api!r}; one of {', '.join(sorted(API_ACTIONS))}")
        if self.api in APP_WIDE_ACTIONS:
            if self.group_id is not None:
                raise ValueError(f"{self.api} asks about a whole app: a target has no group_id")
        elif not self.group_id:
            raise ValueError(f"{self.api} needs a group_id")

    @property
    def key(self) -> TargetKey:
        return (self.api, self.app_id, self.group_id)

    def __str__(self) -> str:
        where = f"{self.app_id}/{self.group_id}" if self.group_id is not None else self.app_id
        return where if self.api == LEGACY_API else f"{self.api}:{where}"


@dataclass(frozen=True, slots=True)
class Batch:
    """Distinct, valid user IDs of one target (at most the API's batch size), one request."""

    target: Target
    uids: tuple[str, ...]


class _TargetUid(TypedDict):
    """What every record has: its sweep, the target's identity and the user ID."""

    sweep: int
    api: str
    app_id: str
    group_id: str | None
    uid: str


class PresenceRecord(_TargetUid):
    type: Literal["presence"]
    online: bool
    join_time: int | None
    polled_at: int
    request_id: str
    #: A lookup's answer: how old it is (ms; from the cache, or just now).
    age_ms: NotRequired[int]


class ErrorRecord(_TargetUid):
    type: Literal["error"]
    code: str
    message: str
    polled_at: int
    http_status: NotRequired[int]
    request_id: NotRequired[str]
    attempts: NotRequired[int]
    age_ms: NotRequired[int]


class ChangeRecord(_TargetUid):
    type: Literal["change"]
    online: bool
    previous_online: bool | None
    join_time: int | None
    polled_at: int
    version: int


Record: TypeAlias = PresenceRecord | ErrorRecord | ChangeRecord


def target_key(record: Record) -> TargetKey:
    """The identity of the target a record belongs to."""
    return (record["api"], record["app_id"], record["group_id"])


def presence_record(
    target: Target,
    uid: str,
    online: bool,
    join_time: int | None,
    *,
    sweep: int,
    polled_at: int,
    request_id: str,
) -> PresenceRecord:
    return {
        "type": "presence",
        "sweep": sweep,
        "api": target.api,
        "app_id": target.app_id,
        "group_id": target.group_id,
        "uid": uid,
        "online": online,
        "join_time": join_time,
        "polled_at": polled_at,
        "request_id": request_id,
    }


def error_record(
    target: Target,
    uid: str,
    code: str,
    message: str,
    *,
    sweep: int,
    polled_at: int,
    http_status: int | None = None,
    request_id: str | None = None,
    attempts: int | None = None,
) -> ErrorRecord:
    record: ErrorRecord = {
        "type": "error",
        "sweep": sweep,
        "api": target.api,
        "app_id": target.app_id,
        "group_id": target.group_id,
        "uid": uid,
        "code": code,
        "message": message,
        "polled_at": polled_at,
    }
    if http_status is not None:
        record["http_status"] = http_status
    if request_id:
        record["request_id"] = request_id
    if attempts is not None:
        record["attempts"] = attempts
    return record


def error_records(
    batch: Batch,
    error: PollerError | None,
    *,
    sweep: int,
    polled_at: int,
    attempts: int | None = None,
    code: str | None = None,
    message: str | None = None,
) -> list[Record]:
    """One error record per UID of ``batch``, carrying the cloud's code/status when known."""
    code = code or (error.code if error is not None else "Error")
    message = message or (error.message if error is not None else "")
    http_status = getattr(error, "http_status", None)
    request_id = getattr(error, "request_id", None)
    return [
        error_record(
            batch.target,
            uid,
            code,
            message,
            sweep=sweep,
            polled_at=polled_at,
            http_status=http_status if isinstance(http_status, int) else None,
            request_id=request_id if isinstance(request_id, str) else None,
            attempts=attempts,
        )
        for uid in batch.uids
    ]


def change_record(
    presence: PresenceRecord, previous_online: bool | None, version: int
) -> ChangeRecord:
    """The change a presence record shows against the UID's previous state; ``version`` is the
    UID's transition counter after this change (>= 1)."""
    return {
        "type": "change",
        "sweep": presence["sweep"],
        "api": presence["api"],
        "app_id": presence["app_id"],
        "group_id": presence["group_id"],
        "uid": presence["uid"],
        "online": presence["online"],
        "previous_online": previous_online,
        "join_time": presence["join_time"],
        "polled_at": presence["polled_at"],
        "version": version,
    }
