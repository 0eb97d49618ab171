"""LiveClient against the in-process emulator, over both transports (builtin and aiohttp)."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

import aiohttp
import pytest

from poller.config import (
    ApiConfig,
    LimitsConfig,
    PollerConfig,
    RetryConfig,
    parse_config,
    split_endpoint,
)
from poller.core.errors import (
    AttemptTimeout,
    AuthError,
    ConfigError,
    MalformedResponse,
    ServerError,
    StaleConnection,
    ThrottledError,
    TransportError,
)
from poller.core.records import Batch, Target
from poller.core.stats import Attempt
from poller.emulator import EmulatorConfig, EmulatorServer, FaultRates, GroupSpec
from poller.emulator.accounts import AccessKey
from poller.engine.poller import Poller
from poller.wire.client import LiveClient
from poller.wire.signing import SigningCredentials
from tests.conftest import FakeClock, LoopbackServer

Transport = Literal["builtin", "aiohttp"]
TRANSPORTS: tuple[Transport, ...] = ("builtin", "aiohttp")
TARGET = Target("demo-app", "demo-group")


def _creds(secret: str = "demo-secret") -> SigningCredentials:
    return SigningCredentials("demo-key", secret)


def _api(server: EmulatorServer, transport: Transport) -> ApiConfig:
    return ApiConfig(endpoint=server.endpoint, protocol="http", timeout_s=2.0, transport=transport)


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    config = EmulatorConfig(port=0, qps=0, groups=(GroupSpec("demo-app", "demo-group", 40),))
    async with EmulatorServer(config) as server:
        yield server


def _batch(uids: list[str]) -> Batch:
    return Batch(TARGET, tuple(uids))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("signature", ["v3", "v1"])
async def test_answers_match_the_group_and_connections_are_kept_alive(
    emulator: EmulatorServer, transport: Transport, signature: str
) -> None:
    truth = {m["user_id"]: m["online"] for m in emulator.state.snapshot("demo-app", "demo-group")}
    uids = [*sorted(truth)[:18], "not-a-member", "用户 a+b&c=d%"]
    api = replace(_api(emulator, transport), signature=signature)  # type: ignore[arg-type]
    async with LiveClient(api, _creds()) as client:
        assert client.transport_name == transport
        answers = [await client.fetch(_batch(uids)) for _ in range(5)]
        opened = client.connections_opened
    for answer in answers:
        got = {u["UserId"]: u["Online"] for u in answer.online_users}
        assert answer.request_id
        assert {u: got[u] for u in truth if u in got} == {u: truth[u] for u in uids if u in truth}
        assert not got.get("not-a-member", False)
    assert emulator.stats()["total"]["requests_total"] == 5
    assert opened == 1  # five sequential calls, one keep-alive connection


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sts_credentials_are_accepted(transport: Transport) -> None:
    key = AccessKey("sts-id", "sts-secret", security_token="tok/en+=")
    config = EmulatorConfig(port=0, qps=0, keys=(key,))
    async with EmulatorServer(config) as server:
        creds = SigningCredentials("sts-id", "sts-secret", "tok/en+=")
        async with LiveClient(_api(server, transport), creds) as client:
            answer = await client.fetch(_batch(["user-000001"]))
    assert [u["UserId"] for u in answer.online_users] == ["user-000001"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ("500", ServerError, "InternalError"),
        ("503", ServerError, "ServiceUnavailable"),
        ("throttle", ThrottledError, None),
        ("hang", AttemptTimeout, "Timeout"),
        ("reset_before", TransportError, None),
        ("reset_after", TransportError, None),
    ],
)
async def test_every_fault_becomes_its_error_and_the_next_call_succeeds(
    transport: Transport, fault: str, error: type[Exception], code: str | None
) -> None:
    config = EmulatorConfig(
        port=0, qps=0, faults=FaultRates(((fault, 1.0),)), hang_s=5.0, fault_seed=1
    )
    async with EmulatorServer(config) as server:
        api = replace(_api(server, transport), timeout_s=0.3)
        async with LiveClient(api, _creds()) as client:
            for _ in range(2):  # a failed exchange never poisons the next one
                with pytest.raises(error) as caught:
                    await client.fetch(_batch(["user-000001"]))
                if code is not None:
                    assert getattr(caught.value, "code", None) == code
            assert client.attempts == 2
    if fault == "throttle":
        assert isinstance(caught.value, ThrottledError) and caught.value.retry_after_s


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_malformed_answers_and_a_wrong_secret(
    emulator: EmulatorServer, transport: Transport
) -> None:
    async with LiveClient(_api(emulator, transport), _creds("wrong")) as client:
        with pytest.raises(AuthError) as caught:
            await client.fetch(_batch(["user-000001"]))
    assert "wrong" not in str(caught.value) and "demo-secret" not in str(caught.value)
    config = EmulatorConfig(port=0, qps=0, faults=FaultRates((("malformed", 1.0),)), fault_seed=3)
    async with (
        EmulatorServer(config) as server,
        LiveClient(_api(server, transport), _creds()) as client,
    ):
        for _ in range(4):
            with pytest.raises(MalformedResponse):
                await client.fetch(_batch(["user-000001"]))


async def test_a_connection_refused_is_a_transport_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for transport in TRANSPORTS:
        api = ApiConfig(endpoint=f"127.0.0.1:{port}", protocol="http", transport=transport)
        async with LiveClient(api, _creds()) as client:
            with pytest.raises(TransportError, match=r"refused|Cannot connect|Connect call"):
                await client.fetch(_batch(["u"]))


async def test_a_caller_session_selects_aiohttp_and_stays_open(emulator: EmulatorServer) -> None:
    async with aiohttp.ClientSession() as session:
        client = LiveClient(_api(emulator, "builtin"), _creds(), session=session)
        async with client:
            assert client.transport_name == "aiohttp" and client.connections_opened is None
            await client.fetch(_batch(["user-000001"]))
        assert not session.closed


async def test_a_bad_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    api = ApiConfig(endpoint="127.0.0.1:1", ca_file=tmp_path / "missing.pem")
    for transport in TRANSPORTS:
        with pytest.raises(ConfigError) as caught:
            async with LiveClient(replace(api, transport=transport), _creds()):
                pass
        assert caught.value.key == "api.ca_file"


def test_endpoints_split_into_host_and_port() -> None:
    assert split_endpoint("live.aliyuncs.com", 443) == ("live.aliyuncs.com", 443)
    assert split_endpoint("127.0.0.1:8780", 80) == ("127.0.0.1", 8780)
    assert split_endpoint("[::1]:8780", 80) == ("::1", 8780)
    assert split_endpoint("[::1]", 443) == ("::1", 443)
    for bad in ("host:http", "host:0", "host:70000", "host:+443", "host: 443", "host:44_3"):
        with pytest.raises(ConfigError) as caught:
            split_endpoint(bad, 443)
        assert caught.value.key == "api.endpoint"


def test_the_transport_is_a_config_choice() -> None:
    assert parse_config({}).api.transport == "aiohttp"
    assert parse_config({"api": {"transport": "builtin"}}).api.transport == "builtin"
    assert parse_config({}).api.keepalive_s == 15.0
    assert parse_config({"api": {"keepalive_s": 4.5}}).api.keepalive_s == 4.5
    for bad in (0, -1, float("inf")):
        with pytest.raises(ConfigError) as caught:
            parse_config({"api": {"keepalive_s": bad}})
        assert caught.value.key == "api.keepalive_s"
    with pytest.raises(ConfigError) as caught:
        parse_config({"api": {"transport": "curl"}}, source="p.toml")
    assert caught.value.key == "api.transport" and "p.toml" in str(caught.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sweeps_report_the_connections_they_opened(
    emulator: EmulatorServer, transport: Transport
) -> None:
    config = PollerConfig(
        api=_api(emulator, transport), limits=LimitsConfig(qps=1000, max_in_flight=4)
    )
    uids = [f"user-{i:06d}" for i in range(1, 201)]  # 10 requests
    opened: list[int] = []
    async with Poller(config, credentials=_creds()) as poller:
        for _ in range(2):
            records = [r async for r in poller.sweep(TARGET, uids)]
            assert len(records) == 200
            assert poller.last is not None
            opened.append(poller.last.connections_opened)
            assert poller.last.summary()["connections_opened"] == opened[-1]
    assert 1 <= opened[0] <= 4 + 8
    # The second sweep reused the kept-alive connections: it opens at most the ones the first
    # sweep never needed (the pool holds max_in_flight = 4; how many the first sweep needed
    # depends on how fast answers came back, e.g. on a loaded CI machine).
    assert opened[1] <= 4 - min(opened[0], 4)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_connect_timeout_is_a_timeout_on_both_transports(
    transport: Transport, black_hole_port: int
) -> None:
    endpoint = f"127.0.0.1:{black_hole_port}"
    api = ApiConfig(
        endpoint=endpoint,
        protocol="http",
        timeout_s=5.0,
        connect_timeout_s=0.2,
        transport=transport,
    )
    async with LiveClient(api, _creds()) as client:
        with pytest.raises(AttemptTimeout) as caught:
            await client.fetch(_batch(["u"]))
    assert caught.value.code == "Timeout" and caught.value.retriable
    assert str(caught.value) == f"no connection to {endpoint} within 0.2 s"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("status", "retriable"), [(408, True), (400, False), (502, True)])
async def test_non_json_answers_are_retried_only_when_the_status_says_so(
    transport: Transport, status: int, retriable: bool
) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    hits: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=status, text="<html>nope</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        api = ApiConfig(endpoint=f"127.0.0.1:{server.port}", protocol="http", transport=transport)
        async with LiveClient(api, _creds()) as client:
            with pytest.raises(MalformedResponse) as caught:
                await client.fetch(_batch(["u"]))
    assert caught.value.retriable is retriable and hits == ["/"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_redirects_are_not_followed(transport: Transport) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPTemporaryRedirect("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"RequestId": "r", "Result": {"OnlineUsers": []}})

    app = web.Application()
    app.router.add_post("/", redirect)
    app.router.add_post("/elsewhere", elsewhere)
    async with TestServer(app, host="127.0.0.1") as server:
        api = ApiConfig(endpoint=f"127.0.0.1:{server.port}", protocol="http", transport=transport)
        async with LiveClient(api, _creds()) as client:
            with pytest.raises(MalformedResponse):  # a 307 with a text body, not an answer
                await client.fetch(_batch(["u"]))
    assert hits == ["/"]  # the signed request (and its nonce) went out exactly once


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_signatures_are_dated_by_the_injected_clock(transport: Transport) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    dates: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        dates.append(request.headers.get("x-acs-date"))
        return web.json_response({"RequestId": "r", "Result": {"OnlineUsers": []}})

    app = web.Application()
    app.router.add_post("/", handler)
    clock = FakeClock(start=0.0)
    clock.epoch = 1_764_100_000.0  # time() starts at 2025-11-25T19:46:40Z
    async with TestServer(app, host="127.0.0.1") as server:
        api = ApiConfig(endpoint=f"127.0.0.1:{server.port}", protocol="http", transport=transport)
        async with LiveClient(api, _creds(), clock=clock) as client:
            await client.fetch(_batch(["u"]))
            clock.now += 61.0
            await client.fetch(_batch(["u"]))
    assert dates == ["2025-11-25T19:46:40Z", "2025-11-25T19:47:41Z"]


def test_importing_poller_does_not_import_aiohttp() -> None:
    code = (
        "import sys, poller, poller.wire.client\n"
        "print(sorted({'aiohttp', 'yarl', 'multidict'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- connections counted, stale connections re-sent at once -----------------------------------

ANSWER = b'{"RequestId": "r", "Result": {"OnlineUsers": [{"UserId": "u", "Online": true}]}}'


class IdleCloser(LoopbackServer):
    """Answers the first request of each connection (keep-alive), then closes the connection as
    the next request arrives, as a gateway does with one it has just timed out as idle; with
    ``reset``, with a TCP RST; with ``answer_first=False``, on the first request already."""

    def __init__(self, *, reset: bool = False, answer_first: bool = True) -> None:
        super().__init__()
        self.reset = reset
        self.answer_first = answer_first
        self.answered = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.answer_first:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await asyncio.wait_for(reader.readexactly(int(length[1]) if length else 0), 5.0)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
                )
                await writer.drain()
                self.answered += 1
            await asyncio.wait_for(reader.read(1), 30.0)  # the next request's first bytes
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        if self.reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("reset", [False, True])
async def test_a_kept_alive_connection_closed_as_we_send_is_stale(
    transport: Transport, reset: bool
) -> None:
    async with IdleCloser(reset=reset) as server:
        api = ApiConfig(endpoint=f"127.0.0.1:{server.port}", protocol="http", transport=transport)
        async with LiveClient(api, _creds()) as client:
            await client.fetch(_batch(["u"]))
            with pytest.raises(StaleConnection) as caught:
                await client.fetch(_batch(["u"]))  # on the kept-alive, now closed, connection
            await client.fetch(_batch(["u"]))  # a fresh connection
            assert client.connections_opened == server.accepted == 2
    assert caught.value.retriable and caught.value.immediate
    assert caught.value.code == "ConnectionError"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_fresh_connection_closed_before_the_answer_is_not_stale(
    transport: Transport,
) -> None:
    async with IdleCloser(answer_first=False) as server:
        api = ApiConfig(endpoint=f"127.0.0.1:{server.port}", protocol="http", transport=transport)
        async with LiveClient(api, _creds()) as client:
            for _ in range(2):
                with pytest.raises(TransportError) as caught:
                    await client.fetch(_batch(["u"]))
                assert not isinstance(caught.value, StaleConnection)
            assert client.connections_opened == server.accepted == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_poller_resends_a_stale_request_at_once_without_a_retry_token(
    transport: Transport,
) -> None:
    attempts: list[Attempt] = []
    async with IdleCloser() as server:
        config = PollerConfig(
            api=ApiConfig(
                endpoint=f"127.0.0.1:{server.port}", protocol="http", transport=transport
            ),
            retry=RetryConfig(budget_ratio=0.0, budget_min_tokens=0.0),  # no retry token at all
        )
        async with Poller(config, credentials=_creds(), on_attempt=attempts.append) as poller:
            sweeps = [[r async for r in poller.sweep(TARGET, ["u"])] for _ in range(2)]
            budget = poller._retrier.budget
    assert [[r["type"] for r in records] for records in sweeps] == [["presence"], ["presence"]]
    assert [(a.number, a.outcome, a.retry_of) for a in attempts] == [
        (1, "ok", None),
        (1, "connection_error", None),
        (2, "ok", "ConnectionError"),  # at once, though no retry token was there to spend
    ]
    assert budget.spent == 0 and budget.denied == 0
    assert server.accepted == 2 and server.answered == 2
