"""The ``/_emulator/`` endpoints: stats, reset, members, config; never counted as API calls."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from poller.emulator import EmulatorConfig, EmulatorServer, actions, build_app

from .conftest import batch_params, call, inspect

STATS_KEYS = {
    "requests_total",
    "admitted_total",
    "responses_by_code",
    "responses_by_status",
    "throttled_total",
    "no_response_total",
    "max_requests_in_any_1s_window",
    "max_admitted_in_any_1s_window",
}


async def test_stats_shape_and_inspection_is_not_counted(
    server: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    await call(session, server, batch_params(["user-000001"]))
    for _ in range(3):
        stats = await inspect(session, server, "stats")
    assert set(stats) == {
        "qps",
        "live_message_qps",
        "total",
        "accounts",
        "actions",
        "faults_injected",
    }
    assert set(stats["total"]) == STATS_KEYS
    assert set(stats["accounts"]) == {"default"}
    assert set(stats["accounts"]["default"]) == STATS_KEYS
    assert set(stats["actions"]) == set(actions.ACTIONS)
    batch = stats["actions"]["BatchGetOnlineUsers"]
    assert set(batch) == STATS_KEYS | {"qps", "accounts"}
    assert batch["qps"] == 100 and batch["requests_total"] == 1
    assert set(batch["accounts"]) == {"default"}
    assert set(batch["accounts"]["default"]) == STATS_KEYS
    live = stats["actions"]["CheckLiveMessageUsersInGroup"]
    assert live["qps"] == 50 and live["requests_total"] == 0 and live["accounts"] == {}
    assert stats["total"]["requests_total"] == 1
    assert stats["total"]["responses_by_code"] == {"OK": 1}
    assert stats["total"]["responses_by_status"] == {"200": 1}
    assert stats == server.stats()


async def test_reset_zeroes_stats_and_windows_keeps_members(
    make_server: object, session: aiohttp.ClientSession
) -> None:
    server: EmulatorServer = await make_server(qps=1)  # type: ignore[operator]
    assert (await call(session, server, batch_params(["u"]))).code == "OK"
    assert (await call(session, server, batch_params(["u"]))).code == "Throttling.User"
    await inspect(
        session, server, "members", {"app_id": "demo-app", "group_id": "demo-group", "join": ["x"]}
    )
    assert await inspect(session, server, "reset", {}) == {"ok": True}
    stats = server.stats()
    assert stats["total"]["requests_total"] == 0 and stats["accounts"] == {}
    assert (await call(session, server, batch_params(["u"]))).code == "OK"  # window emptied
    uids = {m["user_id"] for m in server.state.snapshot("demo-app", "demo-group")}
    assert "x" in uids
    await inspect(session, server, "reset", {"members": True})
    uids = {m["user_id"] for m in server.state.snapshot("demo-app", "demo-group")}
    assert "x" not in uids and len(uids) == 1000
    await inspect(session, server, "reset", method="POST")  # no body at all


async def test_members_endpoint(server: EmulatorServer, session: aiohttp.ClientSession) -> None:
    group = {"app_id": "demo-app", "group_id": "demo-group"}
    result = await inspect(
        session,
        server,
        "members",
        {
            **group,
            "join": ["a", "b"],
            "online": ["user-000001"],
            "offline": ["user-000002", "c"],
            "leave": ["b", "never"],
        },
    )
    assert result["total"] == 1000 + 2 and result["left"] == 1  # a and c added, b left
    listing = await inspect(session, server, "members?app_id=demo-app&group_id=demo-group")
    members = {m["user_id"]: m for m in listing["members"]}
    assert members["a"]["online"] and members["a"]["join_time"] > 0
    assert members["user-000001"]["online"]
    assert members["c"] == {"user_id": "c", "online": False, "join_time": 0, "last_join_time": 0}
    assert not members["user-000002"]["online"] and "b" not in members
    reply = await call(session, server, batch_params(["a", "b", "c", "user-000001"]))
    assert [u["Online"] for u in reply.json["Result"]["OnlineUsers"]] == [True, False, False, True]
    summary = await inspect(session, server, "members")
    assert summary["groups"][0]["members"] == 1002
    empty = await inspect(session, server, "members?app_id=x&group_id=y")
    assert empty["members"] == [] and empty["total"] == 0


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "code"),
    [
        ("POST", "members", {"group_id": "g"}, 400, "MissingParameter"),
        ("POST", "members", {"app_id": "a", "group_id": "g", "join": "x"}, 400, "InvalidParameter"),
        ("POST", "members", None, 400, "InvalidParameter"),
        ("GET", "members?app_id=a", None, 400, "MissingParameter"),
        ("POST", "stats", None, 403, "UnsupportedHTTPMethod"),
        ("DELETE", "faults", None, 403, "UnsupportedHTTPMethod"),
        ("GET", "nothing-here", None, 404, "InvalidAction.NotFound"),
        ("POST", "reset", [1], 400, "InvalidParameter"),
    ],
)
async def test_inspection_errors_use_the_envelope(
    server: EmulatorServer,
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    payload: object,
    status: int,
    code: str,
) -> None:
    async with session.request(method, f"{server.url}/_emulator/{path}", json=payload) as resp:
        assert resp.status == status
        assert resp.headers["Content-Type"] == "application/json;charset=utf-8"
        assert (await resp.json(content_type=None))["Code"] == code
    async with session.post(f"{server.url}/_emulator/members", data=b"{not json") as resp:
        assert (await resp.json(content_type=None))["Code"] == "InvalidParameter"
    assert server.stats()["total"]["requests_total"] == 0


async def test_config_endpoint_has_no_secrets(
    make_server: object, session: aiohttp.ClientSession
) -> None:
    from poller.emulator import AccessKey

    server: EmulatorServer = await make_server(  # type: ignore[operator]
        keys=(AccessKey("k", "TOPSECRET"), AccessKey("s", "SECRET2", security_token="TOKEN3"))
    )
    async with session.get(f"{server.url}/_emulator/config") as resp:
        text = await resp.text()
    for secret in ("TOPSECRET", "SECRET2", "TOKEN3"):
        assert secret not in text
        assert secret not in repr(server.config)
    config = await inspect(session, server, "config")
    assert config["keys"][1] == {
        "access_key_id": "s",
        "account": "default",
        "apps": None,
        "sts": True,
    }


async def test_build_app_works_with_aiohttp_test_server() -> None:
    app = build_app(EmulatorConfig())
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/_emulator/stats")
        assert resp.status == 200
        resp = await client.post("/", data=b"")
        assert (await resp.json(content_type=None))["Code"] == "MissingParameter"
