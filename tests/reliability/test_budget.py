"""R2, R3: never over the QPS budget, retries budgeted, readiness follows health."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from poller.config import RetryConfig
from poller.core.records import Target
from poller.emulator.process import EmulatorProcess
from poller.engine.poller import Poller
from tests.daemons import DaemonProcess, base_config, http_json, target

pytestmark = pytest.mark.slow

FAULTS = (
    "500=0.10,throttle=0.05,hang=0.02,reset_before=0.02,reset_after=0.02,"
    "malformed=0.02,partial=0.01"
)


def test_budget_holds_under_faults_retries_included() -> None:
    uids = [f"user-{i:06d}" for i in range(1, 3001)]
    args = (
        "--qps",
        "100",
        "--group",
        "demo-app/demo-group:3000",
        "--faults",
        FAULTS,
        "--seed",
        "5",
        "--hang-s",
        "2",
    )
    with EmulatorProcess(*args) as emulator:
        config = emulator.poller_config(
            retry=RetryConfig(backoff_base_s=0.05, backoff_cap_s=1.0, throttle_backoff_base_s=0.2)
        )
        config = config.with_changes(
            api=config.api.__class__(endpoint=emulator.endpoint, protocol="http", timeout_s=0.5)
        )

        async def sweep() -> list[Any]:
            async with Poller(config) as poller:
                return [r async for r in poller.sweep(Target("demo-app", "demo-group"), uids)]

        records = asyncio.run(sweep())
        stats = emulator.stats()
    total = stats["total"]
    assert len({r["uid"] for r in records}) == len(records) == 3000
    assert sum(stats["faults_injected"].values()) >= 10
    assert total["requests_total"] > 150  # first attempts and retries
    assert total["max_requests_in_any_1s_window"] <= 100, total
    print(
        f"\nR2: {len(records)} records, {total['requests_total']} requests, "
        f"{sum(stats['faults_injected'].values())} faults injected, "
        f"max window {total['max_requests_in_any_1s_window']}"
    )


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rpartition(" ")[2])
    return total


def test_total_outage_is_budgeted_reported_and_recovered_from(tmp_path: Path) -> None:
    outage_s = 30.0
    uids = [f"user-{i:06d}" for i in range(1, 401)]
    with EmulatorProcess("--qps", "100", "--group", "demo-app/demo-group:400") as emulator:
        config = (
            base_config(emulator, interval_s=1.0, emit="changes")
            + '\n[metrics]\nlisten = "127.0.0.1:0"\n'
            + "\n[retry]\nbackoff_cap_s = 2.0\n"
            + target("demo-app", "demo-group", uids=uids)
        )
        daemon = DaemonProcess(tmp_path, config)
        try:
            logs = daemon.sweeps_done(1)
            url = next(e["url"] for e in logs if e["event"] == "metrics listening")
            ready = url.replace("/metrics", "/readyz")
            assert http_json(ready)[0] == 200
            emulator.reset()
            emulator.set_faults("500=1.0")
            started = time.monotonic()
            while time.monotonic() - started < outage_s:
                time.sleep(0.5)
            status, body = http_json(ready)
            with urllib.request.urlopen(url, timeout=5) as resp:
                metrics = resp.read().decode()
            during = emulator.stats()["total"]
            emulator.set_faults("")
            cleared = time.monotonic()
            while http_json(ready)[0] != 200:
                assert time.monotonic() - cleared < 2.0 + 2 * 1.0 + 5.0, "did not recover"
                time.sleep(0.1)
            recovered_in = time.monotonic() - cleared
            assert daemon.stop() == 0
        finally:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait()
            daemon.close()
    assert status == 503 and "succeeded" in body["reason"]
    first = _metric(
        metrics, 'poller_requests_total{action="BatchGetOnlineUsers",outcome="server_error"}'
    )
    retries = _metric(metrics, "poller_retries_total")
    # Over the whole outage, all requests (first attempts + retries) stay within 1.2x the first
    # attempts, plus the budget's small floor.
    attempts = during["requests_total"]
    assert attempts <= 1.2 * (attempts - retries) + 10 + 1, (attempts, retries, first)
    print(
        f"\noutage: {attempts} requests, {retries:.0f} retries, recovered in {recovered_in:.1f} s"
    )
