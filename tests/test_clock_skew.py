"""Clock-skew correction: the offset learned from the server's ``Date`` header, the one
immediate re-signed retry, the daemon that keeps polling, and the emulator's clock controls."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from poller.apps.metrics import Metrics, Readiness
from poller.apps.report import SweepReport
from poller.config import ApiConfig, LimitsConfig, PollerConfig, RetryConfig
from poller.core.clock import SkewedClock, http_date, parse_http_date, system_clock
from poller.core.errors import (
    AuthError,
    ClockSkewCorrected,
    ClockSkewError,
    error_for_response,
)
from poller.core.records import Record, Target
from poller.core.stats import Attempt, SweepStats, Totals
from poller.emulator import EmulatorConfig, EmulatorServer, GroupSpec
from poller.emulator.config import ServerClock
from poller.emulator.process import EmulatorProcess
from poller.engine.poller import Poller
from poller.wire.signing import SigningCredentials
from tests.conftest import FakeClock
from tests.daemons import DaemonProcess, base_config, target

TARGET = Target("demo-app", "demo-group")
CREDS = SigningCredentials("demo-key", "demo-secret")
UIDS = [f"user-{i:06d}" for i in range(1, 301)]
IN_FLIGHT = 4


def config_for(endpoint: str, transport: str = "aiohttp", **changes: Any) -> PollerConfig:
    return PollerConfig(
        api=ApiConfig(endpoint=endpoint, protocol="http", timeout_s=2.0, transport=transport),  # type: ignore[arg-type]
        limits=LimitsConfig(qps=1000, max_in_flight=IN_FLIGHT),
        retry=RetryConfig(backoff_base_s=0.01, backoff_cap_s=0.05),
    ).with_changes(**changes)


async def run_sweep(poller: Poller, uids: list[str] = UIDS) -> list[Record]:
    return [r async for r in poller.sweep(TARGET, uids)]


def emulator_config(offset_s: float, **changes: Any) -> EmulatorConfig:
    group = GroupSpec("demo-app", "demo-group", len(UIDS))
    return EmulatorConfig(port=0, groups=(group,), qps=0, clock_offset_s=offset_s, **changes)


# -- the clock ---------------------------------------------------------------------------------


def test_skewed_clock_adds_its_offset_and_passes_the_rest_through() -> None:
    base = FakeClock()
    clock = SkewedClock(base)
    assert SkewedClock.wrap(clock) is clock
    assert clock.time() == base.time() and clock.monotonic() == base.monotonic()
    clock.offset_s = -3600.0
    assert clock.time() == pytest.approx(base.time() - 3600.0)
    assert clock.monotonic() == base.monotonic()
    asyncio.run(clock.sleep(2.0))
    assert base.sleeps == [2.0]
    assert not clock.observe(base.time() - 3601.5)  # within the 2 s threshold: jitter
    assert clock.offset_s == -3600.0
    assert clock.observe(base.time() + 5.0)
    assert clock.offset_s == pytest.approx(5.0)


def test_http_dates_round_trip_and_garbage_is_ignored() -> None:
    now = time.time()
    assert parse_http_date(http_date(now)) == int(now)
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777.0
    for bad in ("", "yesterday", "Sun, 06 Foo 1994 08:49:37 GMT"):
        assert parse_http_date(bad) is None
    clock = SkewedClock(system_clock())
    assert clock.observe_http_date("not a date") is None and clock.offset_s == 0.0
    implied = clock.observe_http_date(http_date(time.time() + 1800))
    assert implied is not None and abs(implied - 1800) < 1.5
    assert clock.offset_s == implied


# -- against the emulator ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["aiohttp", "builtin"])
@pytest.mark.parametrize("offset_s", [-3600.0, 1800.0])
async def test_a_skewed_server_is_followed_after_one_immediate_retry(
    offset_s: float, transport: str
) -> None:
    events: list[Attempt] = []
    async with EmulatorServer(emulator_config(offset_s)) as server:
        config = config_for(server.endpoint, transport)
        async with Poller(config, credentials=CREDS, on_attempt=events.append) as poller:
            records = await run_sweep(poller)
            server_now = server.emulator.clock.now()
            learned = poller.clock.offset_s
            again = await run_sweep(poller)  # the next sweep needs no correction at all
        stats = server.stats()
    assert len(records) == len(UIDS) and {r["type"] for r in records} == {"presence"}
    assert {r["uid"] for r in records} == set(UIDS)
    assert abs(learned - offset_s) < 2.0
    assert all(abs(r["polled_at"] / 1000 - server_now) < 5.0 for r in records + again)
    # Only requests sent before the first answer were rejected, each re-signed once, at once.
    corrected = [e for e in events if isinstance(e.error, ClockSkewCorrected)]
    assert 1 <= len(corrected) <= IN_FLIGHT
    assert max(e.number for e in events) == 2
    assert all(e.error is None for e in events if e.number == 2)
    assert {e.retry_of for e in events if e.number == 2} == {"InvalidTimeStamp.Expired"}
    assert {r["type"] for r in again} == {"presence"}
    assert stats["total"]["requests_total"] == len(events)


async def test_stepping_the_servers_clock_between_sweeps_is_followed() -> None:
    async with EmulatorServer(emulator_config(0.0)) as server:
        config = config_for(server.endpoint)
        async with Poller(config, credentials=CREDS) as poller:
            await run_sweep(poller)
            assert poller.clock.offset_s == 0.0  # within the threshold: never corrected
            server.emulator.clock.offset_s = 1800.0
            records = await run_sweep(poller)
            assert abs(poller.clock.offset_s - 1800.0) < 2.0
            assert poller.last is not None and poller.last.fatal is None
    assert {r["type"] for r in records} == {"presence"}


async def test_a_rejection_right_after_a_correction_is_final() -> None:
    # The gateway checks dates against a window no request can hit: every request is rejected,
    # so each is corrected once and then fails for good; nothing loops.
    emu = emulator_config(3600.0, date_window_s=1e-9)
    events: list[Attempt] = []
    async with EmulatorServer(emu) as server:
        config = config_for(server.endpoint)
        async with Poller(config, credentials=CREDS, on_attempt=events.append) as poller:
            records: list[Record] = []
            with pytest.raises(ClockSkewError) as caught:
                async for r in poller.sweep(TARGET, UIDS):
                    records.append(r)
        stats = server.stats()
    assert not isinstance(caught.value, ClockSkewCorrected) and caught.value.fatal
    assert caught.value.offset_s is not None and abs(caught.value.offset_s - 3600) < 2
    assert {r["uid"] for r in records} == set(UIDS)
    errors = [r for r in records if r["type"] == "error"]
    assert len(errors) == len(records)
    assert {r["code"] for r in errors} == {"InvalidTimeStamp.Expired"}
    assert max(r.get("attempts", 1) for r in errors) == 2
    assert max(e.number for e in events) == 2
    assert stats["total"]["requests_total"] <= 2 * IN_FLIGHT


async def test_a_server_whose_date_keeps_moving_is_retried_only_once() -> None:
    """Each answer implies a new offset; still, one correction per request, then final."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("x-acs-date", ""))
        body = {"RequestId": "r", "Code": "InvalidTimeStamp.Expired", "Message": "expired"}
        date = http_date(time.time() + 3600 * len(seen))
        return web.Response(status=400, body=orjson.dumps(body), headers={"Date": date})

    app = web.Application()
    app.router.add_route("*", "/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        config = config_for(f"127.0.0.1:{port}", limits=LimitsConfig(qps=1000, max_in_flight=1))
        async with Poller(config, credentials=CREDS) as poller:
            with pytest.raises(ClockSkewError) as caught:
                await run_sweep(poller, UIDS[:10])
    finally:
        await runner.cleanup()
    assert len(seen) == 2 and seen[0] != seen[1]  # the retry was signed with the new time
    assert not isinstance(caught.value, ClockSkewCorrected)


async def test_the_offset_is_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="poller.client")
    async with EmulatorServer(emulator_config(-3600.0)) as server:
        config = config_for(server.endpoint)
        async with Poller(config, credentials=CREDS) as poller:
            await run_sweep(poller)
            await run_sweep(poller)
    warnings = [r for r in caplog.records if "clock offset" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "-3600" in warnings[0].getMessage() or "-3599" in warnings[0].getMessage()


# -- the daemon's report -----------------------------------------------------------------------


def skew_error(offset_s: float | None) -> ClockSkewError:
    err = error_for_response(
        http_status=400, code="InvalidTimeStamp.Expired", message="expired", request_id="r"
    )
    assert isinstance(err, ClockSkewError)
    err.offset_s = offset_s
    return err


def test_clock_skew_sweeps_never_give_up_and_credentials_still_do() -> None:
    metrics = Metrics()
    readiness = Readiness(max_age_s=60.0)
    report = SweepReport(metrics, readiness, Totals(), FakeClock())
    for n in range(10):
        stats = SweepStats(sweep=n + 1)
        assert report.sweep_done(stats, {}, 0, skew_error(-3600.0), 3, clock_offset_s=-3600.0)
    assert report.auth_failures == 0
    assert readiness.reason.startswith("clock skew") and not readiness.last_sweep_ok
    assert metrics.registry.get_sample_value("poller_clock_offset_seconds") == -3600.0
    rejected = error_for_response(
        http_status=400, code="SignatureDoesNotMatch", message="bad", request_id="r"
    )
    assert isinstance(rejected, AuthError)
    results = [report.sweep_done(SweepStats(sweep=20 + n), {}, 0, rejected, 3) for n in range(3)]
    assert results == [True, True, False]
    ok = SweepStats(sweep=30)
    ok.batches_ok = 1
    report.sweep_done(ok, {}, 0, None, 3, clock_offset_s=0.5)
    assert metrics.registry.get_sample_value("poller_clock_offset_seconds") == 0.5


# -- the emulator's clock ----------------------------------------------------------------------


def test_server_clock_dates_answers_with_its_offset() -> None:
    clock = ServerClock(lambda: 1_000_000.0, -3600.0)
    assert clock.now() == 996_400.0
    assert parse_http_date(clock.http_date()) == 996_400.0
    clock.offset_s = 0.0
    assert parse_http_date(clock.http_date()) == 1_000_000.0
    with pytest.raises(ValueError, match="clock offset"):
        EmulatorConfig(clock_offset_s=float("nan"))
    assert EmulatorConfig.from_args(["--clock-offset-s", "-3600"]).clock_offset_s == -3600.0


def _post(url: str, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read())


@pytest.mark.slow
def test_emulator_flag_and_clock_endpoint() -> None:
    with EmulatorProcess("--clock-offset-s", "-3600") as emulator:
        assert emulator.clock_offset() == -3600.0
        with urllib.request.urlopen(f"{emulator.url}/_emulator/clock", timeout=10) as resp:
            view = orjson.loads(resp.read())
        assert abs(view["time"] - (time.time() - 3600)) < 5
        assert emulator.set_clock_offset(1800) == 1800.0
        with urllib.request.urlopen(f"{emulator.url}/_emulator/config", timeout=10) as resp:
            assert orjson.loads(resp.read())["clock_offset_s"] == 1800.0
        for bad in (b'{"offset_s": "x"}', b'{"offset_s": true}', b"{}", b"[1]", b'{"o": 1}'):
            status, body = _post(f"{emulator.url}/_emulator/clock", bad)
            assert status == 400 and body["Code"].startswith("InvalidParameter")
        assert emulator.clock_offset() == 1800.0
        # An API answer is dated by the stepped clock.
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{emulator.url}/", timeout=10)
        with caught.value:
            date = parse_http_date(caught.value.headers["Date"])
        assert date is not None and abs(date - (time.time() + 1800)) < 5


@pytest.mark.slow
@pytest.mark.parametrize("offset_s", ["-3600", "1800"])
def test_daemon_keeps_polling_against_a_server_whose_clock_is_off(
    tmp_path: Path, offset_s: str
) -> None:
    """Our clock an hour ahead of the server's, or half an hour behind it."""
    uids = [f"user-{i:06d}" for i in range(1, 151)]
    with EmulatorProcess(
        "--clock-offset-s", offset_s, "--group", "demo-app/demo-group:150", "--qps", "0"
    ) as emulator:
        config = base_config(emulator, interval_s=0.3, max_auth_failures=2) + target(
            "demo-app", "demo-group", uids=uids
        )
        daemon = DaemonProcess(tmp_path, config)
        try:
            daemon.sweeps_done(4)
            assert daemon.proc.poll() is None
            assert daemon.stop(signal.SIGTERM) == 0
        finally:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait()
            daemon.close()
    records = daemon.records()
    assert {r["type"] for r in records} <= {"presence", "change"}
    by_sweep = Counter(r["sweep"] for r in records if r["type"] == "presence")
    assert len(by_sweep) >= 4 and set(by_sweep.values()) == {len(uids)}
    logs = daemon.logs()
    assert not any("giving up" in e["event"] for e in logs)
    assert not any("credentials rejected" in e["event"] for e in logs)
    offsets = [e for e in logs if "clock offset" in e.get("event", "")]
    assert len(offsets) == 1 and offsets[0]["level"] in ("WARNING", "warning")
