"""The pipeline with a scripted fetcher: exactly one record per UID, whatever happens."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from poller.config import LimitsConfig, PollerConfig, RetryConfig, SweepConfig
from poller.core.errors import (
    AuthError,
    ConfigError,
    MalformedResponse,
    PermissionDenied,
    PollerError,
    ServerError,
    ThrottledError,
    TransportError,
)
from poller.core.records import Batch, Record, Target
from poller.engine.poller import Poller
from poller.engine.sinks import CallbackSink
from poller.engine.sources import UidFile
from tests.conftest import FakeClock, InstantRateMeter, ScriptedFetcher

T1 = Target("app", "g1")
T2 = Target("app", "g2")


def make_poller(
    fetcher: ScriptedFetcher,
    *,
    clock: FakeClock | None = None,
    config: PollerConfig | None = None,
    meter: InstantRateMeter | None = None,
) -> Poller:
    return Poller(
        config or PollerConfig(),
        fetcher=fetcher,
        rate_meter=meter or InstantRateMeter(),
        clock=clock or FakeClock(),
    )


async def collect(poller: Poller, target: Target, uids: list[str]) -> list[Record]:
    return [r async for r in poller.sweep(target, uids)]


def by_uid(records: list[Record]) -> dict[str, Record]:
    counts = Counter(r["uid"] for r in records)
    assert max(counts.values()) == 1, "a UID got more than one record"
    return {r["uid"]: r for r in records}


async def test_one_record_per_distinct_uid_including_invalid_ones() -> None:
    uids = [f"u{i}" for i in range(95)] + ["u1", "u2", "", "a,b", "x\ny", "y" * 200, "用户1"]
    fetcher = ScriptedFetcher()
    async with make_poller(fetcher) as poller:
        records = await collect(poller, T1, uids)
    got = by_uid(records)
    assert set(got) == set(uids)
    assert all(len(b.uids) <= 20 for b in fetcher.calls)
    sent = {u for b in fetcher.calls for u in b.uids}
    assert sent == {f"u{i}" for i in range(95)} | {"用户1"}
    for bad in ("", "a,b", "x\ny", "y" * 200):
        rec = got[bad]
        assert rec["type"] == "error" and rec["code"] == "InvalidUserId"
    assert got["用户1"]["type"] == "presence"
    assert poller.last is not None and poller.last.duplicates_in_input == 2


async def test_transient_errors_are_retried_with_backoff_and_fresh_rate_tokens() -> None:
    def script(batch: Batch, attempt: int) -> PollerError | None:
        if batch.uids[0] == "u0" and attempt <= 2:
            return ServerError("boom", code="InternalError", http_status=500)
        if batch.uids[0] == "u20" and attempt == 1:
            return TransportError("reset")
        return None

    meter = InstantRateMeter()
    clock = FakeClock()
    fetcher = ScriptedFetcher(script)
    async with make_poller(fetcher, clock=clock, meter=meter) as poller:
        records = await collect(poller, T1, [f"u{i}" for i in range(60)])
    assert all(r["type"] == "presence" for r in records)
    assert len(records) == 60
    stats = poller.last
    assert stats is not None and stats.retries == 3 and stats.requests == 6
    assert meter.granted == 6  # every attempt paid the rate meter
    assert len(clock.sleeps) == 3 and all(0 <= s <= 5.0 for s in clock.sleeps)


async def test_attempts_are_bounded_and_failures_become_error_records() -> None:
    def script(batch: Batch, attempt: int) -> PollerError | None:
        return ServerError("down", code="ServiceUnavailable", http_status=503)

    fetcher = ScriptedFetcher(script)
    config = PollerConfig(retry=RetryConfig(max_attempts=3))
    async with make_poller(fetcher, config=config) as poller:
        records = await collect(poller, T1, [f"u{i}" for i in range(20)])
    assert {r["code"] for r in records if r["type"] == "error"} == {"ServiceUnavailable"}
    assert all(r.get("attempts") == 3 and r.get("http_status") == 503 for r in records)
    assert len(fetcher.calls) == 3


async def test_retry_budget_caps_retries_when_everything_fails() -> None:
    def script(batch: Batch, attempt: int) -> PollerError | None:
        return ServerError("down", code="InternalError", http_status=500)

    fetcher = ScriptedFetcher(script)
    async with make_poller(fetcher) as poller:
        records = await collect(poller, T1, [f"u{i}" for i in range(2000)])
    assert len(records) == 2000
    stats = poller.last
    assert stats is not None
    assert stats.first_attempts == 100
    assert stats.retries <= 10 + 0.2 * 100


async def test_permission_denied_is_not_retried_and_other_targets_are_unaffected() -> None:
    def script(batch: Batch, attempt: int) -> PollerError | None:
        if batch.target == T1:
            return PermissionDenied(
                "User not authorized", code="Forbidden", http_status=403, request_id="r"
            )
        return None

    fetcher = ScriptedFetcher(script)
    async with make_poller(fetcher) as poller:
        batches = [
            rs
            async for rs in poller.sweep_batches(
                [(T1, [f"a{i}" for i in range(30)]), (T2, [f"b{i}" for i in range(30)])]
            )
        ]
    records = [r for rs in batches for r in rs]
    t1 = [r for r in records if r["group_id"] == "g1"]
    t2 = [r for r in records if r["group_id"] == "g2"]
    assert len(t1) == 30 and all(
        r["type"] == "error" and r["code"] == "Forbidden" and r["attempts"] == 1 for r in t1
    )
    assert len(t2) == 30 and all(r["type"] == "presence" for r in t2)


async def test_rejected_credentials_stop_the_sweep_but_every_uid_is_accounted_for() -> None:
    def script(batch: Batch, attempt: int) -> PollerError | None:
        return AuthError(
            "Specified signature is not matched", code="SignatureDoesNotMatch", http_status=400
        )

    fetcher = ScriptedFetcher(script)
    config = PollerConfig(limits=LimitsConfig(max_in_flight=2))
    records: list[Record] = []
    async with make_poller(fetcher, config=config) as poller:
        with pytest.raises(AuthError):
            async for rs in poller.sweep_batches([(T1, [f"u{i}" for i in range(400)])]):
                records.extend(rs)
    assert len(by_uid(records)) == 400
    assert {r["code"] for r in records if r["type"] == "error"} == {"SignatureDoesNotMatch"}
    assert len(fetcher.calls) <= 2  # nothing more is sent once the key is known bad


async def test_throttling_feeds_the_rate_meter() -> None:
    def script(batch: Batch, attempt: int) -> PollerError | None:
        if attempt == 1:
            return ThrottledError(
                "flow control", code="Throttling.User", http_status=400, retry_after_s=0.25
            )
        return None

    meter = InstantRateMeter()
    fetcher = ScriptedFetcher(script)
    clock = FakeClock()
    async with make_poller(fetcher, meter=meter, clock=clock) as poller:
        records = await collect(poller, T1, [f"u{i}" for i in range(40)])
    assert all(r["type"] == "presence" for r in records)
    assert meter.throttled == [0.25, 0.25]
    assert all(s >= 0.25 for s in clock.sleeps)  # retry-after is a floor of the backoff


async def test_malformed_answers_are_retried_then_reported() -> None:
    def script(batch: Batch, attempt: int) -> PollerError | None:
        return MalformedResponse("HTTP 200: body is not JSON", http_status=200)

    fetcher = ScriptedFetcher(script)
    async with make_poller(fetcher) as poller:
        records = await collect(poller, T1, ["u1", "u2"])
    assert [r["code"] for r in records if r["type"] == "error"] == ["MalformedResponse"] * 2


async def test_in_flight_bound_and_bounded_queue_with_a_slow_consumer() -> None:
    fetcher = ScriptedFetcher(delay=0.001)
    config = PollerConfig(limits=LimitsConfig(max_in_flight=4), sweep=SweepConfig(queue_size=2))
    max_queued = 0
    async with make_poller(fetcher, config=config) as poller:
        seen = 0
        async for rs in poller.sweep_batches([(T1, [f"u{i}" for i in range(400)])]):
            seen += len(rs)
            await asyncio.sleep(0.002)  # a consumer slower than the producer
            max_queued = max(max_queued, len(fetcher.calls) * 20 - seen)
    assert seen == 400
    assert fetcher.max_in_flight <= 4
    # In flight (4) + queued (2) + the one being consumed, in batches of 20 UIDs.
    assert max_queued <= (4 + 2 + 1) * 20


async def test_slow_callback_sink_bounds_memory_and_loses_nothing() -> None:
    fetcher = ScriptedFetcher()
    config = PollerConfig(limits=LimitsConfig(max_in_flight=3), sweep=SweepConfig(queue_size=2))
    got: list[str] = []
    ahead: list[int] = []

    async def slow(record: Record) -> None:
        await asyncio.sleep(0.05)  # a sink that takes 50 ms per record
        got.append(record["uid"])
        ahead.append(len(fetcher.calls) * 20 - len(got))

    async with make_poller(fetcher, config=config) as poller:
        await poller.run_once([(T1, [f"u{i}" for i in range(60)])], [CallbackSink(slow)])
    assert sorted(got) == sorted(f"u{i}" for i in range(60))
    assert max(ahead) <= (3 + 2 + 1) * 20


async def test_stop_request_turns_unsent_batches_into_cancelled_records() -> None:
    fetcher = ScriptedFetcher()
    records: list[Record] = []
    async with make_poller(fetcher) as poller:
        async for rs in poller.sweep_batches([(T1, [f"u{i}" for i in range(200)])]):
            records.extend(rs)
            poller.request_stop()
    assert len(by_uid(records)) == 200
    codes = Counter(r.get("code", "presence") for r in records)
    assert codes["Cancelled"] > 0 and codes["presence"] > 0


async def test_sweep_deadline_turns_the_rest_into_deadline_exceeded() -> None:
    clock = FakeClock()

    def script(batch: Batch, attempt: int) -> PollerError | None:
        clock.now += 1.0  # every request takes a (fake) second
        return None

    fetcher = ScriptedFetcher(script)
    config = PollerConfig(sweep=SweepConfig(deadline_s=5.0), limits=LimitsConfig(max_in_flight=1))
    async with make_poller(fetcher, clock=clock, config=config) as poller:
        records = await collect(poller, T1, [f"u{i}" for i in range(200)])
    codes = Counter(r.get("code", "presence") for r in records)
    assert len(by_uid(records)) == 200
    assert codes["presence"] == 100 and codes["DeadlineExceeded"] == 100


async def test_targets_interleave_so_a_small_one_finishes_early() -> None:
    fetcher = ScriptedFetcher()
    order: list[str | None] = []
    async with make_poller(fetcher) as poller:
        async for rs in poller.sweep_batches(
            [(T1, [f"big{i}" for i in range(2000)]), (T2, [f"small{i}" for i in range(40)])]
        ):
            order.extend(r["group_id"] for r in rs)
    last_small = max(i for i, g in enumerate(order) if g == "g2")
    assert last_small < 0.1 * len(order)


async def test_a_poller_cannot_be_reopened() -> None:
    poller = make_poller(ScriptedFetcher())
    async with poller:
        pass
    with pytest.raises(RuntimeError):
        async with poller:
            pass


async def test_unreadable_uid_file_raises_a_plain_config_error(tmp_path: Path) -> None:
    fetcher = ScriptedFetcher()
    async with make_poller(fetcher) as poller:
        with pytest.raises(ConfigError) as info:
            await collect_from(poller, [(T1, ["u1", "u2"]), (T2, UidFile(tmp_path / "missing"))])
    assert "missing" in str(info.value)


async def collect_from(poller: Poller, work: list[Any]) -> list[Record]:
    return [r async for rs in poller.sweep_batches(work) for r in rs]
