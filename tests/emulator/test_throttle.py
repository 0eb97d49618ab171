"""Per-account QPS over sliding one-second windows, against a reference computation."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from poller.emulator import AccessKey, EmulatorServer
from poller.emulator.throttle import SlidingWindowLimiter, WindowMax
from poller.wire import signing

from .conftest import FakeClock, MakeServer, batch_params, call

PARAMS = batch_params(["user-000001"])


def reference_admissions(times: list[float], qps: int) -> list[bool]:
    """Admit at t iff fewer than qps admissions lie in (t - 1, t]. Quadratic on purpose."""
    admitted: list[float] = []
    out = []
    for t in times:
        ok = sum(1 for a in admitted if t - 1.0 < a <= t) < qps
        if ok:
            admitted.append(t)
        out.append(ok)
    return out


def reference_window_max(times: list[float]) -> int:
    return max((sum(1 for s in times if t - 1.0 < s <= t) for t in times), default=0)


def test_limiter_matches_reference_on_random_arrivals() -> None:
    rng = random.Random(3)
    times = sorted(rng.uniform(0, 5) for _ in range(1500))
    limiter = SlidingWindowLimiter(100)
    got = [limiter.try_acquire(t) == 0 for t in times]
    assert got == reference_admissions(times, 100)
    admitted = [t for t, ok in zip(times, got, strict=True) if ok]
    assert reference_window_max(admitted) == 100
    window = WindowMax()
    for t in times:
        window.add(t)
    assert window.max == reference_window_max(times)


def test_retry_after_is_time_until_the_oldest_admission_leaves() -> None:
    limiter = SlidingWindowLimiter(2)
    assert limiter.try_acquire(10.0) == 0
    assert limiter.try_acquire(10.3) == 0
    assert limiter.try_acquire(10.5) == 500
    assert limiter.try_acquire(10.9995) == 1  # rounded up, never 0
    assert limiter.try_acquire(11.0) == 0  # (10.0 is no longer within (10.0, 11.0])
    assert SlidingWindowLimiter(0).try_acquire(0.0) == 0  # unlimited


async def test_300_requests_throttled_exactly_as_the_reference(
    make_server: MakeServer, session: aiohttp.ClientSession, mono: FakeClock
) -> None:
    server = await make_server(qps=100)
    rng = random.Random(11)
    start = mono.now
    # 300 arrivals over ~1.6 s: bursts and gaps, so the window both fills and slides.
    times = sorted(start + rng.uniform(0, 1.6) for _ in range(300))
    expected = reference_admissions(times, 100)
    got = []
    for t in times:
        mono.now = t
        reply = await call(session, server, PARAMS)
        got.append(reply.status == 200)
        if reply.status != 200:
            assert reply.code == "Throttling.User"
            assert int(reply.headers["x-acs-retry-after"]) >= 1
    assert got == expected
    assert 0 < got.count(False) < 200
    stats = server.stats()["total"]
    assert stats["throttled_total"] == got.count(False)
    assert stats["max_admitted_in_any_1s_window"] == 100
    assert stats["max_requests_in_any_1s_window"] == reference_window_max(times)
    assert stats["responses_by_code"] == {
        "OK": got.count(True),
        "Throttling.User": got.count(False),
    }


async def test_concurrent_burst_then_window_slides(
    make_server: MakeServer, session: aiohttp.ClientSession, mono: FakeClock
) -> None:
    server = await make_server(qps=100)
    replies = await asyncio.gather(*(call(session, server, PARAMS) for _ in range(300)))
    assert sum(r.status == 200 for r in replies) == 100
    assert {r.headers.get("x-acs-retry-after") for r in replies if r.status != 200} == {"1000"}
    mono.advance(0.4)
    reply = await call(session, server, PARAMS)
    assert (reply.code, reply.headers["x-acs-retry-after"]) == ("Throttling.User", "600")
    mono.advance(0.6)  # the burst is now exactly one second old: out of the window
    replies = await asyncio.gather(*(call(session, server, PARAMS) for _ in range(150)))
    assert sum(r.status == 200 for r in replies) == 100
    stats = server.stats()["total"]
    assert stats["max_admitted_in_any_1s_window"] == 100
    assert stats["max_requests_in_any_1s_window"] == 301
    assert stats["requests_total"] == 451 and stats["throttled_total"] == 251


async def test_budget_is_per_account_shared_by_its_keys(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await make_server(
        qps=3,
        keys=(
            AccessKey("a1", "s"),
            AccessKey("a2", "s"),  # same (default) account as a1
            AccessKey("b1", "s", account="other"),
        ),
    )
    creds = {k: signing.SigningCredentials(k, "s") for k in ("a1", "a2", "b1")}
    codes = [
        (await call(session, server, PARAMS, creds=creds[k])).code
        for k in ("a1", "a2", "a1", "a2", "b1", "b1", "b1", "b1")
    ]
    assert codes == ["OK", "OK", "OK", "Throttling.User", "OK", "OK", "OK", "Throttling.User"]
    accounts = server.stats()["accounts"]
    assert accounts["default"]["throttled_total"] == 1 and accounts["other"]["throttled_total"] == 1
    assert accounts["default"]["max_admitted_in_any_1s_window"] == 3


async def test_unauthenticated_requests_count_in_total_only_and_are_not_throttled(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await make_server(qps=1)
    bad = signing.SigningCredentials("demo-key", "wrong")
    for _ in range(3):
        assert (await call(session, server, PARAMS, creds=bad)).code == "SignatureDoesNotMatch"
    nobody = signing.SigningCredentials("nobody", "x")
    assert (await call(session, server, PARAMS, creds=nobody)).status == 404
    assert (await call(session, server, PARAMS)).code == "OK"
    stats = server.stats()
    assert stats["total"]["requests_total"] == 5
    assert stats["total"]["max_requests_in_any_1s_window"] == 5
    assert stats["accounts"]["default"]["requests_total"] == 4  # the unknown key has no account
    assert stats["accounts"]["default"]["max_admitted_in_any_1s_window"] == 1


@pytest.mark.parametrize("qps", [0])
async def test_qps_zero_is_unlimited(
    make_server: MakeServer, session: aiohttp.ClientSession, qps: int
) -> None:
    server: EmulatorServer = await make_server(qps=qps)
    replies = await asyncio.gather(*(call(session, server, PARAMS) for _ in range(250)))
    assert all(r.status == 200 for r in replies)
    assert server.stats()["total"]["max_admitted_in_any_1s_window"] == 250
