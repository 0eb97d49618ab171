"""The official SDK, unchanged, against the emulator: V3, V1 and STS; async and sync paths."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from alibabacloud_live20161101 import models
from alibabacloud_live20161101.client import Client
from alibabacloud_tea_openapi.exceptions import (
    AlibabaCloudException,
    ClientException,
    ThrottlingException,
)
from alibabacloud_tea_openapi.models import Config
from alibabacloud_tea_openapi.utils import Utils

from poller.emulator import AccessKey, EmulatorServer, GroupSpec

from .conftest import FakeClock, MakeServer, call

SPECIAL_IDS = ["用户1", "a~b", "c*d", "e f", "g+h"]
KEYS = (
    AccessKey("demo-key", "demo-secret"),
    AccessKey("STS.demo", "sts-secret", security_token="CAIS-token/with+base64=chars=="),
    AccessKey("limited", "limited-secret", apps=frozenset({"other-app"})),
)
STYLES = {
    "v3": ("demo-key", "demo-secret", None, False),
    "v1": ("demo-key", "demo-secret", None, True),
    "v3-sts": ("STS.demo", "sts-secret", "CAIS-token/with+base64=chars==", False),
    "v1-sts": ("STS.demo", "sts-secret", "CAIS-token/with+base64=chars==", True),
}


def sdk(
    server: EmulatorServer,
    key_id: str = "demo-key",
    secret: str = "demo-secret",
    token: str | None = None,
    v1: bool = False,
) -> Client:
    extra: dict[str, Any] = {"signature_algorithm": "v2"} if v1 else {}
    return Client(
        Config(
            access_key_id=key_id,
            access_key_secret=secret,
            security_token=token,
            endpoint=server.endpoint,
            protocol="http",
            **extra,
        )
    )


def batch_request(uids: list[str], app: str = "demo-app") -> models.BatchGetOnlineUsersRequest:
    return models.BatchGetOnlineUsersRequest(
        app_id=app, group_id="demo-group", user_ids=",".join(uids)
    )


def expected_answers(server: EmulatorServer, uids: list[str]) -> list[dict[str, Any]]:
    members = {m["user_id"]: m for m in server.state.snapshot("demo-app", "demo-group")}
    out = []
    for uid in uids:
        m = members.get(uid)
        online = bool(m and m["online"])
        out.append({"UserId": uid, "Online": online, "JoinTime": m["join_time"] if m else 0})
    return out


@pytest.fixture
async def sdk_server(make_server: MakeServer) -> EmulatorServer:
    server = await make_server(
        keys=KEYS, groups=(GroupSpec("demo-app", "demo-group", 10),), online_fraction=0.5
    )
    for uid in SPECIAL_IDS[:3]:
        server.state.join("demo-app", "demo-group", uid)
    server.state.set_offline("demo-app", "demo-group", SPECIAL_IDS[3])  # member, offline
    return server


def _members_mixed(server: EmulatorServer) -> list[str]:
    snapshot = server.state.snapshot("demo-app", "demo-group")
    online = [m["user_id"] for m in snapshot if m["online"]][:2]
    offline = [m["user_id"] for m in snapshot if not m["online"]][:2]
    assert online and offline
    return [*online, *offline, "not-a-member", *SPECIAL_IDS]


@pytest.mark.parametrize("style", STYLES)
async def test_async_sdk_answers_members_and_non_members(
    sdk_server: EmulatorServer, style: str
) -> None:
    key_id, secret, token, v1 = STYLES[style]
    client = sdk(sdk_server, key_id, secret, token, v1)
    uids = _members_mixed(sdk_server)
    response = await client.batch_get_online_users_async(batch_request(uids))
    assert response.status_code == 200
    body = response.body.to_map()
    assert response.headers["x-acs-request-id"] == body["RequestId"]
    answers = [
        {"UserId": u["UserId"], "Online": u["Online"], "JoinTime": u["JoinTime"]}
        for u in body["Result"]["OnlineUsers"]
    ]
    assert answers == expected_answers(sdk_server, uids)
    by_id = {a["UserId"]: a for a in answers}
    assert by_id["用户1"]["Online"] and by_id["用户1"]["JoinTime"] > 0
    assert by_id["e f"] == {"UserId": "e f", "Online": False, "JoinTime": 0}  # offline member
    assert by_id["not-a-member"] == {"UserId": "not-a-member", "Online": False, "JoinTime": 0}


@pytest.mark.parametrize("v1", [False, True], ids=["v3", "v1"])
async def test_sync_sdk_path(sdk_server: EmulatorServer, v1: bool) -> None:
    client = sdk(sdk_server, v1=v1)
    uids = _members_mixed(sdk_server)
    response = await asyncio.to_thread(client.batch_get_online_users, batch_request(uids))
    got = [u.to_map() for u in response.body.result.online_users]
    assert got == [
        {"JoinTime": a["JoinTime"], "Online": a["Online"], "UserId": a["UserId"]}
        for a in expected_answers(sdk_server, uids)
    ]


@pytest.mark.parametrize("v1", [False, True], ids=["v3", "v1"])
async def test_list_message_group_user_pages_through_120_members(
    make_server: MakeServer, v1: bool
) -> None:
    server = await make_server(groups=(GroupSpec("demo-app", "big", 120),))
    client = sdk(server, v1=v1)
    seen: list[tuple[int, str]] = []
    for page in range(1, 10):
        request = models.ListMessageGroupUserRequest(
            app_id="demo-app", group_id="big", page_num=page, page_size=50, sort_type=0
        )
        result = (await client.list_message_group_user_async(request)).body.result
        assert result.total == 120
        seen += [(u.join_time, u.user_id) for u in result.user_list]
        if not result.has_more:
            break
    assert page == 3 and len(seen) == 120
    assert {uid for _, uid in seen} == {f"user-{i:06d}" for i in range(1, 121)}
    assert seen == sorted(seen)
    desc = await client.list_message_group_user_async(
        models.ListMessageGroupUserRequest(app_id="demo-app", group_id="big", sort_type=1)
    )
    assert len(desc.body.result.user_list) == 20  # default page size
    assert [(u.join_time, u.user_id) for u in desc.body.result.user_list] == seen[::-1][:20]


async def test_join_and_leave_change_what_batch_answers(
    sdk_server: EmulatorServer, wall: FakeClock
) -> None:
    client = sdk(sdk_server)
    uid = "new_user.1"

    async def ask() -> Any:
        response = await client.batch_get_online_users_async(batch_request([uid]))
        return response.body.result.online_users[0]

    assert not (await ask()).online
    joined = await client.join_message_group_async(
        models.JoinMessageGroupRequest(app_id="demo-app", group_id="demo-group", user_id=uid)
    )
    assert joined.body.result.success is True
    answer = await ask()
    assert answer.online and answer.join_time == int(wall.now * 1000)
    wall.advance(5)
    await client.join_message_group_async(
        models.JoinMessageGroupRequest(app_id="demo-app", group_id="demo-group", user_id=uid)
    )
    assert (await ask()).join_time == int(wall.now * 1000)  # a re-join has a new JoinTime
    left = await client.leave_message_group_async(
        models.LeaveMessageGroupRequest(app_id="demo-app", group_id="demo-group", user_id=uid)
    )
    assert left.body.result.success is True
    answer = await ask()
    assert (answer.online, answer.join_time) == (False, 0)


# ------------------------------------------------------------------------------------ errors


async def _sdk_error(coro: Any) -> AlibabaCloudException:
    with pytest.raises(AlibabaCloudException) as info:
        await coro
    return info.value


@pytest.mark.parametrize("v1", [False, True], ids=["v3", "v1"])
@pytest.mark.parametrize(
    ("case", "code", "status"),
    [
        ("wrong-secret", "SignatureDoesNotMatch", 400),
        ("unknown-key", "InvalidAccessKeyId.NotFound", 404),
        ("stale-date", "InvalidTimeStamp.Expired", 400),
        ("app-not-granted", "Forbidden", 403),
        ("21-ids", "InvalidParameter", 400),
        ("missing-app-id", "MissingParameter", 400),
        ("sts-token-mismatch", "InvalidSecurityToken.MismatchWithAccessKey", 400),
        ("sts-token-missing", "MissingSecurityToken", 400),
    ],
)
async def test_sdk_sees_each_error_code(
    sdk_server: EmulatorServer, wall: FakeClock, case: str, code: str, status: int, v1: bool
) -> None:
    key_id, secret, token = "demo-key", "demo-secret", None
    request = batch_request(["user-000001"])
    if case == "wrong-secret":
        secret = "not-the-secret"
    elif case == "unknown-key":
        key_id = "nobody"
    elif case == "stale-date":
        wall.advance(20 * 60)  # the emulator's clock runs 20 min ahead of the SDK's
    elif case == "app-not-granted":
        key_id, secret = "limited", "limited-secret"
    elif case == "21-ids":
        request = batch_request([f"u{i}" for i in range(21)])
    elif case == "missing-app-id":
        request.app_id = None
    elif case == "sts-token-mismatch":
        key_id, secret, token = "STS.demo", "sts-secret", "another-token"
    elif case == "sts-token-missing":
        key_id, secret = "STS.demo", "sts-secret"
    client = sdk(sdk_server, key_id, secret, token, v1)
    error = await _sdk_error(client.batch_get_online_users_async(request))
    assert isinstance(error, ClientException)
    assert (error.code, error.status_code) == (code, status)
    assert error.request_id
    if case == "missing-app-id":
        assert (
            'The input parameter "AppId" that is mandatory for processing this request '
            "is not supplied." in error.message
        )
    if case == "21-ids":
        assert 'The specified parameter "UserIds" is not valid.' in error.message
    if case == "app-not-granted":
        assert "User not authorized to operate on the specified resource." in error.message
    if case == "wrong-secret":
        prefix = (
            "Specified signature is not matched with our calculation. server string to sign is:"
        )
        assert prefix in error.message


@pytest.mark.parametrize("v1", [False, True], ids=["v3", "v1"])
async def test_sdk_over_qps_gets_throttling_exception(make_server: MakeServer, v1: bool) -> None:
    server = await make_server(qps=2)  # the monotonic clock is frozen: one sliding second
    client = sdk(server, v1=v1)
    for _ in range(2):
        await client.batch_get_online_users_async(batch_request(["user-000001"]))
    error = await _sdk_error(client.batch_get_online_users_async(batch_request(["user-000001"])))
    assert isinstance(error, ThrottlingException)
    assert (error.code, error.status_code, error.retry_after) == ("Throttling.User", 400, 1000)
    assert "Request was denied due to user flow control." in error.message


@pytest.mark.parametrize("v1", [False, True], ids=["v3", "v1"])
async def test_sdk_replayed_nonce(
    sdk_server: EmulatorServer, monkeypatch: pytest.MonkeyPatch, v1: bool
) -> None:
    monkeypatch.setattr(Utils, "get_nonce", staticmethod(lambda: "0123456789abcdef" * 2))
    client = sdk(sdk_server, v1=v1)
    await client.batch_get_online_users_async(batch_request(["user-000001"]))
    error = await _sdk_error(client.batch_get_online_users_async(batch_request(["user-000001"])))
    assert (error.code, error.status_code) == ("SignatureNonceUsed", 400)


async def test_tampered_body_is_signature_mismatch(
    sdk_server: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    from .conftest import send, sign_v3

    signed = sign_v3(sdk_server, {"AppId": "demo-app", "GroupId": "demo-group", "UserIds": "u1"})
    reply = await send(session, sdk_server, signed, body=signed.body.replace(b"u1", b"u2"))
    assert (reply.status, reply.code) == (400, "SignatureDoesNotMatch")
    ok = await call(
        session, sdk_server, {"AppId": "demo-app", "GroupId": "demo-group", "UserIds": "u1"}
    )
    assert ok.status == 200
