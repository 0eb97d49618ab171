"""Sweeps and lookups sharing one rate meter: lookups' floor, sweeps' rest, the window for the
sum, and callers that give up while they wait."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from poller.core.lanes import Lane, SharedMeter
from poller.core.ratelimit import PacedRateLimiter
from tests.conftest import FakeClock, GateMeter, settle


class Crowd:
    """``n`` callers per lane that acquire again as soon as they are granted."""

    def __init__(self, shared: SharedMeter, sweeps: int, lookups: int) -> None:
        self.order: deque[str] = deque()
        self.tasks = [
            asyncio.create_task(self._run(lane))
            for lane, n in ((shared.sweeps, sweeps), (shared.lookups, lookups))
            for _ in range(n)
        ]

    async def _run(self, lane: Lane) -> None:
        while True:
            await lane.acquire()
            self.order.append(lane.name)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def drive(gate: GateMeter, slots: int) -> None:
    for _ in range(slots):
        await settle()
        gate.open()
    await settle()


async def test_busy_lookups_get_their_floor_and_sweeps_keep_the_rest() -> None:
    gate = GateMeter()
    shared = SharedMeter(gate, min_share=0.2, clock=FakeClock())
    crowd = Crowd(shared, sweeps=3, lookups=2)
    await drive(gate, 200)
    await crowd.stop()
    lookups = sum(name == "lookups" for name in crowd.order)
    assert len(crowd.order) == 200
    assert 40 <= lookups <= 42  # at least 20 %, and no more while sweeps wait
    # the floor holds all along, not just on average: every 10 grants hold 2 lookups' slots
    order = list(crowd.order)
    assert all(order[i : i + 10].count("lookups") >= 1 for i in range(0, 200, 10))


async def test_the_split_holds_when_each_lane_asks_for_one_slot_at_a_time() -> None:
    # A sweep's spawn loop and a lookup's dispatcher each wait for one slot at a time: when
    # the turn passes, the caller just granted is not waiting yet. Were the turn handed to the
    # other lane then, the two would alternate (50 %) whatever min_share says.
    gate = GateMeter()
    shared = SharedMeter(gate, min_share=0.2, clock=FakeClock())
    crowd = Crowd(shared, sweeps=1, lookups=1)
    await drive(gate, 100)
    await crowd.stop()
    assert 20 <= list(crowd.order).count("lookups") <= 22


async def test_a_turn_kept_for_a_lane_that_does_not_come_back_goes_to_the_other() -> None:
    gate = GateMeter()
    shared = SharedMeter(gate, min_share=0.2, clock=FakeClock())
    await asyncio.gather(shared.lookups.acquire(), _open_soon(gate, 1))
    sweep = asyncio.create_task(shared.sweeps.acquire())  # lookups are over their share now
    await settle()
    lookup = asyncio.create_task(shared.lookups.acquire())
    await settle()
    gate.open(2)
    await asyncio.wait_for(sweep, 5)  # the turn is kept for sweeps, which never come back...
    await asyncio.wait_for(lookup, 5)  # ...so after the grace it goes to the lookup
    assert (shared.sweeps.granted, shared.lookups.granted) == (1, 2)


async def _open_soon(gate: GateMeter, slots: int) -> None:
    await settle()
    gate.open(slots)


async def test_an_idle_lane_leaves_the_whole_budget_to_the_other() -> None:
    gate = GateMeter()
    shared = SharedMeter(gate, min_share=0.2, clock=FakeClock())
    only_sweeps = Crowd(shared, sweeps=2, lookups=0)
    await drive(gate, 50)
    await only_sweeps.stop()
    assert list(only_sweeps.order) == ["sweeps"] * 50
    only_lookups = Crowd(shared, sweeps=0, lookups=2)
    await drive(gate, 50)
    await only_lookups.stop()
    assert list(only_lookups.order) == ["lookups"] * 50  # a floor, not a cap


async def test_min_share_zero_lets_lookups_use_only_what_sweeps_leave() -> None:
    gate = GateMeter()
    shared = SharedMeter(gate, min_share=0.0, clock=FakeClock())
    crowd = Crowd(shared, sweeps=2, lookups=2)
    await drive(gate, 60)
    await crowd.stop()
    # the first turn may go to a lookup that arrived first; then sweeps take every slot
    assert list(crowd.order).count("lookups") <= 1


async def test_the_share_is_measured_over_the_last_second() -> None:
    clock = FakeClock()
    gate = GateMeter()
    shared = SharedMeter(gate, min_share=0.5, clock=clock)
    sweeps = Crowd(shared, sweeps=1, lookups=0)
    await drive(gate, 30)  # 30 sweep slots "now": lookups' share 0
    assert shared.lookup_share() == 0.0
    clock.now += 1.5  # a second and a half later those grants no longer count
    lookups = Crowd(shared, sweeps=0, lookups=1)
    await drive(gate, 20)
    await sweeps.stop()
    await lookups.stop()
    assert shared.lookup_share() == pytest.approx(0.5, abs=0.1)


async def test_the_window_holds_for_sweeps_and_lookups_together() -> None:
    clock = FakeClock()
    meter = PacedRateLimiter(100, margin_s=0.0, clock=clock, adaptive=False)
    shared = SharedMeter(meter, min_share=0.2, clock=clock)
    times: list[tuple[float, str]] = []

    async def caller(lane: Lane, n: int) -> None:
        for _ in range(n):
            await lane.acquire()
            times.append((clock.monotonic(), lane.name))

    await asyncio.gather(
        *(caller(shared.sweeps, 100) for _ in range(2)),
        *(caller(shared.lookups, 50) for _ in range(2)),
    )
    assert len(times) == 300
    stamps = sorted(t for t, _ in times)
    worst = max(sum(1 for u in stamps if t <= u < t + 1.0) for t in stamps)
    assert worst <= 100
    assert sum(name == "lookups" for _, name in times) == 100


async def test_a_caller_that_gives_up_while_waiting_leaves_nothing_behind() -> None:
    gate = GateMeter()
    shared = SharedMeter(gate, min_share=0.2, clock=FakeClock())
    holder = asyncio.create_task(shared.sweeps.acquire())  # holds the turn, inside the meter
    await settle()
    quitter = asyncio.create_task(shared.lookups.acquire())
    stayer = asyncio.create_task(shared.sweeps.acquire())
    await settle()
    quitter.cancel()
    await settle()
    assert not shared.lookups.waiters
    gate.open(2)
    await asyncio.wait_for(asyncio.gather(holder, stayer), 5)
    assert quitter.cancelled() and gate.granted == 2 and shared.lookups.granted == 0


async def test_a_turn_handed_to_a_cancelled_caller_passes_on() -> None:
    gate = GateMeter()
    shared = SharedMeter(gate, min_share=0.2, clock=FakeClock())
    holder = asyncio.create_task(shared.sweeps.acquire())
    await settle()
    next_up = asyncio.create_task(shared.lookups.acquire())
    after = asyncio.create_task(shared.sweeps.acquire())
    await settle()
    gate.open()
    await asyncio.sleep(0)  # the holder is granted and hands the turn to the lookup...
    next_up.cancel()  # ...which gives up before it ran
    gate.open()
    await asyncio.wait_for(asyncio.gather(holder, after), 5)
    assert next_up.cancelled()
    assert (shared.sweeps.granted, shared.lookups.granted) == (2, 0)


async def test_a_caller_cancelled_inside_the_meter_passes_the_turn_on() -> None:
    gate = GateMeter()
    shared = SharedMeter(gate, min_share=0.2, clock=FakeClock())
    holder = asyncio.create_task(shared.lookups.acquire())
    await settle()
    waiter = asyncio.create_task(shared.sweeps.acquire())
    await settle()
    holder.cancel()
    await settle()
    gate.open()
    await asyncio.wait_for(waiter, 5)
    assert shared.sweeps.granted == 1 and shared.lookups.granted == 0


async def test_lanes_pass_throttles_and_stats_to_the_meter() -> None:
    gate = GateMeter()
    shared = SharedMeter(gate, min_share=0.2)
    shared.lookups.on_throttled(2.0)
    shared.sweeps.on_throttled(None)
    assert gate.throttled == [2.0, None]
    assert shared.lookups.stats() == gate.stats()
    with pytest.raises(ValueError, match="min_share"):
        SharedMeter(gate, min_share=1.5)
