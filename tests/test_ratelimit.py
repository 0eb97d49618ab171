"""The rate meter on a fake clock: never more than qps in any window, yet ≥ 97 % of it."""

from __future__ import annotations

import asyncio
import bisect
import random

import pytest

from poller.core.ratelimit import PacedRateLimiter
from tests.conftest import FakeClock


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """Largest number of grants in any half-open window [t, t + window)."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


async def grant_times(limiter: PacedRateLimiter, clock: FakeClock, n: int) -> list[float]:
    out = []
    for _ in range(n):
        await limiter.acquire()
        out.append(clock.monotonic())
    return out


async def test_paced_never_bursts_and_reaches_97_percent() -> None:
    clock = FakeClock()
    limiter = PacedRateLimiter(100, clock=clock)
    times = await grant_times(limiter, clock, 1000)
    assert max_in_window(times) <= 100
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert rate >= 97.0


async def test_late_wakeups_are_caught_up_without_exceeding_the_window() -> None:
    rng = random.Random(1)
    clock = FakeClock(lateness=lambda: rng.uniform(0.0, 0.004))  # timers fire up to 4 ms late
    limiter = PacedRateLimiter(100, clock=clock)
    times = await grant_times(limiter, clock, 1500)
    assert max_in_window(times) <= 100
    assert (len(times) - 1) / (times[-1] - times[0]) >= 97.0


async def test_concurrent_acquirers_share_one_schedule() -> None:
    clock = FakeClock()
    limiter = PacedRateLimiter(50, clock=clock)
    times: list[float] = []

    async def worker() -> None:
        for _ in range(25):
            await limiter.acquire()
            times.append(clock.monotonic())

    async with asyncio.TaskGroup() as tg:
        for _ in range(16):
            tg.create_task(worker())
    assert len(times) == 400
    assert max_in_window(times) <= 50


async def test_idle_time_is_not_banked_as_a_burst() -> None:
    clock = FakeClock()
    limiter = PacedRateLimiter(100, clock=clock)
    await grant_times(limiter, clock, 10)
    clock.now += 60.0  # a minute of silence
    times = await grant_times(limiter, clock, 300)
    assert max_in_window(times) <= 100
    assert times[99] - times[0] >= 0.98


async def test_throttling_pauses_everyone_and_slows_down_then_recovers() -> None:
    clock = FakeClock()
    limiter = PacedRateLimiter(100, clock=clock)
    await grant_times(limiter, clock, 5)
    full_rate = limiter.rate
    t0 = clock.monotonic()
    limiter.on_throttled(0.4)
    limiter.on_throttled(0.1)  # a second signal within the same window: no further cut
    assert limiter.rate == full_rate * 0.7
    await limiter.acquire()
    assert clock.monotonic() >= t0 + 0.4
    # Once the window has passed, the rate climbs back linearly (2 % of max per second).
    times = await grant_times(limiter, clock, 3000)
    assert limiter.rate == full_rate
    assert max_in_window(times) <= 100
    assert limiter.stats().decreases == 1


async def test_fractional_and_small_budgets() -> None:
    clock = FakeClock()
    limiter = PacedRateLimiter(2.5, clock=clock)
    times = await grant_times(limiter, clock, 20)
    assert max_in_window(times) <= 2


async def test_a_lone_throttle_only_pauses() -> None:
    clock = FakeClock()
    limiter = PacedRateLimiter(100, clock=clock)
    await grant_times(limiter, clock, 5)
    full_rate = limiter.rate
    limiter.on_throttled(0.05)
    assert limiter.rate == full_rate and limiter.stats().decreases == 0
    clock.now += 10.0  # a quiet spell, then another lone one
    limiter.on_throttled(None)
    assert limiter.rate == full_rate
    limiter.on_throttled(None)  # a second one soon after: the account really is contended
    assert limiter.rate == full_rate * 0.7


async def test_reconfigure_to_a_lower_rate_keeps_the_window_guard() -> None:
    """A reload that lowers qps never lets the grants before it push a window over the new
    limit, and no pause is needed for it."""
    clock = FakeClock()
    limiter = PacedRateLimiter(100, clock=clock)
    before = await grant_times(limiter, clock, 150)
    limiter.reconfigure(20, margin_s=0.02)
    after = await grant_times(limiter, clock, 60)
    assert max_in_window(after) <= 20
    # Every second that starts after the change holds at most 20 grants, counting earlier ones.
    times = before + after
    starts = [t for t in times if t >= before[-1]]
    assert max(sum(s <= t < s + 1.0 for t in times) for s in starts) <= 20
    assert limiter.stats().max_rate == pytest.approx(20 / 1.02)


async def test_reconfigure_to_a_higher_rate_speeds_up_at_once() -> None:
    clock = FakeClock()
    limiter = PacedRateLimiter(10, clock=clock)
    await grant_times(limiter, clock, 20)
    limiter.reconfigure(100)
    times = await grant_times(limiter, clock, 300)
    assert max_in_window(times) <= 100
    assert (len(times) - 1) / (times[-1] - times[0]) >= 95.0
