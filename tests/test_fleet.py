"""The fleet's shared budget (``[cluster]``) against a real Redis and the emulator.

Every test starts its own ``redis-server`` (the ``redis_server`` fixture); the emulator runs
as a subprocess, so the account's window is counted where the requests arrive.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
import trustme

from poller.config import ClusterConfig, parse_config, render_toml
from poller.core.errors import ConfigError
from poller.core.records import Target
from poller.emulator.process import EmulatorProcess
from poller.engine.poller import Poller
from poller.fleet import Fleet, account_of
from poller.fleet.budget import ClockSync
from poller.fleet.scripts import RESERVE, Keys
from tests.daemons import DaemonProcess, base_config, http_get, target, wait_until
from tests.redisserver import RedisServer, find_redis_server

pytestmark = pytest.mark.slow


def uids(n: int, start: int = 1) -> list[str]:
    return [f"user-{i:06d}" for i in range(start, start + n)]


def cluster(server: RedisServer, member: str, **changes: Any) -> ClusterConfig:
    return ClusterConfig(redis_url=server.url, member=member, account="acct", **changes)


def window(emulator: EmulatorProcess) -> tuple[int, int, int]:
    """(requests, throttled, max requests in any 1-s window) at the emulator."""
    total = emulator.stats()["total"]
    return (
        total["requests_total"],
        total["throttled_total"],
        total["max_requests_in_any_1s_window"],
    )


# -- the script alone: its window guarantee, on Redis time ----------------------------------


def budget_keys(keys: Keys, action: str = "BatchGetOnlineUsers") -> list[str]:
    """RESERVE's KEYS, in order."""
    budget = keys.budget(action)
    return [budget.log, budget.pause, budget.epoch, budget.usage, keys.members, budget.rates]


