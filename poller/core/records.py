"""Records poller emits (JSON Lines, one object per line) and the batch they come from.

Records are plain ``TypedDict`` s: dicts at run time (cheap to build, serialised by orjson
without a conversion step), precisely typed for mypy. Times are epoch milliseconds, UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NotRequired, TypeAlias, TypedDict

__all__ = [
    "Batch",
    "ChangeRecord",
    "ErrorRecord",
    "PresenceRecord",
    "Record",
    "Target",
]


@dataclass(frozen=True, slots=True)
class Target:
    """One message group of one interactive-messaging app."""

    app_id: str
    group_id: str

    def __str__(self) -> str:
        return f"{self.app_id}/{self.group_id}"


@dataclass(frozen=True, slots=True)
class Batch:
    """At most 20 distinct, valid user IDs of one target, polled with one request."""

    target: Target
    uids: tuple[str, ...]


class PresenceRecord(TypedDict):
    type: Literal["presence"]
    sweep: int
    app_id: str
    group_id: str
    uid: str
    online: bool
    join_time: int
    polled_at: int
    request_id: str


class ErrorRecord(TypedDict):
    type: Literal["error"]
    sweep: int
    app_id: str
    group_id: str
    uid: str
    code: str
    message: str
    polled_at: int
    http_status: NotRequired[int]
    request_id: NotRequired[str]
    attempts: NotRequired[int]


class ChangeRecord(TypedDict):
    type: Literal["change"]
    sweep: int
    app_id: str
    group_id: str
    uid: str
    online: bool
    previous_online: bool | None
    join_time: int
    polled_at: int


Record: TypeAlias = PresenceRecord | ErrorRecord | ChangeRecord
