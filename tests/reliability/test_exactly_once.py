"""R1, R10, R11: every distinct UID gets exactly one record, whatever the cloud does."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.config import ApiConfig, LimitsConfig, PollerConfig, RetryConfig
from poller.core.batching import invalid_reason
from poller.core.records import Batch, Record, Target
from poller.emulator import EmulatorConfig, EmulatorServer, FaultRates, GroupSpec
from poller.engine.poller import Poller
from poller.wire.client import LiveClient, OnlineUsersAnswer
from poller.wire.signing import SigningCredentials

FAULTS = (
    "500=0.10,throttle=0.05,hang=0.02,reset_before=0.02,reset_after=0.02,"
    "malformed=0.02,partial=0.01"
)
TARGET = Target("demo-app", "demo-group")
CREDS = SigningCredentials("demo-key", "demo-secret")


TRANSPORTS = ("aiohttp", "builtin")


def fast_config(
    endpoint: str, *, timeout_s: float = 0.3, transport: str = "aiohttp"
) -> PollerConfig:
    return PollerConfig(
        api=ApiConfig(
            endpoint=endpoint,
            protocol="http",
            timeout_s=timeout_s,
            transport=transport,  # type: ignore[arg-type]
        ),
        limits=LimitsConfig(qps=1000, max_in_flight=16),
        retry=RetryConfig(
            max_attempts=4, backoff_base_s=0.005, backoff_cap_s=0.05, throttle_backoff_base_s=0.02
        ),
    )


class SpyClient:
    """Wraps the real client and remembers every UID that went on the wire."""

    def __init__(self, client: LiveClient) -> None:
        self.client = client
        self.sent: list[str] = []

    async def fetch(self, batch: Batch) -> OnlineUsersAnswer:
        self.sent.extend(batch.uids)
        return await self.client.fetch(batch)


member = st.integers(1, 400).map(lambda i: f"user-{i:06d}")
weird = st.text(
    alphabet=st.one_of(st.characters(), st.sampled_from(",\n\r\x00\x7f\u2028\ufeff\u200d~*+/= %&")),
    max_size=24,
)
huge = st.integers(120, 300).map(lambda n: "x" * n)
uid_lists = st.lists(st.one_of(member, member, member, weird, huge), min_size=1, max_size=250)


async def faulty_sweep(
    uids: list[str], seed: int, transport: str = "aiohttp"
) -> tuple[list[Record], dict[str, Any], Any, SpyClient]:
    config = EmulatorConfig(
        port=0,
        groups=(GroupSpec("demo-app", "demo-group", 400),),
        qps=0,
        seed=seed,
        faults=FaultRates.parse(FAULTS),
        fault_seed=seed,
        hang_s=1.0,
    )
    async with EmulatorServer(config) as emulator:
        poller_config = fast_config(emulator.endpoint, transport=transport)
        async with LiveClient(poller_config.api, CREDS) as client:
            spy = SpyClient(client)
            async with Poller(poller_config, fetcher=spy) as poller:
                records = [r async for r in poller.sweep(TARGET, uids)]
                stats = poller.last
        truth = {m["user_id"]: m for m in emulator.state.snapshot("demo-app", "demo-group")}
        injected = emulator.stats()["faults_injected"]
    return records, {"truth": truth, "injected": injected}, stats, spy


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@pytest.mark.parametrize("transport", TRANSPORTS)
@given(uids=uid_lists, seed=st.integers(0, 2**20))
def test_exactly_one_record_per_uid_under_every_fault(
    transport: str, uids: list[str], seed: int
) -> None:
    records, info, stats, spy = asyncio.run(faulty_sweep(uids, seed, transport))
    counts = Counter(r["uid"] for r in records)
    assert set(counts) == set(uids), "a UID got no record"
    assert max(counts.values()) == 1, "a UID got two records"
    truth = info["truth"]
    for r in records:
        uid = r["uid"]
        if invalid_reason(uid) is not None:
            assert r["type"] == "error" and r["code"] == "InvalidUserId"
        elif r["type"] == "presence":  # never someone else's answer
            expected = truth.get(uid, {"online": False, "join_time": 0})
            assert (r["online"], r["join_time"]) == (expected["online"], expected["join_time"])
    assert all(invalid_reason(u) is None for u in spy.sent), "an invalid ID reached the server"
    by_status = Counter(r["code"] if r["type"] == "error" else r["type"] for r in records)
    assert stats.records == by_status  # the counters agree with the records


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_faults_really_happen_in_those_sweeps(transport: str) -> None:
    uids = [f"user-{i:06d}" for i in range(1, 401)] * 1
    records, info, stats, _ = asyncio.run(faulty_sweep(uids, 12345, transport))
    assert sum(info["injected"].values()) >= 3
    assert stats.retries >= 3
    assert len(records) == len({r["uid"] for r in records}) == 400
    print(
        f"\nR1 ({transport}): faults {info['injected']}, retries {stats.retries}, "
        f"{dict(stats.records)}"
    )


# ---------------------------------------------------------------------------------- R11

CANNED: dict[str, tuple[int, str, bytes]] = {
    "not-json": (200, "application/json", b"this is not json"),
    "html": (502, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "truncated": (200, "application/json", b'{"RequestId":"x","Result":{"OnlineUsers":[{"Us'),
    "empty": (200, "application/json", b""),
    "xml": (200, "text/xml;charset=utf-8", b"<Response><RequestId>x</RequestId></Response>"),
    "wrong-types": (
        200,
        "application/json",
        b'{"RequestId":"x","Result":{"OnlineUsers":[{"UserId":1,"Online":"yes","JoinTime":"0"}]}}',
    ),
    "no-result": (200, "application/json", b'{"RequestId":"x"}'),
    "result-not-object": (200, "application/json", b'{"RequestId":"x","Result":[1,2]}'),
    "array": (200, "application/json", b"[1, 2, 3]"),
    "error-without-code": (500, "application/json", b'{"RequestId":"x"}'),
    "nan": (200, "application/json", b'{"RequestId":"x","Result":{"OnlineUsers":NaN}}'),
}


async def canned_sweep(kind: str) -> tuple[list[Record], int]:
    status, ctype, body = CANNED[kind]
    hits = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(status=status, body=body, headers={"Content-Type": ctype})

    app = web.Application()
    app.router.add_route("*", "/", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        config = fast_config(f"127.0.0.1:{server.port}")
        async with Poller(config, credentials=CREDS) as poller:
            records = [r async for r in poller.sweep(TARGET, [f"u{i}" for i in range(30)])]
    return records, hits


def test_malformed_answers_become_per_uid_errors_not_crashes() -> None:
    for kind in CANNED:
        records, hits = asyncio.run(canned_sweep(kind))
        assert sorted(r["uid"] for r in records) == sorted(f"u{i}" for i in range(30)), kind
        assert all(r["type"] == "error" for r in records), kind
        codes = {r["code"] for r in records if r["type"] == "error"}
        assert codes <= {"MalformedResponse", "HTTP500"}, (kind, codes)
        assert hits <= 2 * 4, kind  # bounded: at most max_attempts per batch
