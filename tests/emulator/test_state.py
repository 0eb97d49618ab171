"""Group membership, seeded start, deterministic churn driven by the injected wall clock."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from poller.emulator import EmulatorServer, EmulatorState, GroupSpec

from .conftest import FakeClock, MakeServer, batch_params, call, inspect

T0 = 1_764_100_000.0


def make_state(
    clock: FakeClock, *, size: int = 1000, churn: float = 0.0, fraction: float = 0.5, seed: int = 1
) -> EmulatorState:
    return EmulatorState(
        (GroupSpec("app", "g", size),),
        online_fraction=fraction,
        churn_per_s=churn,
        seed=seed,
        wall_clock=clock,
    )


def snap(state: EmulatorState) -> list[dict[str, Any]]:
    return state.snapshot("app", "g")


def test_group_spec_parse() -> None:
    assert GroupSpec.parse("demo-app/demo-group:1000") == GroupSpec("demo-app", "demo-group", 1000)
    assert GroupSpec.parse("a/b:c/d:0") == GroupSpec("a", "b:c/d", 0)
    for bad in ("a:1", "a/b", "/b:1", "a/:1", "a/b:-1", "a/b:x"):
        with pytest.raises(ValueError):
            GroupSpec.parse(bad)


@pytest.mark.parametrize(
    ("fraction", "low", "high"), [(0.0, 0, 0), (1.0, 1000, 1000), (0.5, 430, 570)]
)
def test_seeded_start(fraction: float, low: int, high: int) -> None:
    state = make_state(FakeClock(T0), fraction=fraction)
    members = snap(state)
    assert [m["user_id"] for m in members[:2]] == ["user-000001", "user-000002"]
    assert len(members) == 1000 and members[-1]["user_id"] == "user-001000"
    online = [m for m in members if m["online"]]
    assert low <= len(online) <= high
    assert all(T0 * 1000 - 3_600_000 <= m["join_time"] <= T0 * 1000 for m in online)
    assert all(m["join_time"] == 0 for m in members if not m["online"])
    assert snap(make_state(FakeClock(T0), fraction=fraction)) == members  # same seed, same start
    if fraction == 0.5:
        assert snap(make_state(FakeClock(T0), fraction=fraction, seed=2)) != members


def test_churn_is_a_pure_function_of_time() -> None:
    a_clock, b_clock = FakeClock(T0), FakeClock(T0)
    a = make_state(a_clock, churn=100)
    b = make_state(b_clock, churn=100)
    for _ in range(50):  # a is observed often, b only at the end
        a_clock.advance(0.37)
        snap(a)
    b_clock.advance(0.37 * 50)
    assert snap(a) == snap(b)
    a_clock.now = b_clock.now = T0 + 1234.5
    assert snap(a) == snap(b)


def test_churn_rate_and_rejoin_semantics() -> None:
    clock = FakeClock(T0)
    state = make_state(clock, churn=100)  # 1000 members, period 10 s
    before = {m["user_id"]: m for m in snap(state)}
    clock.advance(1.0)
    after = {m["user_id"]: m for m in snap(state)}
    flipped = [u for u in before if before[u]["online"] != after[u]["online"]]
    assert 60 <= len(flipped) <= 140  # ~100 per second
    for uid in flipped:
        if after[uid]["online"]:  # going online is a re-join at the flip instant
            assert T0 * 1000 < after[uid]["join_time"] <= clock.now * 1000
        else:
            assert after[uid]["join_time"] == 0
            assert after[uid]["last_join_time"] == before[uid]["last_join_time"]
    assert len(after) == 1000  # offline members stay members
    clock.advance(10.0)  # a full period later every member has flipped exactly once more
    later = {m["user_id"]: m for m in snap(state)}
    assert all(later[u]["online"] != after[u]["online"] for u in later)


def test_explicit_changes_restart_the_schedule() -> None:
    clock = FakeClock(T0)
    state = make_state(clock, size=10, churn=1)  # period 10 s
    group = state.group("app", "g")
    assert group is not None
    state.set_offline("app", "g", "user-000001")
    assert group.presence("user-000001", clock.now) == (False, 0)
    state.join("app", "g", "user-000002")
    assert group.presence("user-000002", clock.now) == (True, int(T0 * 1000))
    clock.advance(25)  # two or three flips later the schedule has moved on
    online, join_ms = group.presence("user-000002", clock.now)
    assert (online and join_ms > T0 * 1000) or (not online and join_ms == 0)
    assert state.leave("app", "g", "user-000002") and not state.leave("app", "g", "user-000002")


def test_unknown_group_answers_not_online_and_join_creates_it() -> None:
    clock = FakeClock(T0)
    state = make_state(clock, size=1)
    assert state.online_users("nope", "g", ["a", "b"]) == [
        {"UserId": "a", "Online": False, "JoinTime": 0},
        {"UserId": "b", "Online": False, "JoinTime": 0},
    ]
    assert state.list_members("nope", "g", 1, 20, False) == {
        "HasMore": False,
        "Total": 0,
        "UserList": [],
    }
    state.join("nope", "g", "a")
    assert state.online_users("nope", "g", ["a"])[0]["Online"] is True
    assert (
        state.leave("nope", "g", "a")
        and state.online_users("nope", "g", ["a"])[0]["Online"] is False
    )


def test_list_members_ordering_and_paging() -> None:
    clock = FakeClock(T0)
    state = make_state(clock, size=0)
    for i in range(5):
        clock.advance(1)
        state.join("app", "g", f"u{i}")
    page = state.list_members("app", "g", 1, 2, descending=False)
    assert page["Total"] == 5 and page["HasMore"] is True
    assert [u["UserId"] for u in page["UserList"]] == ["u0", "u1"]
    assert state.list_members("app", "g", 3, 2, False)["UserList"] == [
        {"UserId": "u4", "JoinTime": int((T0 + 5) * 1000)}
    ]
    assert state.list_members("app", "g", 3, 2, False)["HasMore"] is False
    desc = state.list_members("app", "g", 1, 50, descending=True)
    assert [u["UserId"] for u in desc["UserList"]] == ["u4", "u3", "u2", "u1", "u0"]
    assert state.list_members("app", "g", 4, 2, False)["UserList"] == []


async def test_batch_answers_match_the_members_endpoint(
    make_server: MakeServer, session: aiohttp.ClientSession, wall: FakeClock
) -> None:
    server: EmulatorServer = await make_server(
        groups=(GroupSpec("demo-app", "demo-group", 40),), churn_per_s=4.0
    )
    uids = [f"user-{i:06d}" for i in range(1, 21)]
    for _ in range(5):
        wall.advance(3.3)
        reply = await call(session, server, batch_params(uids))
        listing = await inspect(session, server, "members?app_id=demo-app&group_id=demo-group")
        members = {m["user_id"]: m for m in listing["members"]}
        assert listing["total"] == 40
        assert reply.json["Result"]["OnlineUsers"] == [
            {"UserId": u, "Online": members[u]["online"], "JoinTime": members[u]["join_time"]}
            for u in uids
        ]
