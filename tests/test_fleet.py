"""The fleet's shared budget (``[cluster]``) against a real Redis and the emulator.

Every test starts its own ``redis-server`` (the ``redis_server`` fixture); the emulator runs
as a subprocess, so the account's window is counted where the requests arrive.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from poller import Poller, Target
from poller.config import ClusterConfig, PollerConfig, parse_config, render_toml
from poller.core.errors import ConfigError
from poller.emulator.process import EmulatorProcess
from poller.fleet import Fleet, FleetStatus, account_of
from poller.fleet.scripts import RESERVE, Keys
from tests.redisserver import RedisServer

pytestmark = pytest.mark.slow

GROUP = Target("demo-app", "demo-group")


def uids(n: int, start: int = 1) -> list[str]:
    return [f"user-{i:06d}" for i in range(start, start + n)]


def cluster(server: RedisServer, member: str, **changes: Any) -> ClusterConfig:
    return ClusterConfig(redis_url=server.url, member=member, account="acct", **changes)


async def sweep(config: PollerConfig, ids: Sequence[str]) -> tuple[list[dict[str, Any]], Poller]:
    async with Poller(config) as poller:
        records = [dict(r) async for r in poller.sweep(GROUP, ids)]
    return records, poller


def window(emulator: EmulatorProcess) -> tuple[int, int, int]:
    """(requests, throttled, max requests in any 1-s window) at the emulator."""
    total = emulator.stats()["total"]
    return (
        total["requests_total"],
        total["throttled_total"],
        total["max_requests_in_any_1s_window"],
    )


# -- the script alone: its window guarantee, on Redis time ----------------------------------


@pytest.mark.parametrize("spacing_ms", [10.2, 1.0])
async def test_reserve_never_puts_more_than_the_limit_into_a_window(
    redis_server: RedisServer, spacing_ms: float
) -> None:
    """Five reservers ask in blocks of 4 as fast as they can (no sleeping): the slots handed
    out are in order, at least ``spacing_ms`` apart, and no 1.02-s window holds more than 100
    of them, also when the spacing alone would allow more (the log decides)."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys("acct")
    budget = keys.budget("BatchGetOnlineUsers")
    slots: list[float] = []

    async def reserver(tag: str) -> None:
        for _ in range(60):  # bounded: 60 calls of up to 4 slots each
            epoch, wait_ms, _members, now_ms, *offsets = await client.eval(
                RESERVE,
                5,
                budget.log,
                budget.pause,
                budget.epoch,
                budget.usage,
                keys.members,
                100,
                "1020",
                str(spacing_ms),
                4,
                "5000",
                tag,
                "0",
            )
            assert epoch and (offsets or float(wait_ms) > 0)
            slots.extend(float(now_ms) + float(off) for off in offsets)

    try:
        await asyncio.gather(*(reserver(f"m{i}") for i in range(5)))
    finally:
        await client.aclose()
    slots.sort()
    # A new budget admits nobody for one window; then up to 5 s ahead: ~390 slots.
    assert len(slots) >= 380
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= spacing_ms - 0.01  # replies carry ms with 3 decimals
    # any window of 1020 ms (less the replies' rounding) holds at most 100
    most = max(bisect.bisect_left(slots, t + 1019.99) - i for i, t in enumerate(slots))
    assert most <= 100


