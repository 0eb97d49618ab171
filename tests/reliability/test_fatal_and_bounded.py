"""R5, R6, R7: fresh signatures, fatal errors stop (never storm), bounded time."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from poller.config import ApiConfig, LimitsConfig, PollerConfig, RetryConfig, SweepConfig
from poller.core.errors import ClockSkewError
from poller.core.records import Record, Target
from poller.emulator import EmulatorConfig, EmulatorServer, FaultRates, GroupSpec
from poller.emulator.process import EmulatorProcess
from poller.engine.poller import Poller
from poller.wire.signing import SigningCredentials
from tests.daemons import DaemonProcess, base_config, target

TARGET = Target("demo-app", "demo-group")
CREDS = SigningCredentials("demo-key", "demo-secret")
UIDS = [f"user-{i:06d}" for i in range(1, 401)]
TRANSPORTS = ("aiohttp", "builtin")


def config_for(endpoint: str, **changes: object) -> PollerConfig:
    return PollerConfig(
        api=ApiConfig(endpoint=endpoint, protocol="http", timeout_s=0.3),
        limits=LimitsConfig(qps=1000, max_in_flight=8),
        retry=RetryConfig(backoff_base_s=0.01, backoff_cap_s=0.05),
    ).with_changes(**changes)


async def sweep(
    emulator_config: EmulatorConfig, transport: str = "aiohttp", **changes: object
) -> tuple[list[Record], dict[str, Any], float]:
    async with EmulatorServer(emulator_config) as emulator:
        started = time.monotonic()
        config = config_for(emulator.endpoint, **changes)
        config = config.with_changes(
            api=replace(config.api, transport=transport)  # type: ignore[arg-type]
        )
        async with Poller(config, credentials=CREDS) as poller:
            records: list[Record] = []
            try:
                async for r in poller.sweep(TARGET, UIDS):
                    records.append(r)
            except ClockSkewError:
                pass
        return records, emulator.stats(), time.monotonic() - started


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reset_after_processing_never_causes_nonce_reuse(transport: str) -> None:
    emu = EmulatorConfig(
        port=0,
        groups=(GroupSpec("demo-app", "demo-group", 400),),
        qps=0,
        faults=FaultRates.parse("reset_after=0.3"),
        seed=3,
    )
    records, stats, _ = asyncio.run(sweep(emu, transport))
    assert len(records) == 400
    assert stats["faults_injected"].get("reset_after", 0) >= 5
    assert "SignatureNonceUsed" not in stats["total"]["responses_by_code"]
    assert Counter(r["type"] for r in records)["presence"] >= 350


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_clock_skew_is_named_and_not_retried(transport: str) -> None:
    # The server is 16 minutes ahead of us. Its Date header corrects our clock: only the requests
    # in flight before the first answer are rejected, and each is re-signed and sent once more.
    ahead = EmulatorConfig(
        port=0,
        groups=(GroupSpec("demo-app", "demo-group", 400),),
        qps=0,
        wall_clock=lambda: time.time() + 16 * 60,
    )
    records, stats, _ = asyncio.run(sweep(ahead, transport))
    assert len(records) == 400 and {r["type"] for r in records} == {"presence"}
    assert stats["total"]["requests_total"] <= 20 + 8  # 20 batches, at most 8 sent twice
    # A gateway whose date check no corrected request can pass (a window of 1 ns): the
    # correction is tried once, then the skew is named, final and not retried again.
    unmatchable = replace(ahead, date_window_s=1e-9)
    records, stats, _ = asyncio.run(sweep(unmatchable, transport))
    assert len({r["uid"] for r in records}) == 400
    codes = Counter(r["code"] for r in records if r["type"] == "error")
    assert set(codes) == {"InvalidTimeStamp.Expired"}
    assert all("clock skew" in r["message"] for r in records if r["type"] == "error")
    assert stats["total"]["requests_total"] <= 2 * 8  # what was in flight, once corrected


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_hung_server_costs_at_most_the_attempt_timeout(transport: str) -> None:
    emu = EmulatorConfig(
        port=0,
        groups=(GroupSpec("demo-app", "demo-group", 400),),
        qps=0,
        faults=FaultRates.parse("hang=1.0"),
        hang_s=30.0,
    )
    records, _, elapsed = asyncio.run(
        sweep(
            emu,
            transport,
            retry=RetryConfig(max_attempts=2, backoff_base_s=0.01, backoff_cap_s=0.02),
        )
    )
    assert {r["code"] for r in records if r["type"] == "error"} == {"Timeout"}
    attempts = Counter(r.get("attempts") for r in records)
    assert set(attempts) <= {1, 2} and attempts[2] > 0  # the retry budget caps retries too
    # 20 batches x 2 attempts x 0.3 s, 8 at a time: about 1.5 s, nowhere near hang_s.
    assert elapsed < 10.0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sweep_deadline_turns_the_rest_into_deadline_exceeded(transport: str) -> None:
    emu = EmulatorConfig(
        port=0,
        groups=(GroupSpec("demo-app", "demo-group", 400),),
        qps=0,
        faults=FaultRates.parse("hang=1.0"),
        hang_s=30.0,
    )
    records, _, elapsed = asyncio.run(
        sweep(
            emu,
            transport,
            sweep=SweepConfig(deadline_s=0.5),
            limits=LimitsConfig(qps=20, max_in_flight=2),
        )
    )
    codes = Counter(r.get("code") for r in records)
    assert len({r["uid"] for r in records}) == 400
    assert codes["DeadlineExceeded"] > 0 and set(codes) <= {"DeadlineExceeded", "Timeout"}
    assert elapsed < 5.0


@pytest.mark.slow
def test_daemon_gives_up_after_repeated_auth_failures(tmp_path: Path) -> None:
    with EmulatorProcess() as emulator:
        config = (
            emulator.config_toml("demo-key", "wrong-secret")
            + "\n[daemon]\ninterval_s = 0.2\nmax_auth_failures = 3\n"
            + '\n[[sinks]]\nkind = "file"\npath = "out.jsonl"\n'
            + target("demo-app", "demo-group", uids=UIDS)
        )
        daemon = DaemonProcess(tmp_path, config)
        try:
            code = daemon.proc.wait(30)
        finally:
            daemon.close()
        requests = emulator.stats()["total"]["requests_total"]
    assert code == 78
    logs = daemon.logs()
    assert any("giving up" in e["event"] for e in logs)
    assert sum(e["event"] == "sweep" for e in logs) == 3
    assert requests <= 3 * 2  # one (or two in flight) per sweep, never a retry
    assert "wrong-secret" not in daemon.stderr()
    _ = base_config  # shared helpers
