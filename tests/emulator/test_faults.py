"""Seeded faults: parsing, determinism, rates, and what a client observes for each kind."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import aiohttp
import orjson
import pytest

from poller.emulator import FAULT_KINDS, EmulatorServer, FaultRates, Latency
from poller.emulator.faults import FaultInjector, partial_online_users, truncate_json

from .conftest import MakeServer, batch_params, inspect, send, sign_v3

UIDS = ["user-000001", "user-000002", "user-000003", "user-000004", "user-000005"]
PARAMS = batch_params(UIDS)
BRIEF_SPEC = (
    "500=0.05,503=0.02,throttle=0.01,hang=0.01,reset_before=0.01,reset_after=0.01,"
    "malformed=0.01,partial=0.01"
)
ALL_BUT_HANG = (
    "500=0.1,503=0.1,throttle=0.1,reset_before=0.1,reset_after=0.1,malformed=0.1,partial=0.1"
)


# ------------------------------------------------------------------------------- pure parts


def test_parse_and_validate() -> None:
    rates = FaultRates.parse(" 500=0.05, 503=0.02,hang=0.01 ,partial=0 ")
    assert rates.as_dict() == {"500": 0.05, "503": 0.02, "hang": 0.01}
    assert str(rates) == "500=0.05,503=0.02,hang=0.01"
    assert not FaultRates.parse("") and FaultRates.from_mapping({"500": "0.5"})
    for bad in (
        "500",
        "nope=0.1",
        "500=x",
        "500=-0.1",
        "500=1.5",
        "500=0.6,503=0.6",
        "500=0.1,500=0.1",
    ):
        with pytest.raises(ValueError):
            FaultRates.parse(bad)
    with pytest.raises(ValueError):
        FaultRates.from_mapping({"500": True})
    assert Latency.parse("50±10") == Latency(50, 10) == Latency.parse("50+-10")
    assert Latency.parse("7") == Latency(7, 0) and not Latency.parse("0")
    with pytest.raises(ValueError):
        Latency.parse("fast")


def test_same_seed_same_sequence_other_seed_another() -> None:
    rates = FaultRates.parse(ALL_BUT_HANG)

    def sequence(seed: int) -> list[tuple[str, float] | None]:
        injector = FaultInjector(rates, seed)
        return [(d.kind, d.detail) if (d := injector.draw()) else None for _ in range(500)]

    assert sequence(5) == sequence(5)
    assert sequence(5) != sequence(6)


def _within_4_sigma(count: int, n: int, p: float) -> bool:
    """Binomial(n, p): |count - np| <= 4 sd (two-sided false alarm about 6e-5 per check)."""
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_injector_rates_match_configuration() -> None:
    spec = BRIEF_SPEC
    rates = FaultRates.parse(spec)
    injector = FaultInjector(rates, 1)
    n = 100_000
    counts = Counter(d.kind if (d := injector.draw()) else "none" for _ in range(n))
    for kind, p in rates.rates:
        assert _within_4_sigma(counts[kind], n, p), (kind, counts[kind])
    assert _within_4_sigma(counts["none"], n, 1 - sum(p for _, p in rates.rates))


def test_detail_is_uniform_and_drives_variants() -> None:
    injector = FaultInjector(FaultRates.parse("malformed=0.3,partial=0.3"), 2)
    details = [d.detail for _ in range(20_000) if (d := injector.draw())]
    assert all(0.0 <= x < 1.0 for x in details)
    assert _within_4_sigma(sum(x < 0.5 for x in details), len(details), 0.5)
    body = orjson.dumps({"RequestId": "x", "Result": {"OnlineUsers": []}})
    for x in (0.0, 0.3, 0.999999):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(truncate_json(body, x))
    users = [{"UserId": u, "Online": False, "JoinTime": 0} for u in UIDS]
    variants = {partial_online_users(users, UIDS, x / 30)[0] for x in range(30)}
    assert variants == {"missing", "duplicate", "extra"}


# ------------------------------------------------------------------------------- over HTTP


async def outcome(
    session: aiohttp.ClientSession, server: EmulatorServer, deadline_s: float | None = None
) -> str:
    signed = sign_v3(server, PARAMS)
    try:
        async with asyncio.timeout(deadline_s):
            reply = await send(session, server, signed)
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientConnectionError:
        return "reset"
    if reply.status == 502:
        assert reply.headers["Content-Type"].startswith("text/html")
        assert reply.body.startswith(b"<html>")
        return "malformed-html"
    try:
        body = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        assert reply.status == 200
        return "malformed-json"
    if reply.status != 200:
        kind = {"InternalError": "500", "ServiceUnavailable": "503", "Throttling.User": "throttle"}
        if body["Code"] == "Throttling.User":
            assert 1 <= int(reply.headers["x-acs-retry-after"]) <= 1000
        return kind[body["Code"]]
    got = [u["UserId"] for u in body["Result"]["OnlineUsers"]]
    if got == UIDS:
        return "ok"
    if len(got) < len(UIDS):
        assert set(got) < set(UIDS)
        return "partial-missing"
    if set(got) == set(UIDS):
        assert len(got) == len(UIDS) + 1
        return "partial-duplicate"
    assert set(got) - set(UIDS) and len(got) == len(UIDS) + 1
    return "partial-extra"


def predicted(spec: str, seed: int, n: int) -> list[str]:
    """What a client should observe, from an offline injector with the same seed."""
    injector = FaultInjector(FaultRates.parse(spec), seed)
    out = []
    for _ in range(n):
        d = injector.draw()
        if d is None:
            out.append("ok")
        elif d.kind in ("reset_before", "reset_after", "hang"):
            out.append("reset")
        elif d.kind == "malformed":
            out.append("malformed-json" if d.detail < 0.5 else "malformed-html")
        elif d.kind == "partial":
            users = [{"UserId": u} for u in UIDS]
            out.append("partial-" + partial_online_users(users, UIDS, d.detail)[0])
        else:
            out.append(d.kind)
    return out


async def test_same_seed_same_observed_sequence(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    faults = FaultRates.parse(ALL_BUT_HANG)
    seen = []
    for _ in range(2):
        server = await make_server(qps=0, faults=faults, seed=42)
        seen.append([await outcome(session, server) for _ in range(80)])
    assert seen[0] == seen[1] == predicted(ALL_BUT_HANG, 42, 80)
    assert set(seen[0]) >= {"ok", "500", "503", "throttle", "reset", "partial-missing"}
    other = await make_server(qps=0, faults=faults, seed=42, fault_seed=43)
    assert [await outcome(session, other) for _ in range(80)] == predicted(ALL_BUT_HANG, 43, 80)


@pytest.mark.slow
async def test_rates_over_2000_requests(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    spec = BRIEF_SPEC
    rates = FaultRates.parse(spec)
    server = await make_server(qps=0, faults=rates, seed=9, hang_s=0)
    n = 2000
    observed: Counter[str] = Counter()
    for _ in range(n // 50):
        observed.update(await asyncio.gather(*(outcome(session, server) for _ in range(50))))
    injected = server.stats()["faults_injected"]
    offline: Counter[str] = Counter()
    injector = FaultInjector(rates, 9)
    for _ in range(n):
        if (d := injector.draw()) is not None:
            offline[d.kind] += 1
    assert injected == dict(offline)  # concurrency does not change the drawn sequence
    for kind, p in rates.rates:
        assert _within_4_sigma(injected.get(kind, 0), n, p), (kind, injected)
    assert observed["500"] == injected["500"] and observed["503"] == injected["503"]
    assert observed["throttle"] == injected["throttle"]
    assert (
        observed["reset"] == injected["hang"] + injected["reset_before"] + injected["reset_after"]
    )
    assert observed["malformed-json"] + observed["malformed-html"] == injected["malformed"]
    partial = sum(v for k, v in observed.items() if k.startswith("partial-"))
    assert partial == injected["partial"]
    total = server.stats()["total"]
    assert total["requests_total"] == n and total["throttled_total"] == 0
    assert total["no_response_total"] == observed["reset"]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("500", {"500"}),
        ("503", {"503"}),
        ("throttle", {"throttle"}),
        ("reset_before", {"reset"}),
        ("reset_after", {"reset"}),
        ("malformed", {"malformed-json", "malformed-html"}),
        ("partial", {"partial-missing", "partial-duplicate", "partial-extra"}),
    ],
)
async def test_each_kind_is_observable(
    make_server: MakeServer, session: aiohttp.ClientSession, kind: str, expected: set[str]
) -> None:
    server = await make_server(qps=0, faults=FaultRates.parse(f"{kind}=1"))
    seen = {await outcome(session, server) for _ in range(30)}
    assert seen == expected
    stats = server.stats()
    assert stats["faults_injected"] == {kind: 30}
    assert stats["total"]["throttled_total"] == 0  # injected throttling is not the limiter's


async def test_hang_is_a_client_timeout_then_a_close(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await make_server(faults=FaultRates.parse("hang=1"), hang_s=0.3)
    assert await outcome(session, server, deadline_s=0.05) == "timeout"
    assert await outcome(session, server, deadline_s=5) == "reset"  # closed after hang_s
    long = await make_server(faults=FaultRates.parse("hang=1"), hang_s=600)
    assert await outcome(session, long, deadline_s=0.05) == "timeout"
    await asyncio.wait_for(long.close(), 3)  # shutdown releases hung requests


@pytest.mark.parametrize(("kind", "consumed"), [("reset_before", False), ("reset_after", True)])
async def test_reset_and_nonce_consumption(
    make_server: MakeServer, session: aiohttp.ClientSession, kind: str, consumed: bool
) -> None:
    server = await make_server(faults=FaultRates.parse(f"{kind}=1"))
    join = {"AppId": "demo-app", "GroupId": "demo-group", "UserId": "joiner"}
    signed = sign_v3(server, join, action="JoinMessageGroup")
    with pytest.raises(aiohttp.ClientConnectionError):
        await send(session, server, signed)
    members = {m["user_id"] for m in server.state.snapshot("demo-app", "demo-group")}
    assert ("joiner" in members) is consumed  # reset_after processed the join
    await inspect(session, server, "faults", {})
    again = await send(session, server, signed)
    assert again.code == ("SignatureNonceUsed" if consumed else "OK")


async def test_faults_only_hit_authenticated_admitted_requests(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    from poller.wire.signing import SigningCredentials

    server = await make_server(qps=1, faults=FaultRates.parse("500=1"))
    bad = sign_v3(server, PARAMS, creds=SigningCredentials("demo-key", "wrong"))
    assert (await send(session, server, bad)).code == "SignatureDoesNotMatch"
    assert (await send(session, server, sign_v3(server, PARAMS))).code == "InternalError"
    assert (await send(session, server, sign_v3(server, PARAMS))).code == "Throttling.User"
    assert server.stats()["faults_injected"] == {"500": 1}


async def test_faults_change_at_run_time(
    server: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    assert await outcome(session, server) == "ok"
    view = await inspect(session, server, "faults", {"faults": "500=1", "seed": 7})
    assert view == {"faults": {"500": 1.0}, "spec": "500=1", "seed": 7}
    assert await outcome(session, server) == "500"
    await inspect(session, server, "faults", {"503": 1})
    assert await outcome(session, server) == "503"
    await inspect(session, server, "faults", {"faults": {"throttle": 1}})
    assert await outcome(session, server) == "throttle"
    for clear in ({}, "", {"faults": ""}):
        await inspect(session, server, "faults", {"500": 1})
        assert (await inspect(session, server, "faults", clear))["faults"] == {}
        assert await outcome(session, server) == "ok"
    async with session.post(f"{server.url}/_emulator/faults", data=b"") as resp:
        assert resp.status == 200
    # Reseeding restarts the sequence.
    spec = "500=0.3,503=0.3"
    await inspect(session, server, "faults", {"faults": spec, "seed": 3})
    first = [await outcome(session, server) for _ in range(20)]
    await inspect(session, server, "faults", {"faults": spec, "seed": 3})
    assert [await outcome(session, server) for _ in range(20)] == first == predicted(spec, 3, 20)
    assert (await inspect(session, server, "faults"))["seed"] == 3
    for bad in (
        {"faults": "bogus=1"},
        {"faults": "500=0.7,503=0.7"},
        {"faults": 5},
        {"faults": "500=1", "seed": "x"},
        [1],
    ):
        async with session.post(f"{server.url}/_emulator/faults", json=bad) as resp:
            assert resp.status == 400
            assert (await resp.json(content_type=None))["Code"] == "InvalidParameter"


async def test_latency_with_jitter_is_applied(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await make_server(latency=Latency(30, 10))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await outcome(session, server) == "ok"
    assert loop.time() - started >= 0.019  # lower bound only: the floor is 30 - 10 ms


def test_fault_kinds_are_the_documented_ones() -> None:
    assert FAULT_KINDS == (
        "500",
        "503",
        "server_error",
        "throttle",
        "hang",
        "reset_before",
        "reset_after",
        "malformed",
        "partial",
    )
