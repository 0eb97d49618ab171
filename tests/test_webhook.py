"""The webhook sink against a real aiohttp receiver on 127.0.0.1 that fails on demand (500s,
429 with Retry-After, hangs, refusals, going away and coming back) and verifies every
signature; records survive in the spool across receiver outages and sink restarts."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from aiohttp import web

from poller.config import SinkConfig, parse_config, render_toml
from poller.core.clock import system_clock
from poller.core.errors import ConfigError
from poller.core.records import ChangeRecord, Record
from poller.engine.sinks import TypedSink, sinks_from_config
from poller.engine.webhook import WebhookSink, idempotency_key, open_webhook
from poller.wire.webhook import SIGNATURE_HEADER, sign, verify

SECRET = "whsec-test-secret"

Answer = Callable[[web.Request], web.StreamResponse | None]


class Receiver:
    """An aiohttp app that records verified batches; ``script`` answers the next requests
    (``None`` from a step, or an empty script: 200)."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.bad_signatures = 0
        self.requests = 0
        self.script: list[Any] = []
        self.port = 0
        self.scheme = "http"
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        if not verify(SECRET, request.headers.get(SIGNATURE_HEADER, ""), body):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        step = self.script.pop(0) if self.script else None
        if step == "hang":
            await asyncio.sleep(30)  # longer than the sink's timeout: cancelled by it
        if isinstance(step, web.StreamResponse):
            return step
        self.batches.append(orjson.loads(body)["records"])
        return web.Response(status=200, text="ok")

    async def start(self, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.scheme = "https" if ssl_context is not None else "http"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/hook"

    def records(self) -> list[dict[str, Any]]:
        return [r for batch in self.batches for r in batch]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


class QuickClock:
    """The real clock, whose sleeps are recorded and cut short (backoff without waiting); the
    monotonic time moves on by what was slept, as if the sleeps had been whole."""

    def __init__(self) -> None:
        self._base = system_clock()
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self._base.monotonic() + sum(self.slept)

    def time(self) -> float:
        return self._base.time()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0.005)


def change(uid: str, version: int, online: bool = True) -> Record:
    rec: ChangeRecord = {
        "type": "change",
        "sweep": 3,
        "api": "BatchGetOnlineUsers",
        "app_id": "app",
        "group_id": "g",
        "uid": uid,
        "online": online,
        "previous_online": not online,
        "join_time": 5 if online else None,
        "polled_at": 1000,
        "version": version,
    }
    return rec


def sink_for(url: str, spool_dir: Path, clock: QuickClock, **changes: Any) -> WebhookSink:
    config = SinkConfig(kind="webhook", url=url, secret=SECRET, spool_dir=spool_dir, **changes)
    return open_webhook(config, state_dir=None, clock=clock)


async def delivered(
    receiver: Receiver, n: int, sink: WebhookSink | None = None, what: str = "records delivered"
) -> None:
    """Wait (bounded: 10 s) until the receiver holds ``n`` records (and ``sink`` has seen the
    answers: its receiver may hold a batch whose 200 is still on its way)."""
    for _ in range(1000):
        if len(receiver.records()) >= n and (sink is None or sink.stats.delivered_records >= n):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}: {len(receiver.records())} of {n}")


async def test_records_arrive_signed_in_batches_with_their_idempotency_keys(
    receiver: Receiver, tmp_path: Path
) -> None:
    sink = sink_for(receiver.url, tmp_path / "spool", QuickClock(), max_batch=3)
    try:
        await sink.write([change(f"u{i}", 1) for i in range(7)])
        await sink.flush()
        await delivered(receiver, 7)
    finally:
        await sink.aclose()
    assert [len(b) for b in receiver.batches] == [3, 3, 1] and receiver.bad_signatures == 0
    first = receiver.records()[0]
    assert first["idempotency_key"] == "change:BatchGetOnlineUsers/app/g/u0:1"
    assert first["uid"] == "u0" and first["version"] == 1
    assert sink.stats.delivered_records == 7 and sink.spool.entries == 0


