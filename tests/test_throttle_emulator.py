"""Spurious throttles (issue 12) against the emulator: the rate meter tries a cut, sees that it
did not help, undoes it and holds the full rate, and every UID is still answered once.

Behavioural, not timed: the emulator answers a fixed 5 % of requests with ``Throttling.User``
(a seeded fault sequence, whatever our rate), so no cut can help and none may stick. The fault
seed is fixed so that the outcome repeats run after run; seeds 0-19 all end at the full rate
(benchmarks/throttles.py measures the time this costs).
"""

from __future__ import annotations

from collections import Counter

import pytest

from poller import Poller, Target
from poller.emulator.process import EmulatorProcess

pytestmark = pytest.mark.slow

UIDS = 12_000  # 600 requests at 100/s: time for a cut, its trial and its undoing
FAULT_SEED = 7


async def test_spurious_throttles_do_not_lower_the_rate() -> None:
    uids = [f"user-{i:06d}" for i in range(1, UIDS + 1)]
    args = ("--qps", "100", "--group", f"demo-app/demo-group:{UIDS}")
    faults = ("--faults", "throttle=0.05", "--fault-seed", str(FAULT_SEED))
    with EmulatorProcess(*args, *faults) as emulator:
        async with Poller(emulator.poller_config()) as poller:
            records = [r async for r in poller.sweep(Target("demo-app", "demo-group"), uids)]
            stats = poller.last
            meter = poller.rate_meter.stats()
        injected = emulator.stats()["faults_injected"].get("throttle", 0)

    per_uid = Counter(r["uid"] for r in records)
    assert set(per_uid) == set(uids)
    assert max(per_uid.values()) == 1
    assert all(r["type"] == "presence" for r in records)
    assert stats is not None
    assert stats.throttled > 0
    assert injected > 0
    # A cut was tried and undone; the random throttles did not lower the rate.
    assert meter.decreases >= 1
    assert meter.undone >= 1
    assert meter.rate == meter.max_rate, meter
