"""The current interactive-messaging family against the emulator: CheckLiveMessageUsersInGroup,
CheckLiveMessageUsersOnline and ListLiveMessageGroupUsers, with the official SDK (unchanged, V3
and V1) and with raw HTTP (parameters in the query, in the form body, or both)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
import yarl
from alibabacloud_live20161101 import models
from alibabacloud_tea_openapi.exceptions import (
    AlibabaCloudException,
    ClientException,
    ServerException,
    ThrottlingException,
)

from poller.emulator import (
    AccessKey,
    AppSpec,
    EmulatorConfig,
    EmulatorServer,
    FaultRates,
    GroupSpec,
)
from poller.emulator.actions import SUPER_GROUP_SIZE
from poller.emulator.cli import main
from poller.emulator.process import EmulatorProcess
from poller.wire import signing

from .conftest import (
    DEMO,
    FakeClock,
    MakeServer,
    Reply,
    assert_envelope,
    batch_params,
    call,
    date_of,
    inspect,
    send,
    sign_v1,
)
from .test_sdk import sdk

IN_GROUP = "CheckLiveMessageUsersInGroup"
ONLINE = "CheckLiveMessageUsersOnline"
LIST = "ListLiveMessageGroupUsers"
SH, SG = "cn-shanghai", "ap-southeast-1"
KEYS = (
    AccessKey("demo-key", "demo-secret"),
    AccessKey("limited", "limited-secret", apps=frozenset({"other-app"})),
    AccessKey("granted", "granted-secret", apps=frozenset({"live-sh"})),
)
APPS = (AppSpec("live-sh", SH), AppSpec("live-sg", SG))
GROUPS = (
    GroupSpec("live-sh", "room", 120),
    GroupSpec("live-sh", "lobby", 10),
    GroupSpec("live-sh", "super", SUPER_GROUP_SIZE + 1),
    GroupSpec("live-sg", "room", 5),
    GroupSpec("demo-app", "demo-group", 10),
)
SPECIAL_IDS = ["用户1", "a~b", "c*d", "e f", "g+h", "x%y"]


@pytest.fixture
async def live(make_server: MakeServer) -> EmulatorServer:
    return await make_server(keys=KEYS, apps=APPS, groups=GROUPS, online_fraction=0.5)


def online_map(server: EmulatorServer, app: str, group: str) -> dict[str, bool]:
    return {m["user_id"]: m["online"] for m in server.state.snapshot(app, group)}


def mixed_uids(server: EmulatorServer) -> list[str]:
    members = online_map(server, "live-sh", "room")
    online = [u for u, on in members.items() if on][:2]
    offline = [u for u, on in members.items() if not on][:2]
    assert len(online) == 2 and len(offline) == 2
    return [*online, *offline, "not-a-member", "用户1"]


async def _sdk_error(coro: Any) -> AlibabaCloudException:
    with pytest.raises(AlibabaCloudException) as info:
        await coro
    return info.value


def in_group_request(
    uids: list[str], group: str = "room", app: str = "live-sh", dc: str | None = SH
) -> models.CheckLiveMessageUsersInGroupRequest:
    return models.CheckLiveMessageUsersInGroupRequest(
        app_id=app, group_id=group, user_ids=uids, data_center=dc
    )


def online_request(
    uids: list[str], app: str = "live-sh", dc: str | None = SH
) -> models.CheckLiveMessageUsersOnlineRequest:
    return models.CheckLiveMessageUsersOnlineRequest(app_id=app, user_ids=uids, data_center=dc)


def list_request(
    group: str = "room",
    app: str = "live-sh",
    dc: str | None = SH,
    page_size: int | None = 50,
    sort_type: int | None = 1,
    token: int | None = None,
) -> models.ListLiveMessageGroupUsersRequest:
    return models.ListLiveMessageGroupUsersRequest(
        app_id=app,
        group_id=group,
        data_center=dc,
        page_size=page_size,
        sort_type=sort_type,
        next_page_token=token,
    )


# ------------------------------------------------------------------------- SDK: successes


@pytest.mark.parametrize("v1", [False, True], ids=["v3", "v1"])
@pytest.mark.parametrize("dc", [SH, None], ids=["with-dc", "without-dc"])
async def test_sdk_check_users_in_group(live: EmulatorServer, v1: bool, dc: str | None) -> None:
    for uid in SPECIAL_IDS[:3]:
        live.state.join("live-sh", "room", uid)
    live.state.set_offline("live-sh", "room", SPECIAL_IDS[3])  # a member, offline
    client = sdk(live, v1=v1)
    uids = [*mixed_uids(live)[:4], *SPECIAL_IDS]
    assert len(uids) == 10
    response = await client.check_live_message_users_in_group_async(in_group_request(uids, dc=dc))
    assert response.status_code == 200
    body = response.body.to_map()
    assert set(body) == {"RequestId", "Users"}
    assert response.headers["x-acs-request-id"] == body["RequestId"]
    members = online_map(live, "live-sh", "room")
    assert body["Users"] == [{"UserId": u, "Online": members.get(u, False)} for u in uids]
    by_id = {u["UserId"]: u["Online"] for u in body["Users"]}
    assert by_id["用户1"] and not by_id["e f"] and not by_id["x%y"]


async def test_raw_answer_shapes_have_no_join_time_and_no_result(
    live: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    reply = await call_query(session, live, IN_GROUP, in_group_params(["user-000001"]))
    assert reply.status == 200 and list(reply.json) == ["RequestId", "Users"]
    assert list(reply.json["Users"][0]) == ["UserId", "Online"]
    reply = await call_query(session, live, ONLINE, online_params(["user-000001"]))
    assert reply.status == 200 and list(reply.json) == ["RequestId", "UserList"]
    assert list(reply.json["UserList"][0]) == ["UserId", "Online"]
    reply = await call_query(session, live, LIST, list_params(PageSize="10"))
    assert reply.status == 200
    assert list(reply.json) == ["RequestId", "GroupId", "UserList", "Hasmore", "NextPageToken"]
    assert reply.json["GroupId"] == "room" and reply.json["Hasmore"] is True
    assert isinstance(reply.json["NextPageToken"], int) and reply.json["NextPageToken"] > 0
    assert list(reply.json["UserList"][0]) == ["UserId", "UserInfo"]
    assert reply.headers["Content-Type"] == "application/json;charset=utf-8"


@pytest.mark.parametrize("v1", [False, True], ids=["v3", "v1"])
async def test_sdk_check_users_online_in_any_group_of_the_app(
    live: EmulatorServer, v1: bool
) -> None:
    state = live.state
    state.set_offline("live-sh", "room", "user-000001")
    state.set_online("live-sh", "lobby", "user-000001")  # online in another group of the app
    state.set_offline("live-sh", "room", "user-000002")
    state.set_offline("live-sh", "lobby", "user-000002")
    state.set_offline("live-sh", "super", "user-000002")  # offline everywhere
    state.set_online("live-sg", "room", "only-sg")  # online, but in another app
    state.set_online("demo-app", "demo-group", "only-legacy")
    client = sdk(live, v1=v1)
    uids = ["user-000001", "user-000002", "only-sg", "only-legacy", "nobody", "用户1"]
    response = await client.check_live_message_users_online_async(online_request(uids))
    body = response.body.to_map()
    assert set(body) == {"RequestId", "UserList"}
    assert body["UserList"] == [
        {"UserId": "user-000001", "Online": True},
        {"UserId": "user-000002", "Online": False},
        {"UserId": "only-sg", "Online": False},
        {"UserId": "only-legacy", "Online": False},
        {"UserId": "nobody", "Online": False},
        {"UserId": "用户1", "Online": False},
    ]
    sg = await client.check_live_message_users_online_async(
        online_request(["only-sg"], app="live-sg", dc=SG)
    )
    assert [u.online for u in sg.body.user_list] == [True]


async def _page_through(
    client: Any, sort_type: int, page_size: int, group: str = "room"
) -> tuple[list[str], int]:
    seen: list[str] = []
    token: int | None = None
    pages = 0
    while True:
        response = await client.list_live_message_group_users_async(
            list_request(group=group, page_size=page_size, sort_type=sort_type, token=token)
        )
        body = response.body
        pages += 1
        assert body.group_id == group and body.request_id
        assert all(u.user_info == "" for u in body.user_list)
        seen += [u.user_id for u in body.user_list]
        if not body.hasmore:
            assert body.next_page_token == 0
            return seen, pages
        assert isinstance(body.next_page_token, int) and body.next_page_token > 0
        token = body.next_page_token
        assert pages < 100


@pytest.mark.parametrize("v1", [False, True], ids=["v3", "v1"])
async def test_sdk_list_group_users_pages_to_the_end(live: EmulatorServer, v1: bool) -> None:
    client = sdk(live, v1=v1)
    ascending, pages = await _page_through(client, 1, 50)
    assert pages == 3 and len(ascending) == 120 and len(set(ascending)) == 120
    assert set(ascending) == set(online_map(live, "live-sh", "room"))  # offline members too
    descending, pages = await _page_through(client, 2, 10)
    assert pages == 12 and descending == ascending[::-1]
    # Membership order is the order of the seeded join times (the legacy view's JoinTime).
    joins = {m["user_id"]: m["last_join_time"] for m in live.state.snapshot("live-sh", "room")}
    assert [joins[u] for u in ascending] == sorted(joins[u] for u in ascending)
    exact, pages = await _page_through(client, 1, 10, group="lobby")
    assert pages == 1 and len(exact) == 10  # exactly one full page: Hasmore false
    live.state.join("live-sg", "empty", "x")
    live.state.leave("live-sg", "empty", "x")
    empty = await client.list_live_message_group_users_async(
        list_request(app="live-sg", group="empty", dc=SG, page_size=10)
    )
    assert (empty.body.user_list, empty.body.hasmore, empty.body.next_page_token) == ([], False, 0)


async def test_paging_is_a_cursor_unaffected_by_joins_and_leaves(live: EmulatorServer) -> None:
    client = sdk(live)
    first = await client.list_live_message_group_users_async(list_request(page_size=50))
    listed = [u.user_id for u in first.body.user_list]
    full, _ = await _page_through(client, 1, 50)
    rest = full[50:]
    live.state.leave("live-sh", "room", listed[3])  # already listed
    live.state.leave("live-sh", "room", rest[10])  # not yet listed
    live.state.join("live-sh", "room", "late-joiner")
    seen = list(listed)
    token: int | None = first.body.next_page_token
    while token:
        page = await client.list_live_message_group_users_async(
            list_request(page_size=50, token=token)
        )
        seen += [u.user_id for u in page.body.user_list]
        token = page.body.next_page_token
    assert seen == [*listed, *(u for u in rest if u != rest[10]), "late-joiner"]


async def test_churn_applies_to_the_current_family(
    make_server: MakeServer, wall: FakeClock, session: aiohttp.ClientSession
) -> None:
    server = await make_server(
        apps=APPS, groups=(GroupSpec("live-sh", "room", 40),), churn_per_s=8.0
    )
    uids = [f"user-{i:06d}" for i in range(1, 11)]
    answers = set()
    for _ in range(6):
        reply = await call_query(session, server, IN_GROUP, in_group_params(uids))
        online = [u["Online"] for u in reply.json["Users"]]
        members = online_map(server, "live-sh", "room")
        assert online == [members[u] for u in uids]
        app_wide = await call_query(session, server, ONLINE, online_params(uids))
        assert [u["Online"] for u in app_wide.json["UserList"]] == online
        answers.add(tuple(online))
        wall.advance(1.3)
    assert len(answers) > 1  # the answers changed with the clock


# ------------------------------------------------------------------------- SDK: errors


@pytest.mark.parametrize(
    ("action", "case", "code", "status", "message"),
    [
        (IN_GROUP, "dc-invalid", "InputInvalid", 400, '"DataCenter" is not valid'),
        (IN_GROUP, "dc-mismatch", "InputInvalid", 400, '"DataCenter" is not valid'),
        (IN_GROUP, "dc-empty", "InputInvalid", 400, '"DataCenter" is not valid'),
        (IN_GROUP, "11-ids", "InputInvalid", 400, '"UserIds" is not valid'),
        (IN_GROUP, "0-ids", "InputInvalid", 400, '"UserIds" is not valid'),
        (IN_GROUP, "unknown-app", "ResourceNotExist", 404, "'nope' does not exist"),
        (IN_GROUP, "legacy-app", "ResourceNotExist", 404, "'demo-app' does not exist"),
        (IN_GROUP, "unknown-group", "ResourceNotExist", 404, "'nope' does not exist"),
        (IN_GROUP, "no-auth", "NoAuth", 403, "not authorized"),
        (IN_GROUP, "missing-app", "MissingParameter", 400, '"AppId" that is mandatory'),
        (IN_GROUP, "missing-group", "MissingParameter", 400, '"GroupId" that is mandatory'),
        (IN_GROUP, "missing-ids", "MissingParameter", 400, '"UserIds" that is mandatory'),
        (ONLINE, "dc-invalid", "InputInvalid", 400, '"DataCenter" is not valid'),
        (ONLINE, "dc-mismatch", "InputInvalid", 400, '"DataCenter" is not valid'),
        (ONLINE, "11-ids", "InputInvalid", 400, '"UserIds" is not valid'),
        (ONLINE, "empty-id", "InputInvalid", 400, '"UserIds" is not valid'),
        (ONLINE, "unknown-app", "ResourceNotExist", 404, "'nope' does not exist"),
        (ONLINE, "no-auth", "NoAuth", 403, "not authorized"),
        (ONLINE, "missing-app", "MissingParameter", 400, '"AppId" that is mandatory'),
        (LIST, "dc-invalid", "InputInvalid", 400, '"DataCenter" is not valid'),
        (LIST, "dc-mismatch", "InputInvalid", 400, '"DataCenter" is not valid'),
        (LIST, "unknown-app", "ResourceNotExist", 404, "'nope' does not exist"),
        (LIST, "unknown-group", "ResourceNotExist", 404, "'nope' does not exist"),
        (LIST, "no-auth", "NoAuth", 403, "not authorized"),
        (LIST, "page-size-9", "InputInvalid", 400, '"PageSize" is not valid'),
        (LIST, "page-size-51", "InputInvalid", 400, '"PageSize" is not valid'),
        (LIST, "sort-type-0", "InputInvalid", 400, '"SortType" is not valid'),
        (LIST, "token-negative", "InputInvalid", 400, '"NextPageToken" is not valid'),
        (LIST, "missing-page-size", "MissingParameter", 400, '"PageSize" that is mandatory'),
        (LIST, "missing-sort-type", "MissingParameter", 400, '"SortType" that is mandatory'),
        (LIST, "super-group", "InputInvalid", 400, "is a super group"),
    ],
)
async def test_sdk_sees_each_documented_error(
    live: EmulatorServer, action: str, case: str, code: str, status: int, message: str
) -> None:
    key_id, secret = (
        ("limited", "limited-secret") if case == "no-auth" else ("demo-key", "demo-secret")
    )
    app, group, dc = "live-sh", "room", SH
    uids = ["user-000001", "user-000002"]
    page_size: int | None = 10
    sort_type: int | None = 1
    token: int | None = None
    if case == "dc-invalid":
        dc = "us-west-1"
    elif case == "dc-mismatch":
        dc = SG  # a valid data center, but not the app's
    elif case == "dc-empty":
        dc = ""
    elif case == "11-ids":
        uids = [f"u{i}" for i in range(11)]
    elif case == "0-ids":
        uids = []
    elif case == "empty-id":
        uids = ["a", "", "b"]
    elif case == "unknown-app":
        app = "nope"
    elif case == "legacy-app":
        app, group = "demo-app", "demo-group"  # a legacy app: unknown to the current family
    elif case == "unknown-group":
        group = "nope"
    elif case == "page-size-9":
        page_size = 9
    elif case == "page-size-51":
        page_size = 51
    elif case == "sort-type-0":
        sort_type = 0
    elif case == "token-negative":
        token = -1
    elif case == "missing-page-size":
        page_size = None
    elif case == "missing-sort-type":
        sort_type = None
    elif case == "super-group":
        group = "super"
    client = sdk(live, key_id, secret)
    coro: Any
    if action == IN_GROUP:
        request = in_group_request(uids, group=group, app=app, dc=dc)
        if case == "missing-app":
            request.app_id = None
        elif case == "missing-group":
            request.group_id = None
        elif case == "missing-ids":
            request.user_ids = None
        coro = client.check_live_message_users_in_group_async(request)
    elif action == ONLINE:
        online = online_request(uids, app=app, dc=dc)
        if case == "missing-app":
            online.app_id = None
        coro = client.check_live_message_users_online_async(online)
    else:
        listing = list_request(group, app, dc, page_size, sort_type, token)
        coro = client.list_live_message_group_users_async(listing)
    error = await _sdk_error(coro)
    assert isinstance(error, ClientException)
    assert (error.code, error.status_code) == (code, status)
    assert message in error.message
    assert error.request_id


async def test_super_group_can_be_checked_but_not_listed(live: EmulatorServer) -> None:
    client = sdk(live)
    error = await _sdk_error(client.list_live_message_group_users_async(list_request("super")))
    assert (error.code, error.status_code) == ("InputInvalid", 400)
    assert (
        f"The group 'super' is a super group (more than {SUPER_GROUP_SIZE} members): "
        "its member list cannot be queried." in error.message
    )
    answer = await client.check_live_message_users_in_group_async(
        in_group_request(["user-002001", "user-000001"], group="super")
    )
    members = online_map(live, "live-sh", "super")
    assert [u.online for u in answer.body.users] == [members["user-002001"], members["user-000001"]]
    live.state.leave("live-sh", "super", "user-002001")  # 2,000 members: listable again
    first = await client.list_live_message_group_users_async(list_request("super"))
    assert len(first.body.user_list) == 50 and first.body.hasmore


async def test_granted_key_may_use_its_app_only(live: EmulatorServer) -> None:
    client = sdk(live, "granted", "granted-secret")
    ok = await client.check_live_message_users_online_async(online_request(["user-000001"]))
    assert len(ok.body.user_list) == 1
    error = await _sdk_error(
        client.check_live_message_users_online_async(
            online_request(["user-000001"], app="live-sg", dc=SG)
        )
    )
    assert (error.code, error.status_code) == ("NoAuth", 403)
    # NoAuth comes before existence: a key cannot probe which apps exist.
    error = await _sdk_error(
        client.check_live_message_users_online_async(online_request(["u"], app="nope"))
    )
    assert error.code == "NoAuth"


# ------------------------------------------------------------------------- rate limits


async def test_sdk_throttled_per_action_with_its_own_limit(
    make_server: MakeServer, mono: FakeClock
) -> None:
    server = await make_server(apps=APPS, groups=GROUPS, qps=3, live_message_qps=2)
    client = sdk(server)
    for _ in range(2):
        await client.check_live_message_users_in_group_async(in_group_request(["u"]))
    error = await _sdk_error(
        client.check_live_message_users_in_group_async(in_group_request(["u"]))
    )
    assert isinstance(error, ThrottlingException)
    assert (error.code, error.status_code, error.retry_after) == ("Throttling.User", 400, 1000)
    # The other actions of the family have budgets of their own, and so has the legacy call.
    for _ in range(2):
        await client.check_live_message_users_online_async(online_request(["u"]))
        await client.list_live_message_group_users_async(list_request(page_size=10))
    for _ in range(3):
        await client.batch_get_online_users_async(
            models.BatchGetOnlineUsersRequest(
                app_id="demo-app", group_id="demo-group", user_ids="u"
            )
        )
    mono.advance(0.25)
    error = await _sdk_error(client.list_live_message_group_users_async(list_request()))
    assert isinstance(error, ThrottlingException) and error.retry_after == 750
    mono.advance(0.75)  # the first calls are now exactly 1 s old: out of the window
    await client.check_live_message_users_in_group_async(in_group_request(["u"]))
    stats = server.stats()["actions"]
    assert stats[IN_GROUP]["throttled_total"] == 1 and stats[LIST]["throttled_total"] == 1
    assert stats[ONLINE]["throttled_total"] == 0
    assert stats["BatchGetOnlineUsers"]["throttled_total"] == 0


async def test_default_limits_legacy_and_current_family_do_not_share_budgets(
    make_server: MakeServer, session: aiohttp.ClientSession, mono: FakeClock
) -> None:
    """At one instant (frozen clock): 100 legacy calls and 50 of each newer action pass."""
    server = await make_server(apps=APPS, groups=GROUPS)  # qps 100, live_message_qps 50
    legacy = batch_params(["user-000001"])
    in_group = in_group_params(["user-000001"])

    async def codes(action: str, params: Mapping[str, str], n: int, query: bool) -> list[str]:
        out = []
        for _ in range(n):
            if query:
                reply = await call_query(session, server, action, params)
            else:
                reply = await call(session, server, params, action=action)
            out.append(reply.code)
        return out

    assert set(await codes(IN_GROUP, in_group, 50, True)) == {"OK"}
    assert set(await codes("BatchGetOnlineUsers", legacy, 100, False)) == {"OK"}
    assert await codes(IN_GROUP, in_group, 2, True) == ["Throttling.User"] * 2
    assert await codes("BatchGetOnlineUsers", legacy, 1, False) == ["Throttling.User"]
    assert set(await codes(ONLINE, online_params(["u"]), 50, False)) == {"OK"}
    reply = await call_query(session, server, ONLINE, online_params(["u"]))
    assert reply.code == "Throttling.User"
    assert reply.headers["x-ratelimit-user-api"] == "Limit:50,Remain:0,TimeLeft:1000"
    mono.advance(0.5)
    assert await codes(IN_GROUP, in_group, 1, True) == ["Throttling.User"]
    mono.advance(0.5)
    assert set(await codes(IN_GROUP, in_group, 50, True)) == {"OK"}

    stats = server.stats()
    actions = stats["actions"]
    assert (stats["qps"], stats["live_message_qps"]) == (100, 50)
    assert actions[IN_GROUP]["qps"] == actions[ONLINE]["qps"] == actions[LIST]["qps"] == 50
    assert actions["BatchGetOnlineUsers"]["qps"] == 100
    mine = actions[IN_GROUP]
    assert (mine["requests_total"], mine["admitted_total"], mine["throttled_total"]) == (
        103,
        100,
        3,
    )
    assert mine["max_requests_in_any_1s_window"] == 53  # 50 + 2 + the one at +0.5 s
    assert mine["max_admitted_in_any_1s_window"] == 50
    assert mine["accounts"]["default"]["max_admitted_in_any_1s_window"] == 50
    legacy_block = actions["BatchGetOnlineUsers"]
    assert (legacy_block["max_admitted_in_any_1s_window"], legacy_block["throttled_total"]) == (
        100,
        1,
    )
    assert actions[ONLINE]["throttled_total"] == 1 and actions[LIST]["requests_total"] == 0
    assert stats["total"]["throttled_total"] == 5
    assert stats["total"]["max_admitted_in_any_1s_window"] == 200


async def test_live_message_qps_zero_is_unlimited(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await make_server(apps=APPS, groups=GROUPS, live_message_qps=0)
    replies = await asyncio.gather(
        *(call_query(session, server, IN_GROUP, in_group_params(["u"])) for _ in range(120))
    )
    assert {r.code for r in replies} == {"OK"}


# ------------------------------------------------------------------------- faults


async def test_faults_apply_to_the_current_family(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await make_server(apps=APPS, groups=GROUPS)
    client = sdk(server)
    expectations = {
        "server_error=1": ("ServerError", 500, ServerException),
        "500=1": ("InternalError", 500, ServerException),
        "503=1": ("ServiceUnavailable", 503, ServerException),
        "throttle=1": ("Throttling.User", 400, ThrottlingException),
    }
    for spec, (code, status, kind) in expectations.items():
        server.emulator.faults.configure(FaultRates.parse(spec))
        for coro in (
            client.check_live_message_users_in_group_async(in_group_request(["u"])),
            client.check_live_message_users_online_async(online_request(["u"])),
            client.list_live_message_group_users_async(list_request()),
        ):
            error = await _sdk_error(coro)
            assert isinstance(error, kind) and (error.code, error.status_code) == (code, status)
    server.emulator.faults.configure(FaultRates.parse("throttle=1"))
    reply = await call_query(session, server, IN_GROUP, in_group_params(["u"]))
    assert reply.headers["x-ratelimit-user-api"].startswith("Limit:50,")
    injected = server.stats()["faults_injected"]
    assert injected["server_error"] == 3 and injected["throttle"] == 4


@pytest.mark.parametrize(("action", "key"), [(IN_GROUP, "Users"), (ONLINE, "UserList")])
async def test_partial_fault_damages_the_user_list(
    make_server: MakeServer, session: aiohttp.ClientSession, action: str, key: str
) -> None:
    server = await make_server(apps=APPS, groups=GROUPS, faults=FaultRates.parse("partial=1"))
    uids = [f"user-{i:06d}" for i in range(1, 6)]
    params = in_group_params(uids) if action == IN_GROUP else online_params(uids)
    variants = set()
    for _ in range(30):
        reply = await call_query(session, server, action, params)
        assert reply.status == 200 and list(reply.json) == ["RequestId", key]
        users = reply.json[key]
        assert all(list(u) == ["UserId", "Online"] for u in users)  # never a JoinTime
        got = [u["UserId"] for u in users]
        assert got != uids
        variants.add(
            "missing" if len(got) < 5 else "duplicate" if set(got) == set(uids) else "extra"
        )
    assert variants == {"missing", "duplicate", "extra"}
    listing = await call_query(session, server, LIST, list_params(PageSize="10"))
    assert listing.status == 200 and len(listing.json["UserList"]) == 10  # not a presence list


async def test_malformed_and_reset_faults(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await make_server(apps=APPS, groups=GROUPS, faults=FaultRates.parse("malformed=1"))
    outcomes = set()
    for _ in range(12):
        reply = await call_query(session, server, LIST, list_params(PageSize="10"))
        outcomes.add(reply.status)
        if reply.status == 200:
            assert reply.body.startswith(b"{") and not reply.body.endswith(b"}")
    assert outcomes == {200, 502}
    server.emulator.faults.configure(FaultRates.parse("reset_after=1"))
    with pytest.raises(aiohttp.ClientConnectionError):
        await call_query(session, server, IN_GROUP, in_group_params(["u"]))
    assert server.stats()["actions"][IN_GROUP]["no_response_total"] == 1


# ------------------------------------------------------------------------- raw HTTP


def in_group_params(
    uids: list[str], app: str = "live-sh", group: str = "room", **extra: str
) -> dict[str, str]:
    return {"AppId": app, "GroupId": group, "UserIds": ",".join(uids), **extra}


def online_params(uids: list[str], app: str = "live-sh", **extra: str) -> dict[str, str]:
    return {"AppId": app, "UserIds": ",".join(uids), **extra}


def list_params(app: str = "live-sh", group: str = "room", **extra: str) -> dict[str, str]:
    return {"AppId": app, "GroupId": group, "PageSize": "50", "SortType": "1", **extra}


def sign_v3_query(
    server: EmulatorServer,
    action: str,
    query: Mapping[str, str],
    body: Mapping[str, str] | None = None,
    creds: signing.SigningCredentials = DEMO,
    *,
    sign_content_type: bool = True,
) -> tuple[str, dict[str, str], bytes]:
    """A V3 request as the SDK builds it for this family: parameters in the (signed) query,
    and optionally some in a form body too. Returns (encoded query, headers, body)."""
    payload = signing.form_encode(body).encode() if body else b""
    headers = {
        "host": server.endpoint,
        "x-acs-version": signing.API_VERSION,
        "x-acs-action": action,
        "user-agent": "test",
        "x-acs-date": date_of(server),
        "x-acs-signature-nonce": signing.new_nonce(),
        "accept": "application/json",
        "x-acs-content-sha256": hashlib.sha256(payload).hexdigest(),
        "x-acs-credentials-provider": "static_ak",
    }
    if body and sign_content_type:
        headers["content-type"] = "application/x-www-form-urlencoded"
    names = sorted(headers)
    canonical = signing.v3_canonical_request(
        "POST",
        "/",
        signing.canonical_query_string(query),
        signing.v3_canonical_headers(names, lambda n: [headers[n]]),
        ";".join(names),
        headers["x-acs-content-sha256"],
    )
    sig = signing.v3_signature(creds.access_key_secret, signing.v3_string_to_sign(canonical))
    headers["Authorization"] = (
        f"ACS3-HMAC-SHA256 Credential={creds.access_key_id},"
        f"SignedHeaders={';'.join(names)},Signature={sig}"
    )
    encoded = "&".join(f"{k}={signing.percent_encode(v)}" for k, v in query.items())
    return encoded, headers, payload


async def call_query(
    session: aiohttp.ClientSession,
    server: EmulatorServer,
    action: str,
    query: Mapping[str, str],
    body: Mapping[str, str] | None = None,
) -> Reply:
    encoded, headers, payload = sign_v3_query(server, action, query, body)
    url = yarl.URL(f"{server.url}/?{encoded}", encoded=True)
    async with session.post(
        url, data=payload, headers=headers, skip_auto_headers=("Content-Type",)
    ) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


@pytest.mark.parametrize("action", [IN_GROUP, ONLINE, LIST])
async def test_parameters_in_the_form_body_v3_and_v1(
    live: EmulatorServer, session: aiohttp.ClientSession, action: str
) -> None:
    uids = mixed_uids(live)
    params = {
        IN_GROUP: in_group_params(uids, DataCenter=SH),
        ONLINE: online_params(uids, DataCenter=SH),
        LIST: list_params(DataCenter=SH, PageSize="10", SortType="2"),
    }[action]
    in_query = await call_query(session, live, action, params)
    in_body = await call(session, live, params, action=action)  # form body, V3
    v1 = await send(session, live, sign_v1(live, params, action=action))  # form body, V1
    split = dict(params)
    app = split.pop("AppId")
    mixed = await call_query(session, live, action, split, body={"AppId": app})
    answers = []
    for reply in (in_query, in_body, v1, mixed):
        assert reply.status == 200, reply.body
        answer = dict(reply.json)
        del answer["RequestId"]
        answers.append(answer)
    assert answers[0] == answers[1] == answers[2] == answers[3]
    if action == IN_GROUP:
        members = online_map(live, "live-sh", "room")
        assert answers[0]["Users"] == [{"UserId": u, "Online": members.get(u, False)} for u in uids]


@pytest.mark.parametrize(
    ("action", "params", "code", "status"),
    [
        (IN_GROUP, in_group_params([f"u{i}" for i in range(11)]), "InputInvalid", 400),
        (IN_GROUP, in_group_params([f"u{i}" for i in range(10)]), "OK", 200),
        (IN_GROUP, in_group_params(["a", "", "b"]), "InputInvalid", 400),
        (IN_GROUP, in_group_params(["a"], DataCenter="cn-hangzhou"), "InputInvalid", 400),
        (IN_GROUP, in_group_params(["a"], DataCenter=SG), "InputInvalid", 400),
        (IN_GROUP, in_group_params(["a"], app="nope"), "ResourceNotExist", 404),
        (IN_GROUP, in_group_params(["a"], group="nope"), "ResourceNotExist", 404),
        (IN_GROUP, {"AppId": "live-sh", "UserIds": "a"}, "MissingParameter", 400),
        (IN_GROUP, {"AppId": "live-sh", "GroupId": "", "UserIds": "a"}, "MissingParameter", 400),
        (ONLINE, online_params(["a"], app="live-sg", DataCenter=SG), "OK", 200),
        (ONLINE, online_params(["a"], app="live-sg", DataCenter=SH), "InputInvalid", 400),
        (ONLINE, {"UserIds": "a"}, "MissingParameter", 400),
        (ONLINE, {"AppId": "live-sh", "UserIds": ""}, "InputInvalid", 400),
        (LIST, list_params(PageSize="ten"), "InputInvalid", 400),
        (LIST, list_params(PageSize="10", SortType="2"), "OK", 200),
        (LIST, list_params(NextPageToken="x"), "InputInvalid", 400),
        (LIST, list_params(NextPageToken="0"), "OK", 200),
        (LIST, list_params(NextPageToken="999999"), "OK", 200),
        (LIST, list_params(group="super"), "InputInvalid", 400),
        (LIST, {"AppId": "live-sh", "PageSize": "10", "SortType": "1"}, "MissingParameter", 400),
    ],
)
async def test_raw_validation(
    live: EmulatorServer,
    session: aiohttp.ClientSession,
    action: str,
    params: dict[str, str],
    code: str,
    status: int,
) -> None:
    for reply in (
        await call(session, live, params, action=action),
        await call_query(session, live, action, params),
    ):
        if code == "OK":
            assert reply.status == 200, reply.body
        else:
            assert_envelope(reply, code, status)


async def test_past_the_end_token_is_an_empty_last_page(
    live: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    reply = await call_query(session, live, LIST, list_params(NextPageToken="999999"))
    assert reply.json["UserList"] == [] and reply.json["Hasmore"] is False
    assert reply.json["NextPageToken"] == 0


async def test_query_request_with_unsigned_content_type_and_no_body(
    live: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    """What the SDK sends: aiohttp adds Content-Type after signing; a body must be covered."""
    encoded, headers, _ = sign_v3_query(live, IN_GROUP, in_group_params(["u"]))
    url = yarl.URL(f"{live.url}/?{encoded}", encoded=True)
    unsigned = {**headers, "Content-Type": "application/octet-stream"}
    async with session.post(url, data=b"", headers=unsigned) as resp:
        assert resp.status == 200
    # With a body, Content-Type must be signed, as before.
    encoded, headers, payload = sign_v3_query(
        live, IN_GROUP, {}, in_group_params(["u"]), sign_content_type=False
    )
    unsigned = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    async with session.post(f"{live.url}/", data=payload, headers=unsigned) as resp:
        reply = Reply(resp.status, resp.headers, await resp.read())
    assert_envelope(reply, "IncompleteSignature", 400)
    encoded, headers, payload = sign_v3_query(live, IN_GROUP, {}, in_group_params(["u"]))
    async with session.post(
        f"{live.url}/", data=payload, headers=headers, skip_auto_headers=("Content-Type",)
    ) as resp:
        assert resp.status == 200


# ------------------------------------------------------------------------- inspection, CLI


async def test_members_endpoint_works_for_current_family_groups(
    live: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    reply = await call_query(session, live, IN_GROUP, in_group_params(["x"], group="new-room"))
    assert reply.code == "ResourceNotExist"
    result = await inspect(
        session,
        live,
        "members",
        {"app_id": "live-sh", "group_id": "new-room", "join": ["x", "y"], "offline": ["y"]},
    )
    assert result["total"] == 2 and result["online"] == 1
    reply = await call_query(session, live, IN_GROUP, in_group_params(["x", "y"], group="new-room"))
    assert [u["Online"] for u in reply.json["Users"]] == [True, False]
    listing = await inspect(session, live, "members?app_id=live-sh&group_id=new-room")
    assert [m["user_id"] for m in listing["members"]] == ["x", "y"]
    summary = {
        (g["app_id"], g["group_id"]): g for g in (await inspect(session, live, "members"))["groups"]
    }
    assert summary[("live-sh", "new-room")]["data_center"] == SH
    assert summary[("live-sg", "room")]["data_center"] == SG
    assert summary[("demo-app", "demo-group")]["data_center"] is None
    config = await inspect(session, live, "config")
    assert config["apps"] == [
        {"app_id": "live-sh", "data_center": SH},
        {"app_id": "live-sg", "data_center": SG},
    ]
    assert config["live_message_qps"] == 50


async def test_legacy_actions_on_legacy_apps_are_unchanged(
    live: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    reply = await call(session, live, batch_params(["user-000001"], app="unknown", group="g"))
    assert reply.json["Result"]["OnlineUsers"] == [
        {"UserId": "user-000001", "Online": False, "JoinTime": 0}
    ]
    reply = await call(session, live, batch_params(["user-000001"]))
    assert list(reply.json) == ["RequestId", "Result"]
    reply = await call(session, live, {"AppId": "other", "GroupId": "g", "UserIds": "u"})
    assert reply.code == "OK"
    limited = signing.SigningCredentials("limited", "limited-secret")
    reply = await call(session, live, batch_params(["u"]), creds=limited)
    assert_envelope(reply, "Forbidden", 403)  # the legacy code, not NoAuth


def test_cli_flags() -> None:
    config = EmulatorConfig.from_args(
        [
            "--app",
            "a:cn-shanghai",
            "--app",
            "b:x:ap-southeast-1",
            "--group",
            "a/room:5",
            "--live-message-qps",
            "7",
        ]
    )
    assert config.apps == (AppSpec("a", SH), AppSpec("b:x", SG))
    assert (config.live_message_qps, config.qps) == (7, 100)
    assert EmulatorConfig.from_args([]).live_message_qps == 50
    assert EmulatorConfig.from_args([]).apps == ()


@pytest.mark.parametrize(
    "argv",
    [
        ["--app", "a:us-west-1"],
        ["--app", "a"],
        ["--app", ":cn-shanghai"],
        ["--app", "a:"],
        ["--app", "a:cn-shanghai", "--app", "a:ap-southeast-1"],
        ["--live-message-qps", "-1"],
        ["--live-message-qps", "x"],
    ],
)
def test_bad_app_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "poller emulator" in capsys.readouterr().err


def test_help_mentions_the_new_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--app APP:DATACENTER" in out and "--live-message-qps" in out


def test_emulator_process_with_an_app_and_action_stats() -> None:
    with EmulatorProcess(
        "--app", "live:ap-southeast-1", "--group", "live/room:30", "--live-message-qps", "5"
    ) as emulator:
        from alibabacloud_live20161101.client import Client
        from alibabacloud_tea_openapi.models import Config

        client = Client(
            Config(
                access_key_id="demo-key",
                access_key_secret="demo-secret",
                endpoint=emulator.endpoint,
                protocol=emulator.protocol,
            )
        )
        answer = client.check_live_message_users_in_group(
            in_group_request(["user-000001"], app="live", dc=SG)
        )
        assert [u.user_id for u in answer.body.users] == ["user-000001"]
        listed = client.list_live_message_group_users(list_request(app="live", dc=SG, page_size=50))
        assert len(listed.body.user_list) == 30
        stats = emulator.action_stats(IN_GROUP)
        assert (stats["qps"], stats["requests_total"], stats["throttled_total"]) == (5, 1, 0)
        assert emulator.action_stats(IN_GROUP, "default")["max_requests_in_any_1s_window"] == 1
        assert emulator.action_stats(ONLINE, "default")["requests_total"] == 0
        members = emulator.change_members("live", "room", offline=["user-000001"])
        assert members["total"] == 30