async def test_500_and_429_are_retried_and_retry_after_is_honoured(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.script = [
        web.Response(status=500, text="oops"),
        web.Response(status=429, headers={"Retry-After": "7"}),
        web.Response(status=503),
    ]
    clock = QuickClock()
    sink = sink_for(receiver.url, tmp_path / "spool", clock)
    try:
        await sink.write([change("u1", 1), change("u2", 4)])
        await sink.flush()  # the end of a sweep
        await delivered(receiver, 2, sink)
    finally:
        await sink.aclose()
    assert [r["uid"] for r in receiver.records()] == ["u1", "u2"]  # once, in order
    assert 7.0 in clock.slept  # the receiver's Retry-After, not the backoff
    assert sink.stats.retried == 3 and sink.stats.delivered_batches == 1


async def test_a_receiver_that_hangs_is_timed_out_and_tried_again(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.script = ["hang"]
    sink = sink_for(receiver.url, tmp_path / "spool", QuickClock(), timeout_s=0.3)
    try:
        await sink.write([change("u1", 1)])
        await sink.flush()  # the end of a sweep
        await delivered(receiver, 1)
    finally:
        await sink.aclose()
    assert sink.stats.retried >= 1 and receiver.requests >= 2


async def test_a_4xx_refusal_is_logged_and_not_retried(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [web.Response(status=400, text="schema mismatch: uid")]
    sink = sink_for(receiver.url, tmp_path / "spool", QuickClock())
    try:
        with caplog.at_level(logging.ERROR, logger="poller.sinks"):
            await sink.write([change("refused", 1)])
            await sink.flush()  # the end of a sweep
            await sink.write([change("next", 1)])
            await sink.flush()  # the end of a sweep
            await delivered(receiver, 1)
    finally:
        await sink.aclose()
    assert [r["uid"] for r in receiver.records()] == ["next"]
    assert sink.stats.rejected_records == 1 and sink.stats.retried == 0
    [line] = [r.getMessage() for r in caplog.records]
    assert "HTTP 400" in line and "schema mismatch: uid" in line and SECRET not in line


async def test_records_wait_while_the_receiver_is_away_and_arrive_in_order(
    receiver: Receiver, tmp_path: Path
) -> None:
    port = receiver.port
    await receiver.stop()
    sink = sink_for(receiver.url, tmp_path / "spool", QuickClock(), max_batch=2)
    try:
        for i in range(10):
            await sink.write([change(f"u{i}", 1)])  # never waits for the receiver
            await sink.flush()  # the end of a sweep
        assert sink.spool.entries == 10
        await receiver.start(port)  # back on the same address
        await delivered(receiver, 10)
    finally:
        await sink.aclose()
    assert [r["uid"] for r in receiver.records()] == [f"u{i}" for i in range(10)]


async def test_a_restarted_sink_delivers_what_its_spool_kept(
    receiver: Receiver, tmp_path: Path
) -> None:
    port = receiver.port
    await receiver.stop()
    first = sink_for(receiver.url, tmp_path / "spool", QuickClock())
    await first.write([change("a", 1), change("b", 1)])
    await first.flush()  # the end of a sweep
    await first.write([change("c", 2)])
    await first.flush()  # the end of a sweep
    await first.aclose()  # the poller stops; the receiver never answered
    await receiver.start(port)
    second = sink_for(receiver.url, tmp_path / "spool", QuickClock())
    try:
        await second.open()  # delivers the spool's batches without a new write
        await delivered(receiver, 3)
    finally:
        await second.aclose()
    assert [(r["uid"], r["version"]) for r in receiver.records()] == [("a", 1), ("b", 1), ("c", 2)]


def test_signatures_verify_only_for_the_secret_the_body_and_a_fresh_time() -> None:
    body = b'{"records":[]}'
    header = sign(SECRET, 1_800_000_000, body)
    assert verify(SECRET, header, body, now=1_800_000_010)
    assert not verify("another secret", header, body, now=1_800_000_010)
    assert not verify(SECRET, header, body + b" ", now=1_800_000_010)
    assert not verify(SECRET, header, body, now=1_800_000_000 + 3600)  # a replay
    assert not verify(SECRET, "garbage", body, now=1_800_000_000)


def test_idempotency_keys_name_target_uid_and_version_or_sweep() -> None:
    assert idempotency_key(change("u", 7)) == "change:BatchGetOnlineUsers/app/g/u:7"
    app_wide = {**change("u", 2), "api": "CheckLiveMessageUsersOnline", "group_id": None}
    assert idempotency_key(app_wide) == "change:CheckLiveMessageUsersOnline/app//u:2"  # type: ignore[arg-type]


async def test_each_sink_receives_the_record_types_it_asks_for(tmp_path: Path) -> None:
    config = parse_config(
        {
            "daemon": {"emit": "all"},
            "sinks": [
                {"kind": "file", "path": str(tmp_path / "all.jsonl")},
                {"kind": "file", "path": str(tmp_path / "changes.jsonl"), "types": ["change"]},
            ],
        }
    )
    sinks = sinks_from_config(config.sinks, emit=config.daemon.emit)
    assert not isinstance(sinks[0], TypedSink) and isinstance(sinks[1], TypedSink)
    presence = {**change("p", 1), "type": "presence"}
    for sink in sinks:
        await sink.write([presence, change("c", 1)])  # type: ignore[list-item]
        await sink.aclose()
    assert len((tmp_path / "all.jsonl").read_bytes().splitlines()) == 2
    [line] = (tmp_path / "changes.jsonl").read_bytes().splitlines()
    assert orjson.loads(line)["uid"] == "c"


def test_webhook_config_is_checked_and_its_secrets_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = {
        "kind": "webhook",
        "url": "https://hooks.example.test/presence?token=abc",
        "secret": SECRET,
        "headers": ["Authorization: Bearer t0ken"],
    }
    config = parse_config({"sinks": [entry]})
    text = render_toml(config)
    assert SECRET not in text and "t0ken" not in text and "token=abc" not in text
    assert 'kind = "webhook"' in text and "max_batch = 500" in text and "path" not in text
    assert config.sinks[0].default_types("all") == ("change", "error")
    with pytest.raises(ConfigError, match="secret or secret_env"):
        parse_config({"sinks": [{"kind": "webhook", "url": "http://127.0.0.1:1/h"}]})
    with pytest.raises(ConfigError, match="http:// or https://"):
        parse_config({"sinks": [{**entry, "url": "ftp://x"}]})
    with pytest.raises(ConfigError, match="presence, change, error"):
        parse_config({"sinks": [{**entry, "types": ["changes"]}]})
    env = {**entry, "secret": "", "secret_env": "POLLER_TEST_WEBHOOK_SECRET"}
    monkeypatch.delenv("POLLER_TEST_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ConfigError, match="POLLER_TEST_WEBHOOK_SECRET is not set"):
        sinks_from_config(parse_config({"sinks": [env]}).sinks, state_dir=Path("/nonexistent"))


async def test_closing_delivers_the_spool_first_unless_the_receiver_is_failing(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = sink_for(receiver.url, tmp_path / "one", QuickClock())
    await sink.write([change(f"u{i}", 1) for i in range(5)])
    await sink.aclose()  # a one-shot run ends: what it wrote is delivered
    assert len(receiver.records()) == 5 and receiver.bad_signatures == 0

    await receiver.stop()
    away = sink_for(receiver.url, tmp_path / "two", QuickClock(), timeout_s=60.0)
    await away.write([change("late", 1)])
    await away.flush()  # the end of a sweep
    with caplog.at_level(logging.WARNING, logger="poller.sinks"):
        async with asyncio.timeout(10):  # not the 60-s drain: the receiver is failing
            for _ in range(500):
                if away.stats.retried:
                    break
                await asyncio.sleep(0.01)
            await away.aclose()
    assert any("stay in the spool" in r.getMessage() for r in caplog.records)


def test_check_config_refuses_a_webhook_whose_secret_variable_is_unset(tmp_path: Path) -> None:
    config = tmp_path / "poller.toml"
    config.write_text(
        '[credentials]\naccess_key_id = "k"\naccess_key_secret = "s"\n'
        '[[targets]]\napp_id = "a"\ngroup_id = "g"\nuids = ["u1"]\n'
        '[[sinks]]\nkind = "webhook"\nurl = "https://hooks.example.test/p"\n'
        'secret_env = "POLLER_TEST_UNSET_WEBHOOK_SECRET"\n'
        f'spool_dir = "{tmp_path / "spool"}"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "POLLER_TEST_UNSET_WEBHOOK_SECRET"}
    result = subprocess.run(
        [sys.executable, "-m", "poller", "check-config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 78
    assert "sinks[0].secret_env" in result.stderr and "is not set" in result.stderr
    assert 'url = "https://hooks.example.test/p"' in result.stdout  # printed first


async def test_an_https_receiver_is_trusted_through_ca_file_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    receiver = Receiver()
    await receiver.start(ssl_context=server_context)
    try:
        untrusted = sink_for(receiver.url, tmp_path / "a", QuickClock())
        with caplog.at_level(logging.INFO, logger="poller.sinks"):
            await untrusted.write([change("u1", 1)])
            await untrusted.flush()  # the end of a sweep
            for _ in range(500):  # bounded: until the first failed attempt
                if untrusted.stats.retried:
                    break
                await asyncio.sleep(0.01)
            await untrusted.aclose()
        assert receiver.records() == []  # refused: the batch stays in the spool
        assert any("certificate" in r.getMessage().lower() for r in caplog.records)
        trusted = sink_for(receiver.url, tmp_path / "a", QuickClock(), ca_file=tmp_path / "ca.pem")
        try:
            await trusted.open()  # the batch the untrusted sink spooled
            await delivered(receiver, 1)
        finally:
            await trusted.aclose()
    finally:
        await receiver.stop()
    assert [r["uid"] for r in receiver.records()] == ["u1"]


async def test_a_lone_failure_is_info_and_a_long_one_one_warning(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = sink_for(receiver.url, tmp_path / "spool", QuickClock())
    try:
        with caplog.at_level(logging.INFO, logger="poller.sinks"):
            receiver.script = [web.Response(status=500)]
            await sink.write([change("u1", 1)])
            await sink.flush()
            await delivered(receiver, 1)
            lone = [(r.levelname, r.getMessage()) for r in caplog.records]
            caplog.clear()
            receiver.script = [web.Response(status=503) for _ in range(12)]  # a minute of backoff
            await sink.write([change("u2", 1)])
            await sink.flush()
            await delivered(receiver, 2)
            long = [(r.levelname, r.getMessage()) for r in caplog.records]
    finally:
        await sink.aclose()
    assert [level for level, _ in lone] == ["INFO", "INFO"]  # failed, delivering again
    warnings = [text for level, text in long if level == "WARNING"]
    assert len(warnings) == 2, long
    assert "failing for" in warnings[0] and "HTTP 503" in warnings[0]
    assert "delivering again after" in warnings[1]