async def test_a_member_that_cut_its_rate_slows_the_whole_fleet(
    redis_server: RedisServer,
) -> None:
    """Member a's meter cut to half the rate: b's slots, too, come 20.4 ms apart, until a's
    report is 2 s old."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys("acct")

    async def reserve(tag: str, fraction: str, want: int) -> list[float]:
        reply = await client.eval(
            RESERVE, 6, *budget_keys(keys), 100, "1020", "10.2", want, "5000", tag, "0", fraction
        )
        return [float(reply[3]) + float(off) for off in reply[4:]]

    try:
        await reserve("a", "0.5", 1)
        slots = await reserve("b", "1", 4)
        gaps = [b - a for a, b in itertools.pairwise(slots)]
        assert len(slots) == 4 and min(gaps) >= 20.4 - 0.01
    finally:
        await client.aclose()


@pytest.mark.parametrize("spacing_ms", [10.2, 1.0])
async def test_reserve_never_puts_more_than_the_limit_into_a_window(
    redis_server: RedisServer, spacing_ms: float
) -> None:
    """Five reservers ask in blocks of 4 as fast as they can (no sleeping): the slots handed
    out are in order, at least ``spacing_ms`` apart, and no 1.02-s window holds more than 100
    of them, also when the spacing alone would allow more (the log decides)."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys("acct")
    slots: list[float] = []

    async def reserver(tag: str) -> None:
        for _ in range(60):  # bounded: 60 calls of up to 4 slots each
            epoch, wait_ms, _members, now_ms, *offsets = await client.eval(
                RESERVE,
                6,
                *budget_keys(keys),
                100,
                "1020",
                str(spacing_ms),
                4,
                "5000",
                tag,
                "0",
                "1",
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
    args: list[str | int] = [100, "1020", "10.2", 1, "5000", "m", "0", "1"]
    call_keys = budget_keys(keys)
    try:
        first = await client.eval(RESERVE, 6, *call_keys, *args)
        assert float(first[4]) >= 1020.0 - 1  # a new epoch: one window first
        again = await client.eval(RESERVE, 6, *call_keys, *args)
        assert again[0] == first[0]  # same epoch
        await client.flushall()  # Redis lost its data
        fresh = await client.eval(RESERVE, 6, *call_keys, *args)
        assert fresh[0] != first[0] and float(fresh[4]) >= 1020.0 - 1
    finally:
        await client.aclose()


# -- members sharing the account: ``poller once`` processes, as in production -------------------


@contextlib.contextmanager
def emulator_for(n: int, *args: str) -> Iterator[EmulatorProcess]:
    with EmulatorProcess("--qps", "100", "--group", f"demo-app/demo-group:{n}", *args) as emu:
        yield emu


class Member:
    """One ``poller once`` process polling ``ids`` of demo-app/demo-group."""

    def __init__(
        self,
        folder: Path,
        emulator: EmulatorProcess,
        ids: Sequence[str],
        fleet: ClusterConfig | None,
        *,
        key: tuple[str, str] = ("demo-key", "demo-secret"),
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        config = emulator.poller_config(*key, cluster=fleet)
        (folder / "poller.toml").write_text(render_toml(config, mask_secrets=False), "utf-8")
        (folder / "uids.txt").write_text("\n".join(ids), "utf-8")
        self.output = folder / "out.jsonl"
        self.stderr_path = folder / "stderr.txt"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "poller",
                    "once",
                    "--config",
                    str(folder / "poller.toml"),
                    "--uids-file",
                    str(folder / "uids.txt"),
                    "--target",
                    "demo-app/demo-group",
                    "--output",
                    str(self.output),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    async def result(self) -> tuple[list[dict[str, Any]], str]:
        """The records and stderr, once the process exited 0 (killed after 90 s)."""
        try:
            code = await asyncio.to_thread(self.proc.wait, 90.0)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        stderr = self.stderr_path.read_text("utf-8", "replace")
        assert code == 0, stderr
        lines = self.output.read_bytes().splitlines() if self.output.exists() else []
        return [orjson.loads(line) for line in lines], stderr


async def run_members(members: Sequence[Member]) -> list[tuple[list[dict[str, Any]], str]]:
    return list(await asyncio.gather(*(m.result() for m in members)))


async def test_two_members_share_the_account_budget(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two processes on one account: together never more than 100 requests in a second, none
    throttled, every UID answered; without [cluster] the same pair overruns the account."""
    ids = uids(2000)
    with emulator_for(2000) as emu:
        members = [
            Member(tmp_path / f"m{i}", emu, ids, cluster(redis_server, f"m{i}")) for i in range(2)
        ]
        for records, _ in await run_members(members):
            assert sorted(r["uid"] for r in records) == sorted(ids)
            assert {r["type"] for r in records} == {"presence"}
        requests, throttled, most = window(emu)
        assert requests == 200 and throttled == 0 and most <= 100, (requests, throttled, most)

        emu.reset()
        alone = [Member(tmp_path / f"alone{i}", emu, ids, None) for i in range(2)]
        await run_members(alone)
        _, throttled, most = window(emu)
        assert most > 100 or throttled > 0  # each paced itself to the whole account


async def test_lookups_of_one_member_and_a_sweep_of_another_share_the_window(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """One member sweeps while another answers 600 concurrent lookups: both draw on the
    fleet's budget, so the account never sees more than 100 requests in a second."""
    ids = uids(2000)
    asked = uids(600, start=1401)  # the last 600 of the group, some swept by the other too
    with emulator_for(2000) as emu:
        sweeper = Member(tmp_path / "sweeper", emu, ids, cluster(redis_server, "sweeper"))
        config = emu.poller_config(cluster=cluster(redis_server, "asker"))
        async with Poller(config) as poller:
            lookup = poller.lookup(Target("demo-app", "demo-group"))
            answers, ((records, _),) = await asyncio.gather(
                asyncio.gather(*(lookup.get(uid) for uid in asked)), run_members([sweeper])
            )
        requests, throttled, most = window(emu)
    assert [a["uid"] for a in answers] == asked
    assert {a["type"] for a in answers} == {"presence"}
    assert len(records) == 2000 and {r["type"] for r in records} == {"presence"}
    assert requests == 100 + 30 and throttled == 0 and most <= 100, (requests, throttled, most)


async def test_two_access_keys_of_one_account_share_one_budget(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    ids = uids(1500)
    keys = ("--access-key", "demo-key:demo-secret@acct", "--access-key", "key-b:secret-b@acct")
    with emulator_for(1500, *keys) as emu:
        members = [
            Member(tmp_path / "a", emu, ids, cluster(redis_server, "a")),
            Member(tmp_path / "b", emu, ids, cluster(redis_server, "b"), key=("key-b", "secret-b")),
        ]
        await run_members(members)
        requests, throttled, most = window(emu)
    assert requests == 150 and throttled == 0 and most <= 100, (requests, throttled, most)


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


@pytest.mark.parametrize("policy", ["share", "pause"])
async def test_redis_down_then_back_empty_is_survived_without_overrunning(
    redis_server: RedisServer, tmp_path: Path, policy: str
) -> None:
    """Redis stops for 10 s in the middle of two members' sweeps and comes back empty: no
    crash, every UID answered, the account's window never above 100; each member logs that
    it went degraded and that it returned to the shared budget."""
    # Enough UIDs that both members still poll when Redis comes back at 13 s: "share" keeps
    # sending during the outage (at half the rate each), "pause" sends nothing then.
    ids = uids(16000 if policy == "share" else 8000)
    with emulator_for(len(ids)) as emu:
        members = [
            Member(
                tmp_path / f"m{i}", emu, ids, cluster(redis_server, f"m{i}", on_redis_down=policy)
            )
            for i in range(2)
        ]
        outage = asyncio.create_task(stop_redis_for(redis_server, 3.0, 10.0))
        results = await run_members(members)
        await outage
        requests, throttled, most = window(emu)
    fallback = "local budget of qps/2" if policy == "share" else "sending paused"
    for records, stderr in results:
        assert sorted(r["uid"] for r in records) == sorted(ids)
        assert {r["type"] for r in records} == {"presence"}
        assert "fleet degraded: Redis unreachable" in stderr and fallback in stderr, stderr
        assert "back to the shared budget" in stderr, stderr
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


# -- the daemon in a fleet: readiness, metrics, logs; poller cluster status ------------------


def fleet_config(emu: EmulatorProcess, server: RedisServer, policy: str) -> str:
    return (
        base_config(emu)
        + '\n[metrics]\nlisten = "127.0.0.1:0"\n'
        + f'\n[cluster]\nredis_url = "{server.url}"\nmember = "d1"\naccount = "acct"\n'
        + f'on_redis_down = "{policy}"\n'
        + target("demo-app", "demo-group", uids=uids(40))
    )


@pytest.mark.parametrize("policy", ["share", "pause"])
def test_the_daemon_says_which_mode_its_fleet_is_in(
    redis_server: RedisServer, tmp_path: Path, daemons: Any, policy: str
) -> None:
    with emulator_for(40) as emu:
        daemon: DaemonProcess = daemons(tmp_path, fleet_config(emu, redis_server, policy))
        logs = daemon.sweeps_done(2)
        url = next(e["url"] for e in logs if e["event"] == "metrics listening")
        readyz = url.replace("/metrics", "/readyz")
        status, body = http_get(readyz)
        assert status == 200 and orjson.loads(body)["fleet"]["mode"] == "shared"
        metrics = http_get(url)[1].decode()
        assert "poller_fleet_members 1.0" in metrics and "poller_fleet_degraded 0.0" in metrics

        redis_server.stop()
        status, body = wait_until(
            lambda: (r := http_get(readyz))[1].find(b'"degraded"') >= 0 and r, "degraded mode"
        )
        fleet = orjson.loads(body)["fleet"]
        assert "Redis unreachable" in fleet["detail"]
        assert status == (200 if policy == "share" else 503)
        assert "poller_fleet_degraded 1.0" in http_get(url)[1].decode()
        degraded = next(e for e in daemon.logs() if e["event"].startswith("fleet degraded"))
        assert degraded["level"] == "error" and degraded["fleet_mode"] == "degraded"

        redis_server.start()
        wait_until(lambda: b'"shared"' in http_get(readyz)[1], "the shared budget again")
        sweeps = sum(e["event"] == "sweep" for e in daemon.logs())
        daemon.sweeps_done(sweeps + 2)
        assert http_get(readyz)[0] == 200
        assert daemon.stop() == 0


def cluster_status(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "poller", "cluster", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cluster_status_lists_members_and_budget_use(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with emulator_for(400) as emu:
        member = Member(tmp_path / "m1", emu, uids(400), cluster(redis_server, "m1"))
        asyncio.run(run_members([member]))
        config = tmp_path / "m1" / "poller.toml"
        # A member that has left is gone from the list: keep one registered.
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            client.zadd(Keys("acct").members, {"standby": time.time() * 1000})
            client.hset(
                Keys("acct").member("standby"), mapping={"fleet": "presence", "mode": "shared"}
            )
        finally:
            client.close()
        out = cluster_status(config)
    assert out.returncode == 0, out.stderr
    assert "fleet budget 'acct'" in out.stdout
    assert "members seen in the last minute: 1" in out.stdout and "standby" in out.stdout
    assert "BatchGetOnlineUsers: " in out.stdout and "in the last minute" in out.stdout
    minute = int(
        out.stdout.split("BatchGetOnlineUsers: ")[1].split(" in the last second, ")[1].split()[0]
    )
    assert 20 <= minute <= 24  # slots handed out: its 20 requests and the rest of a block


def test_cluster_status_without_redis_or_without_a_cluster(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    config = tmp_path / "poller.toml"
    config.write_text(f'[cluster]\nredis_url = "{redis_server.url}"\naccount = "acct"\n', "utf-8")
    redis_server.stop()
    out = cluster_status(config)
    assert out.returncode == 69 and "cannot read the fleet from Redis" in out.stderr
    config.write_text("", "utf-8")
    out = cluster_status(config)
    assert out.returncode == 78 and "no [cluster] section" in out.stderr


async def test_a_password_from_the_environment_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "s3cret-redis-pass"
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server not found; install it with: sudo apt-get install redis-server")
    with RedisServer(tmp_path / "r", binary, extra_args=("--requirepass", password)) as server:
        monkeypatch.setenv("POLLER_TEST_REDIS_PASSWORD", password)
        good = cluster(server, "m", password_env="POLLER_TEST_REDIS_PASSWORD")
        fleet = Fleet(good, account="acct")
        fleet.meter("BatchGetOnlineUsers", 100)
        await fleet.start()
        try:
            assert fleet.status().mode == "shared" and fleet.secrets() == [password]
        finally:
            await fleet.aclose()
        wrong = Fleet(cluster(server, "w"), account="acct")  # no password
        await wrong.start()
        try:
            status = wrong.status()
            assert status.mode == "degraded" and "authenticated" in status.reason
        finally:
            await wrong.aclose()
        url = ClusterConfig(redis_url=f"redis://:{password}@127.0.0.1:1/0")
        assert password not in repr(Fleet(url, account="acct"))
        assert password not in Fleet(url, account="acct").status().redis_url
        monkeypatch.delenv("POLLER_TEST_REDIS_PASSWORD")
        with pytest.raises(ConfigError, match=r"POLLER_TEST_REDIS_PASSWORD is not set"):
            Fleet(good, account="acct").secrets()


def test_the_clock_sync_trusts_its_shortest_round_trip() -> None:
    sync = ClockSync(keep_s=30.0)
    # Redis is 1,000 s ahead of the local monotonic clock; each sample's error is at most
    # half its round trip, so the 0.2 ms one wins over the 40 ms one (a busy loop).
    sync.observe(10.000, 10.040, 1010.030)  # off by 10 ms
    sync.observe(11.000, 11.0002, 1011.0001)  # off by 0
    sync.observe(12.000, 12.050, 1012.000)  # off by 25 ms the other way
    assert sync.local(1100.0) == pytest.approx(100.0, abs=1e-6)
    # Thirty seconds later the good sample is forgotten: the best of the recent ones counts.
    sync.observe(45.000, 45.010, 1045.009)  # off by 4 ms
    assert sync.local(1100.0) == pytest.approx(100.0 - 0.004, abs=1e-6)


async def test_rediss_with_a_private_ca(tmp_path: Path) -> None:
    """TLS to Redis: ``rediss://`` with the CA given in the URL (redis-py's ``ssl_ca_certs``)."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server not found; install it with: sudo apt-get install redis-server")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    for name, blob in (("ca.pem", ca.cert_pem), ("key.pem", cert.private_key_pem)):
        blob.write_to_path(str(tmp_path / name))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    with socket.socket() as probe:  # a free loopback port for the TLS listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tls = (
        *("--tls-port", str(port), "--tls-auth-clients", "no"),
        *("--tls-cert-file", str(tmp_path / "cert.pem")),
        *("--tls-key-file", str(tmp_path / "key.pem")),
    )
    with RedisServer(tmp_path / "r", binary, extra_args=tls):
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}"
        fleet = Fleet(ClusterConfig(redis_url=url, member="tls"), account="acct")
        fleet.meter("BatchGetOnlineUsers", 100)
        await fleet.start()
        try:
            assert fleet.status().mode == "shared" and fleet.members == 1
        finally:
            await fleet.aclose()
        untrusted = Fleet(ClusterConfig(redis_url=f"rediss://127.0.0.1:{port}/0"), account="a")
        await untrusted.start()
        try:
            assert untrusted.status().mode == "degraded"  # the certificate does not verify
        finally:
            await untrusted.aclose()
