"""Pure merging: one batch's answer (or failure) into exactly one record per requested UID.

Whatever the server sends, every UID of the batch gets one record: a ``presence`` record from
the first well-formed entry for it, or an ``error`` record (``MissingInResponse`` when the answer
left it out). Entries for UIDs we did not ask about, and repeated entries, are ignored and
counted; they can never be attributed to another UID.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .apis import api_spec
from .errors import MalformedResponse
from .records import (
    MISSING_IN_RESPONSE,
    Batch,
    Record,
    error_record,
    error_records,
    presence_record,
)

__all__ = ["MergeCounts", "error_records", "merge_answer", "validate_answer"]


@dataclass(slots=True)
class MergeCounts:
    extra: int = 0
    duplicated: int = 0
    missing: int = 0


def validate_answer(online_users: list[Any]) -> dict[str, tuple[bool, int]] | None:
    """Map ``UserId -> (online, join_time)`` from the first entry of each ID (the current API
    family's entries, ``{UserId, Online}``, have no ``JoinTime``).

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
    target = batch.target
    join_times = api_spec(target.api).join_time  # the current family's answers carry none
    out: list[Record] = []
    missing = 0
    for uid in batch.uids:
        found = by_uid.get(uid)
        if found is None:
            missing += 1
            out.append(
                error_record(
                    target,
                    uid,
                    MISSING_IN_RESPONSE,
                    "the answer did not include this user ID",
                    sweep=sweep,
                    polled_at=polled_at,
                    request_id=request_id,
                )
            )
        else:
            out.append(
                presence_record(
                    target,
                    uid,
                    found[0],
                    found[1] if join_times else None,
                    sweep=sweep,
                    polled_at=polled_at,
                    request_id=request_id,
                )
            )
    if counts is not None:
        counts.missing += missing
        counts.duplicated += len(online_users) - len(by_uid)
        # Batch UIDs are distinct, so the keys of by_uid are the matched ones plus the extras.
        counts.extra += len(by_uid) - (len(batch.uids) - missing)
    return out
