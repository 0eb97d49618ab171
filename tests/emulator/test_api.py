"""API behaviour around the signature: parameters, versions, routing, methods, failures."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import pytest
import yarl

from poller.emulator import EmulatorServer, actions
from poller.wire import signing

from .conftest import (
    DEMO,
    MakeServer,
    Reply,
    assert_envelope,
    batch_params,
    call,
    date_of,
    send,
    send_raw,
    sign_v3,
)

PARAMS = batch_params(["user-000001", "user-000002"])


@pytest.mark.parametrize(
    ("action", "params", "code", "status", "message"),
    [
        (
            "BatchGetOnlineUsers",
            {"GroupId": "g", "UserIds": "u"},
            "MissingParameter",
            400,
            'The input parameter "AppId" that is mandatory for processing this request '
            "is not supplied.",
        ),
        ("BatchGetOnlineUsers", {"AppId": "a", "UserIds": "u"}, "MissingParameter", 400, None),
        ("BatchGetOnlineUsers", {"AppId": "a", "GroupId": "g"}, "MissingParameter", 400, None),
        (
            "BatchGetOnlineUsers",
            batch_params([f"u{i}" for i in range(21)]),
            "InvalidParameter",
            400,
            'The specified parameter "UserIds" is not valid.',
        ),
        ("BatchGetOnlineUsers", batch_params(["a", "", "b"]), "InvalidParameter", 400, None),
        ("BatchGetOnlineUsers", batch_params([""]), "InvalidParameter", 400, None),
        ("BatchGetOnlineUsers", batch_params([f"u{i}" for i in range(20)]), "OK", 200, None),
        (
            "ListMessageGroupUser",
            {"AppId": "a", "GroupId": "g", "PageSize": "51"},
            "InvalidParameter",
            400,
            'The specified parameter "PageSize" is not valid.',
        ),
        (
            "ListMessageGroupUser",
            {"AppId": "a", "GroupId": "g", "PageNum": "0"},
            "InvalidParameter",
            400,
            None,
        ),
        (
            "ListMessageGroupUser",
            {"AppId": "a", "GroupId": "g", "SortType": "2"},
            "InvalidParameter",
            400,
            None,
        ),
        (
            "ListMessageGroupUser",
            {"AppId": "a", "GroupId": "g", "PageNum": "x"},
            "InvalidParameter",
            400,
            None,
        ),
        ("JoinMessageGroup", {"AppId": "a", "GroupId": "g"}, "MissingParameter", 400, None),
        (
            "JoinMessageGroup",
            {"AppId": "a", "GroupId": "g", "UserId": "a,b"},
            "InvalidParameter",
            400,
            None,
        ),
        (
            "LeaveMessageGroup",
            {"AppId": "a", "GroupId": "g", "UserId": "never-joined"},
            "OK",
            200,
            None,
        ),
        (
            "NoSuchAction",
            {"AppId": "a"},
            "InvalidAction.NotFound",
            404,
            "Specified api is not found, please check your url and method.",
        ),
    ],
)
async def test_parameter_validation(
    server: EmulatorServer,
    session: aiohttp.ClientSession,
    action: str,
    params: dict[str, str],
    code: str,
    status: int,
    message: str | None,
) -> None:
    reply = await call(session, server, params, action=action)
    if code == "OK":
        assert reply.status == 200
        return
    assert_envelope(reply, code, status)
    if message is not None:
        assert reply.json["Message"] == message


async def test_version_checks(server: EmulatorServer, session: aiohttp.ClientSession) -> None:
    wrong = signing.sign_v3(
        credentials=DEMO,
        host=server.endpoint,
        action="BatchGetOnlineUsers",
        params=PARAMS,
        date=date_of(server),
        nonce=signing.new_nonce(),
        version="2014-01-01",
    )
    assert_envelope(await send(session, server, wrong), "InvalidVersion", 400)
    signed = sign_v3(server, PARAMS)
    headers = {k: v for k, v in signed.headers.items() if k != "x-acs-version"}
    reply = await send_raw(session, server, headers, signed.body)
    assert reply.code == "MissingParameter" and '"Version"' in reply.json["Message"]


async def test_params_from_query_and_get(
    server: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    """V3 GET with the parameters in the (signed, canonical) query."""
    query = {"AppId": "demo-app", "GroupId": "demo-group", "UserIds": "e f,g+h,user-000001"}
    signed = sign_v3(server, {})
    encoded = "&".join(f"{k}={signing.percent_encode(v)}" for k, v in query.items())
    headers = {
        k: v for k, v in signed.headers.items() if k not in ("Authorization", "content-type")
    }
    names = sorted(headers)
    canonical = signing.v3_canonical_request(
        "GET",
        "/",
        signing.canonical_query_string(query),
        signing.v3_canonical_headers(names, lambda n: [headers[n]]),
        ";".join(names),
        headers["x-acs-content-sha256"],
    )
    sig = signing.v3_signature("demo-secret", signing.v3_string_to_sign(canonical))
    headers["Authorization"] = (
        f"ACS3-HMAC-SHA256 Credential=demo-key,SignedHeaders={';'.join(names)},Signature={sig}"
    )
    url = yarl.URL(f"{server.url}/?{encoded}", encoded=True)
    async with session.get(url, headers=headers) as resp:
        body = await resp.json(content_type=None)
    assert [u["UserId"] for u in body["Result"]["OnlineUsers"]] == ["e f", "g+h", "user-000001"]


async def test_unsupported_method_and_unknown_path(
    server: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        async with session.request(method, f"{server.url}/") as resp:
            reply = Reply(resp.status, resp.headers, await resp.read())
        assert_envelope(reply, "UnsupportedHTTPMethod", 403)
    async with session.get(f"{server.url}/no/such/path") as resp:
        reply = Reply(resp.status, resp.headers, await resp.read())
    assert_envelope(reply, "InvalidAction.NotFound", 404)


async def test_unexpected_exception_is_internal_error(
    server: EmulatorServer, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object) -> dict[str, Any]:
        raise RuntimeError("bug")

    monkeypatch.setitem(actions.ACTIONS, "BatchGetOnlineUsers", boom)
    reply = await call(session, server, PARAMS)
    assert_envelope(reply, "InternalError", 500)
    assert reply.json["Message"] == "The request processing has failed due to some unknown error."


async def test_oversized_body_is_an_envelope(
    server: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    big = io.BytesIO(b"AppId=" + b"a" * (2 * 1024 * 1024))  # beyond aiohttp's 1 MiB limit
    signed = sign_v3(server, PARAMS)
    async with session.post(f"{server.url}/", data=big, headers=signed.headers) as resp:
        reply = Reply(resp.status, resp.headers, await resp.read())
    assert_envelope(reply, "InvalidParameter", 400)


async def test_server_starts_once(make_server: MakeServer) -> None:
    server = await make_server()
    with pytest.raises(RuntimeError):
        await server.start()
