"""Merging one batch's answer (or failure) into exactly one record per requested UID."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.core.errors import (
    ApiError,
    AttemptTimeout,
    MalformedResponse,
    PermissionDenied,
    TransportError,
    error_for_response,
)
from poller.core.merge import MergeCounts, error_records, merge_answer
from poller.core.records import Batch, Record, Target

TARGET = Target("app-1", "group-1")
BATCH = Batch(TARGET, ("u1", "u2", "u3"))


def entry(uid: Any, online: Any = True, join_time: Any = 1_764_100_000_000) -> dict[str, Any]:
    return {"UserId": uid, "Online": online, "JoinTime": join_time}


def merge(batch: Batch, answer: list[Any], counts: MergeCounts | None = None) -> list[Record]:
    return merge_answer(
        batch, answer, request_id="REQ-1", sweep=7, polled_at=1_764_100_012_345, counts=counts
    )


def by_uid(records: list[Record]) -> dict[str, Record]:
    out = {r["uid"]: r for r in records}
    assert len(out) == len(records), "a UID got two records"
    return out


def test_complete_answer_gives_one_presence_record_per_uid_in_batch_order() -> None:
    answer = [entry("u3", False, 0), entry("u1", True, 111), entry("u2", True, 222)]
    counts = MergeCounts()
    records = merge(BATCH, answer, counts)
    assert records == [
        {
            "type": "presence",
            "sweep": 7,
            "api": "BatchGetOnlineUsers",
            "app_id": "app-1",
            "group_id": "group-1",
            "uid": uid,
            "online": online,
            "join_time": join_time,
            "polled_at": 1_764_100_012_345,
            "request_id": "REQ-1",
        }
        for uid, online, join_time in [("u1", True, 111), ("u2", True, 222), ("u3", False, 0)]
    ]
    assert counts == MergeCounts(extra=0, duplicated=0, missing=0)


def test_missing_uid_gets_missing_in_response_error() -> None:
    counts = MergeCounts()
    records = by_uid(merge(BATCH, [entry("u1"), entry("u3")], counts))
    assert set(records) == {"u1", "u2", "u3"}
    missing = records["u2"]
    assert missing["type"] == "error"
    assert missing["code"] == "MissingInResponse"
    assert missing["message"]
    assert missing["sweep"] == 7
    assert missing["polled_at"] == 1_764_100_012_345
    assert missing.get("request_id") == "REQ-1"
    assert records["u1"]["type"] == records["u3"]["type"] == "presence"
    assert counts.missing == 1


def test_empty_answer_makes_every_uid_missing() -> None:
    counts = MergeCounts()
    records = merge(BATCH, [], counts)
    assert [r["uid"] for r in records] == ["u1", "u2", "u3"]
    assert {r["code"] for r in records if r["type"] == "error"} == {"MissingInResponse"}
    assert len([r for r in records if r["type"] == "error"]) == 3
    assert counts.missing == 3


def test_extra_uids_are_ignored_and_counted() -> None:
    counts = MergeCounts()
    answer = [entry("u1"), entry("intruder", False), entry("u2"), entry("u3"), entry("x2")]
    records = merge(BATCH, answer, counts)
    assert [r["uid"] for r in records] == ["u1", "u2", "u3"]
    assert all(r["type"] == "presence" for r in records)
    assert counts.extra == 2
    assert counts.missing == 0


def test_duplicate_entries_first_wins_and_counted() -> None:
    counts = MergeCounts()
    answer = [
        entry("u1", True, 100),
        entry("u2", False, 0),
        entry("u1", False, 999),
        entry("u3", True, 300),
        entry("u1", True, 555),
    ]
    records = by_uid(merge(BATCH, answer, counts))
    u1 = records["u1"]
    assert u1["type"] == "presence"
    assert (u1["online"], u1["join_time"]) == (True, 100)
    assert counts.duplicated == 2


def test_counts_accumulate_over_batches() -> None:
    counts = MergeCounts()
    merge(BATCH, [entry("u1"), entry("zz")], counts)
    merge(BATCH, [entry("u1"), entry("u1"), entry("u2"), entry("u3")], counts)
    assert counts == MergeCounts(extra=1, duplicated=1, missing=2)


@pytest.mark.parametrize(
    "join_time_entry",
    [
        pytest.param({"UserId": "u1", "Online": True, "JoinTime": None}, id="null"),
        pytest.param({"UserId": "u1", "Online": True}, id="absent"),
    ],
)
def test_join_time_null_or_absent_is_zero(join_time_entry: dict[str, Any]) -> None:
    records = merge(Batch(TARGET, ("u1",)), [join_time_entry])
    assert records[0]["type"] == "presence"
    assert records[0]["join_time"] == 0


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(entry("u1", online="true"), id="online-str"),
        pytest.param(entry("u1", online=1), id="online-int"),
        pytest.param(entry("u1", online=None), id="online-null"),
        pytest.param({"UserId": "u1", "JoinTime": 1}, id="online-absent"),
        pytest.param(entry("u1", join_time="1764100000000"), id="jointime-str"),
        pytest.param(entry("u1", join_time=1.5), id="jointime-float"),
        pytest.param(entry("u1", join_time=True), id="jointime-bool"),
        pytest.param(entry(1), id="userid-int"),
        pytest.param(entry(None), id="userid-null"),
        pytest.param({"Online": True, "JoinTime": 1}, id="userid-absent"),
        pytest.param(["u1", True, 1], id="entry-list"),
        pytest.param("u1", id="entry-str"),
        pytest.param(None, id="entry-null"),
    ],
)
def test_wrong_shape_is_malformed(bad: Any) -> None:
    # The bad entry sits after good ones: the whole answer is distrusted, not just that entry.
    answer = [entry("u2"), entry("u3"), bad]
    with pytest.raises(MalformedResponse) as info:
        merge(BATCH, answer, MergeCounts())
    assert info.value.retriable
    assert info.value.code == "MalformedResponse"
    assert info.value.request_id == "REQ-1"
    assert info.value.http_status == 200


def _err(r: Record) -> dict[str, Any]:
    assert r["type"] == "error"
    return dict(r)


def test_error_records_carry_api_error_details() -> None:
    error = error_for_response(
        http_status=403,
        code="Forbidden",
        message="User not authorized to operate on the specified resource.",
        request_id="REQ-403",
    )
    assert isinstance(error, PermissionDenied)
    records = error_records(BATCH, error, sweep=3, polled_at=42, attempts=1)
    assert [r["uid"] for r in records] == ["u1", "u2", "u3"]
    for r in records:
        assert _err(r) == {
            "type": "error",
            "sweep": 3,
            "api": "BatchGetOnlineUsers",
            "app_id": "app-1",
            "group_id": "group-1",
            "uid": r["uid"],
            "code": "Forbidden",
            "message": "User not authorized to operate on the specified resource.",
            "http_status": 403,
            "request_id": "REQ-403",
            "attempts": 1,
            "polled_at": 42,
        }


def test_error_records_from_transport_error_have_no_http_fields() -> None:
    records = error_records(BATCH, AttemptTimeout("no answer within 10 s"), sweep=1, polled_at=5)
    for r in records:
        d = _err(r)
        assert d["code"] == "Timeout"
        assert d["message"] == "no answer within 10 s"
        assert "http_status" not in d
        assert "request_id" not in d
        assert "attempts" not in d


def test_error_records_code_and_message_override() -> None:
    api = ApiError("boom", code="InternalError", http_status=500, request_id="R")
    records = error_records(
        BATCH, api, sweep=1, polled_at=5, attempts=4, code="Cancelled", message="shutting down"
    )
    d = _err(records[0])
    assert (d["code"], d["message"], d["http_status"], d["attempts"]) == (
        "Cancelled",
        "shutting down",
        500,
        4,
    )


def test_error_records_without_error_object() -> None:
    records = error_records(
        BATCH, None, sweep=1, polled_at=5, code="DeadlineExceeded", message="sweep deadline"
    )
    assert [_err(r)["code"] for r in records] == ["DeadlineExceeded"] * 3
    assert "http_status" not in _err(records[0])


def test_error_records_from_malformed_response_keep_request_id() -> None:
    error = MalformedResponse("not JSON", http_status=502, request_id="R-502")
    d = _err(error_records(BATCH, error, sweep=1, polled_at=5, attempts=2)[1])
    assert (d["uid"], d["code"], d["http_status"], d["request_id"], d["attempts"]) == (
        "u2",
        "MalformedResponse",
        502,
        "R-502",
        2,
    )


def test_error_records_for_connection_error() -> None:
    d = _err(error_records(BATCH, TransportError("reset"), sweep=1, polled_at=5)[2])
    assert (d["uid"], d["code"]) == ("u3", "ConnectionError")


# ----------------------------------------------------------------------------------------------
# Property: whatever the server sends, each requested UID gets exactly one record, and a
# presence record's values always come from the first entry for that same UID.

uid_text = st.text(alphabet="uvw12é用", min_size=1, max_size=4)
answer_values = st.tuples(st.booleans(), st.integers(min_value=0, max_value=2**53))


@settings(derandomize=True, deadline=None, max_examples=200)
@given(
    st.lists(uid_text, min_size=1, max_size=20, unique=True),
    st.lists(uid_text, max_size=5),
    st.data(),
)
def test_records_never_attributed_to_wrong_uid(
    asked: list[str], extras: list[str], data: st.DataObject
) -> None:
    batch = Batch(TARGET, tuple(asked))
    entries: list[dict[str, Any]] = []
    for uid in asked + [e for e in extras if e not in asked]:
        copies = data.draw(st.integers(min_value=0, max_value=3), label=f"copies of {uid!r}")
        for _ in range(copies):
            online, join_time = data.draw(answer_values)
            entries.append(entry(uid, online, join_time))
    answer = data.draw(st.permutations(entries), label="answer")

    counts = MergeCounts()
    records = merge(batch, answer, counts)

    assert [r["uid"] for r in records] == asked  # exactly one record each, in batch order
    first: dict[str, dict[str, Any]] = {}
    for e in answer:
        first.setdefault(e["UserId"], e)
    for r in records:
        got = first.get(r["uid"])
        if got is None:
            assert r["type"] == "error"
            assert r["code"] == "MissingInResponse"
        else:
            assert r["type"] == "presence"
            assert r["online"] is got["Online"]
            assert r["join_time"] == got["JoinTime"]

    assert counts.missing == sum(1 for u in asked if u not in first)
    assert counts.extra == sum(1 for u in first if u not in asked)
    assert counts.duplicated == len(answer) - len(first)
