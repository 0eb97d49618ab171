"""Pure merging: one batch's answer (or failure) into exactly one record per requested UID.

Whatever the server sends, every UID of the batch gets one record: a ``presence`` record from
the first well-formed entry for it, or an ``error`` record (``MissingInResponse`` when the answer
left it out). Entries for UIDs we did not ask about, and repeated entries, are ignored and
counted; they can never be attributed to another UID.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from poller.core.errors import MalformedResponse, PollerError
from poller.core.records import Batch, ErrorRecord, PresenceRecord, Record

__all__ = ["MergeCounts", "error_records", "merge_answer", "validate_answer"]


@dataclass(slots=True)
class MergeCounts:
    extra: int = 0
    duplicated: int = 0
    missing: int = 0


def validate_answer(online_users: list[Any]) -> dict[str, tuple[bool, int]] | None:
    """Map ``UserId -> (online, join_time)`` from the first entry of each ID.

    Returns ``None`` when any entry has the wrong shape or types (then the whole answer is
    untrustworthy and the batch is retried as malformed). A missing or null ``JoinTime`` is 0.
    """
    seen: dict[str, tuple[bool, int]] = {}
    for entry in online_users:
        try:
            uid = entry["UserId"]
            online = entry["Online"]
            join_time = entry.get("JoinTime", 0)
        except (TypeError, KeyError, AttributeError):
            return None
        # Exact types (orjson builds exact ones): a bool is not a JoinTime, "true" not Online.
        if type(uid) is not str or type(online) is not bool:
            return None
        if type(join_time) is not int:
            if join_time is not None:
                return None
            join_time = 0
        if uid not in seen:
            seen[uid] = (online, join_time)
    return seen


def merge_answer(
    batch: Batch,
    online_users: list[Any],
    *,
    request_id: str,
    sweep: int,
    polled_at: int,
    counts: MergeCounts | None = None,
) -> list[Record]:
    """Records for every UID of ``batch`` from a well-formed answer.

    Raises :class:`MalformedResponse` if an entry has the wrong shape.
    """
    by_uid = validate_answer(online_users)
    if by_uid is None:
        raise MalformedResponse(
            "OnlineUsers entries have the wrong shape or types",
            http_status=200,
            request_id=request_id,
        )
    app_id, group_id = batch.target.app_id, batch.target.group_id
    out: list[Record] = []
    missing = 0
    for uid in batch.uids:
        found = by_uid.get(uid)
        if found is None:
            missing += 1
            error: ErrorRecord = {
                "type": "error",
                "sweep": sweep,
                "app_id": app_id,
                "group_id": group_id,
                "uid": uid,
                "code": "MissingInResponse",
                "message": "the answer did not include this user ID",
                "polled_at": polled_at,
                "request_id": request_id,
            }
            out.append(error)
        else:
            presence: PresenceRecord = {
                "type": "presence",
                "sweep": sweep,
                "app_id": app_id,
                "group_id": group_id,
                "uid": uid,
                "online": found[0],
                "join_time": found[1],
                "polled_at": polled_at,
                "request_id": request_id,
            }
            out.append(presence)
    if counts is not None:
        counts.missing += missing
        counts.duplicated += len(online_users) - len(by_uid)
        # Batch UIDs are distinct, so the keys of by_uid are the matched ones plus the extras.
        counts.extra += len(by_uid) - (len(batch.uids) - missing)
    return out


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
    out: list[Record] = []
    for uid in batch.uids:
        rec = ErrorRecord(
            type="error",
            sweep=sweep,
            app_id=batch.target.app_id,
            group_id=batch.target.group_id,
            uid=uid,
            code=code,
            message=message,
            polled_at=polled_at,
        )
        if isinstance(http_status, int):
            rec["http_status"] = http_status
        if isinstance(request_id, str) and request_id:
            rec["request_id"] = request_id
        if attempts is not None:
            rec["attempts"] = attempts
        out.append(rec)
    return out