async def test_a_budget_that_lost_its_log_admits_nobody_for_a_window(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys("acct")
    budget = keys.budget("BatchGetOnlineUsers")
    args: list[str | int] = [100, "1020", "10.2", 1, "5000", "m", "0"]
    call_keys = [budget.log, budget.pause, budget.epoch, budget.usage, keys.members]
    try:
        first = await client.eval(RESERVE, 5, *call_keys, *args)
        assert float(first[4]) >= 1020.0 - 1  # a new epoch: one window first
        again = await client.eval(RESERVE, 5, *call_keys, *args)
        assert again[0] == first[0]  # same epoch
        await client.flushall()  # Redis lost its data
        fresh = await client.eval(RESERVE, 5, *call_keys, *args)
        assert fresh[0] != first[0] and float(fresh[4]) >= 1020.0 - 1
    finally:
        await client.aclose()


# -- members sharing the account through pollers ---------------------------------------------


@contextlib.contextmanager
def emulator_for(n: int, *args: str) -> Any:
    with EmulatorProcess("--qps", "100", "--group", f"demo-app/demo-group:{n}", *args) as emu:
        yield emu


async def test_two_members_share_the_account_budget(redis_server: RedisServer) -> None:
    """Two pollers on one account: together never more than 100 requests in a second, none
    throttled, every UID answered; without [cluster] the same pair overruns the account."""
    ids = uids(1600)
    with emulator_for(1600) as emu:
        configs = [emu.poller_config(cluster=cluster(redis_server, f"m{i}")) for i in range(2)]
        results = await asyncio.gather(*(sweep(c, ids) for c in configs))
        requests, throttled, most = window(emu)
        for records, poller in results:
            assert [r["type"] for r in records] == ["presence"] * len(ids)
            assert poller.fleet is None  # closed with the poller
        assert requests == 160 and throttled == 0 and most <= 100, (requests, throttled, most)

        emu.reset()
        alone = [emu.poller_config() for _ in range(2)]
        await asyncio.gather(*(sweep(c, ids) for c in alone))
        _, throttled, most = window(emu)
        assert most > 100 or throttled > 0  # each paced itself to the whole account


async def test_two_access_keys_of_one_account_share_one_budget(redis_server: RedisServer) -> None:
    ids = uids(1200)
    keys = ("--access-key", "demo-key:demo-secret@acct", "--access-key", "key-b:secret-b@acct")
    with emulator_for(1200, *keys) as emu:
        a = emu.poller_config(cluster=cluster(redis_server, "a"))
        b = emu.poller_config("key-b", "secret-b", cluster=cluster(redis_server, "b"))
        await asyncio.gather(sweep(a, ids), sweep(b, ids))
        requests, throttled, most = window(emu)
    assert requests == 120 and throttled == 0 and most <= 100, (requests, throttled, most)


async def test_members_see_each_other_and_leave_on_close(redis_server: RedisServer) -> None:
    fleets = [Fleet(cluster(redis_server, name), account="acct") for name in ("a", "b")]
    for fleet in fleets:
        fleet.meter("BatchGetOnlineUsers", 100)
        await fleet.start()
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await fleets[0]._beat()  # a second heartbeat: it now sees both
        assert fleets[0].members == 2
        assert sorted(await client.zrange(Keys("acct").members, 0, -1)) == ["a", "b"]
        info = await client.hgetall(Keys("acct").member("a"))
        assert info["fleet"] == "presence" and info["mode"] == "shared"
        await fleets[0].aclose()
        assert await client.zrange(Keys("acct").members, 0, -1) == ["b"]
        assert not await client.exists(Keys("acct").member("a"))
    finally:
        await fleets[1].aclose()
        await client.aclose()


# -- Redis down, restarted, lost -------------------------------------------------------------


async def stop_redis_for(server: RedisServer, after_s: float, down_s: float) -> None:
    await asyncio.sleep(after_s)
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(server.start)  # empty: no persistence


async def poll_with_modes(
    config: PollerConfig, ids: Sequence[str], modes: list[str]
) -> list[dict[str, Any]]:
    async with Poller(config) as poller:
        assert poller.fleet is not None
        record_mode: Callable[[FleetStatus], None] = lambda s: modes.append(s.mode)  # noqa: E731
        poller.fleet.on_mode_change = record_mode
        return [dict(r) async for r in poller.sweep(GROUP, ids)]


@pytest.mark.parametrize("policy", ["share", "pause"])
async def test_redis_down_then_back_empty_is_survived_without_overrunning(
    redis_server: RedisServer, policy: str
) -> None:
    """Redis stops for 3 s in the middle of two members' sweeps and comes back empty: no
    crash, every UID answered, the account's window never above 100; each member goes
    degraded and returns to the shared budget."""
    ids = uids(6000)
    with emulator_for(6000) as emu:
        configs = [
            emu.poller_config(cluster=cluster(redis_server, f"m{i}", on_redis_down=policy))
            for i in range(2)
        ]
        modes: list[list[str]] = [[], []]
        outage = asyncio.create_task(stop_redis_for(redis_server, 2.0, 3.0))
        results = await asyncio.gather(
            *(poll_with_modes(c, ids, m) for c, m in zip(configs, modes, strict=True))
        )
        await outage
        requests, throttled, most = window(emu)
    for records in results:
        assert [r["type"] for r in records] == ["presence"] * len(ids)
    assert modes == [["degraded", "shared"]] * 2
    assert throttled == 0 and most <= 100, (requests, throttled, most)


async def test_a_member_that_starts_while_redis_is_down_assumes_expected_members(
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    fleet = Fleet(cluster(redis_server, "late", expected_members=4), account="acct")
    meter = fleet.meter("BatchGetOnlineUsers", 100)
    await fleet.start()
    try:
        status = fleet.status()
        assert status.mode == "degraded" and status.members == 4
        assert "Redis unreachable" in status.description and "qps/4" in status.description
        assert meter.local.limit == 25  # the local meter is the budget now
    finally:
        await fleet.aclose()


async def test_a_throttle_seen_by_one_member_pauses_the_others(redis_server: RedisServer) -> None:
    fleets = [Fleet(cluster(redis_server, n), account="acct") for n in ("a", "b")]
    meters = [f.meter("BatchGetOnlineUsers", 100, block=1) for f in fleets]
    for fleet in fleets:
        await fleet.start()
    try:
        await meters[0].acquire()  # past the new epoch's window
        loop = asyncio.get_running_loop()
        # Two throttles in a row: the local meter pauses, and so does the fleet.
        meters[0].on_throttled(0.5)
        meters[0].on_throttled(0.5)
        await asyncio.sleep(0.05)  # the pause is published in the background
        started = loop.time()
        await meters[1].acquire()
        assert loop.time() - started >= 0.4
    finally:
        for fleet in fleets:
            await fleet.aclose()


# -- configuration and imports ---------------------------------------------------------------


def test_the_default_budget_key_is_a_hash_of_the_key_id_never_the_secret() -> None:
    plain = ClusterConfig(redis_url="redis://127.0.0.1:6379/0")
    account = account_of(plain, "LTAI-key-id")
    assert account.startswith("ak-") and "LTAI" not in account
    assert account == account_of(plain, "LTAI-key-id")  # stable across processes
    assert account_of(ClusterConfig(redis_url="redis://h", account="team"), "x") == "team"
    with pytest.raises(ConfigError, match=r"cluster\.account"):
        account_of(plain, None)


def test_the_redis_password_never_shows() -> None:
    config = parse_config({"cluster": {"redis_url": "rediss://:hunter2-secret@10.0.0.1:6380/1"}})
    assert config.cluster is not None
    text = render_toml(config)
    assert "hunter2" not in text and 'redis_url = "rediss://:****@10.0.0.1:6380/1"' in text
    assert "hunter2" not in repr(config)
    with pytest.raises(ConfigError) as caught:
        parse_config({"cluster": {"redis_url": "http://:hunter2-secret@h/"}})
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"cluster\.redis_url"):
        parse_config({"cluster": {"name": "x"}})
    assert parse_config({}).cluster is None


def test_redis_is_never_imported_without_a_cluster_section() -> None:
    code = (
        "import asyncio, sys\n"
        "import poller, poller.apps.cli, poller.apps.daemon\n"
        "from poller import Poller\n"
        "from poller.config import PollerConfig, CredentialsConfig\n"
        "async def main():\n"
        "    cfg = PollerConfig(credentials=CredentialsConfig(access_key_id='k',"
        " access_key_secret='s'))\n"
        "    async with Poller(cfg):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "print('redis' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False", out.stderr
