"""Fixtures for the emulator tests: fake clocks, servers on free loopback ports, signed calls."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
import yarl
from multidict import CIMultiDictProxy

from poller.emulator import EmulatorConfig, EmulatorServer
from poller.wire import signing

DEMO = signing.SigningCredentials("demo-key", "demo-secret")
UUID_UPPER = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")


class FakeClock:
    """A settable clock: ``clock()`` returns ``clock.now``."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json.get("Code", "OK"))


MakeServer = Callable[..., Awaitable[EmulatorServer]]


@pytest.fixture
def wall() -> FakeClock:
    """Emulator wall clock, frozen at the real time (the SDK dates its requests with it)."""
    return FakeClock(float(int(time.time())))


@pytest.fixture
def mono() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
async def make_server(wall: FakeClock, mono: FakeClock) -> AsyncIterator[MakeServer]:
    """Start emulators on 127.0.0.1, port 0, with the fake clocks unless overridden."""
    servers: list[EmulatorServer] = []

    async def make(**overrides: Any) -> EmulatorServer:
        fields: dict[str, Any] = {"port": 0, "wall_clock": wall, "monotonic": mono}
        fields.update(overrides)
        server = EmulatorServer(EmulatorConfig(**fields))
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def server(make_server: MakeServer) -> EmulatorServer:
    return await make_server()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


def date_of(server: EmulatorServer, offset_s: float = 0.0) -> str:
    moment = datetime.fromtimestamp(server.config.wall_clock() + offset_s, UTC)
    return signing.format_timestamp(moment)


def sign_v3(
    server: EmulatorServer,
    params: Mapping[str, str],
    *,
    action: str = "BatchGetOnlineUsers",
    creds: signing.SigningCredentials = DEMO,
    nonce: str | None = None,
    date: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> signing.SignedRequest:
    return signing.sign_v3(
        credentials=creds,
        host=server.endpoint,
        action=action,
        params=params,
        date=date or date_of(server),
        nonce=nonce or signing.new_nonce(),
        extra_headers=extra_headers,
    )


def sign_v1(
    server: EmulatorServer,
    params: Mapping[str, str],
    *,
    action: str = "BatchGetOnlineUsers",
    creds: signing.SigningCredentials = DEMO,
    nonce: str | None = None,
    timestamp: str | None = None,
) -> signing.SignedRequest:
    return signing.sign_v1(
        credentials=creds,
        host=server.endpoint,
        action=action,
        params=params,
        timestamp=timestamp or date_of(server),
        nonce=nonce or signing.new_nonce(),
    )


async def send(
    session: aiohttp.ClientSession,
    server: EmulatorServer,
    signed: signing.SignedRequest,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    method: str = "POST",
) -> Reply:
    """Send a signed request verbatim (optionally with another body or extra headers)."""
    url = yarl.URL(
        f"{server.url}/?{signed.query}" if signed.query else f"{server.url}/", encoded=True
    )
    all_headers = {**signed.headers, **(headers or {})}
    async with session.request(
        method,
        url,
        data=signed.body if body is None else body,
        headers=all_headers,
        skip_auto_headers=("Content-Type",),
    ) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


async def call(
    session: aiohttp.ClientSession,
    server: EmulatorServer,
    params: Mapping[str, str],
    **kwargs: Any,
) -> Reply:
    return await send(session, server, sign_v3(server, params, **kwargs))


def batch_params(
    uids: list[str], app: str = "demo-app", group: str = "demo-group"
) -> dict[str, str]:
    return {"AppId": app, "GroupId": group, "UserIds": ",".join(uids)}


async def inspect(
    session: aiohttp.ClientSession,
    server: EmulatorServer,
    path: str,
    json: Any = None,
    method: str | None = None,
) -> Any:
    method = method or ("GET" if json is None else "POST")
    async with session.request(method, f"{server.url}/_emulator/{path}", json=json) as resp:
        assert resp.status == 200, await resp.text()
        return orjson.loads(await resp.read())


def assert_envelope(reply: Reply, code: str, status: int) -> None:
    assert (reply.status, reply.code) == (status, code), reply.body
    assert reply.headers["Content-Type"] == "application/json;charset=utf-8"
    body = reply.json
    assert list(body) == ["RequestId", "HostId", "Code", "Message", "Recommend"]
    assert UUID_UPPER.fullmatch(body["RequestId"])
    assert reply.headers["x-acs-request-id"] == body["RequestId"]
    assert body["HostId"] == "127.0.0.1"
    assert body["Recommend"] == (
        f"https://api.aliyun.com/troubleshoot?q={code}&product=live&requestId={body['RequestId']}"
    )


async def send_raw(
    session: aiohttp.ClientSession, server: EmulatorServer, headers: dict[str, str], body: bytes
) -> Reply:
    async with session.post(
        f"{server.url}/", data=body, headers=headers, skip_auto_headers=("Content-Type",)
    ) as resp:
        return Reply(resp.status, resp.headers, await resp.read())
