"""Shared test helpers: a fake clock, an instant rate meter and a scripted fetcher."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, Self

import pytest

from poller.core.errors import PollerError
from poller.core.ratelimit import RateStats
from poller.core.records import Batch
from poller.wire.client import OnlineUsersAnswer
from tests.daemons import DaemonProcess
from tests.pgserver import PostgresServer, find_postgres_bindir
from tests.redisserver import RedisServer, find_redis_server


class FakeClock:
    """Monotonic time that only moves when someone sleeps (optionally oversleeping)."""

    def __init__(self, start: float = 1000.0, lateness: Callable[[], float] | None = None):
        self.now = start
        self.start = start
        self.epoch = time.time()  # wall time moves with the fake clock, from today's date
        self.lateness = lateness
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.epoch + (self.now - self.start)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds) + (self.lateness() if self.lateness else 0.0)
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Daemons started by a test (in-process or as children) keep their state in the test's own
    folder, never in the real ``~/.local/state/poller``."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))


@pytest.fixture
def black_hole_port() -> Iterator[int]:
    """A port on 127.0.0.1 where connects never complete: a listener whose accept queue is full
    silently drops further SYNs."""
    hole = socket.socket()
    fillers: list[socket.socket] = []
    try:
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(hole.getsockname())
            fillers.append(filler)
        yield int(hole.getsockname()[1])
    finally:
        for sock in [hole, *fillers]:
            sock.close()


class LoopbackServer:
    """An ``asyncio.start_server`` on 127.0.0.1 whose connection handlers are tasks it owns and
    cancels on exit; subclasses implement ``_serve``."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.port = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class InstantRateMeter:
    """Grants at once; remembers throttling signals."""

    def __init__(self) -> None:
        self.granted = 0
        self.throttled: list[float | None] = []

    async def acquire(self) -> float:
        self.granted += 1
        await asyncio.sleep(0)
        return 0.0

    def on_throttled(self, retry_after_s: float | None) -> None:
        self.throttled.append(retry_after_s)

    def stats(self) -> RateStats:
        return RateStats(self.granted, 0.0, 0.0, 0.0, len(self.throttled), 0)


class GateMeter:
    """Grants a slot only when the test opens the gate (one slot per :meth:`open`)."""

    def __init__(self) -> None:
        self._slots = asyncio.Semaphore(0)
        self.waiting = 0
        self.granted = 0
        self.throttled: list[float | None] = []

    def open(self, slots: int = 1) -> None:
        for _ in range(slots):
            self._slots.release()

    async def acquire(self) -> float:
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.granted += 1
        return 0.0

    def on_throttled(self, retry_after_s: float | None) -> None:
        self.throttled.append(retry_after_s)

    def stats(self) -> RateStats:
        return RateStats(self.granted, 0.0, 0.0, 0.0, len(self.throttled), 0)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


Script = Callable[[Batch, int], PollerError | None]


class ScriptedFetcher:
    """Answers every UID as online with JoinTime = len(uid), unless ``script`` says to fail.

    ``script(batch, attempt)`` returns an error to raise for that attempt (1-based) or None.
    """

    def __init__(self, script: Script | None = None, delay: float = 0.0) -> None:
        self.script = script
        self.delay = delay
        self.calls: list[Batch] = []
        self.attempts: dict[tuple[str, ...], int] = {}
        self.in_flight = 0
        self.max_in_flight = 0

    async def fetch(self, batch: Batch) -> OnlineUsersAnswer:
        self.calls.append(batch)
        n = self.attempts.get(batch.uids, 0) + 1
        self.attempts[batch.uids] = n
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.script is not None:
                error = self.script(batch, n)
                if error is not None:
                    raise error
            return OnlineUsersAnswer(
                request_id=f"req-{len(self.calls)}",
                online_users=[
                    {"UserId": u, "Online": True, "JoinTime": len(u)} for u in batch.uids
                ],
            )
        finally:
            self.in_flight -= 1


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def daemons() -> Iterator[Callable[..., DaemonProcess]]:
    """Start ``poller run`` subprocesses: ``daemons(tmp_path, config_text, env=None)``; any left
    running at the end of the test is killed."""
    started: list[DaemonProcess] = []

    def start(tmp: Path, config: str, env: dict[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess(tmp, config, env)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        d.close()


def missing(server: str, package: str) -> NoReturn:
    """A server a test needs is not installed: skipped locally, saying how to install it; a
    failure on CI (``CI=true``), which must install it (``.ci/run`` does)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{server} not found: CI must install it (apt-get install {package})")
    pytest.skip(f"{server} not found; install it with: sudo apt-get install {package}")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real, empty ``redis-server`` on a unix socket in the test's folder, without persistence:
    ``.url`` for clients, ``.restart()`` for "Redis restarted empty". Skipped when the binary is
    missing, except on CI (``CI=true``), where that is a failure."""
    binary = find_redis_server()
    if binary is None:
        missing("redis-server", "redis-server")
    with RedisServer(tmp_path / "redis", binary) as server:
        yield server


@pytest.fixture
def postgres_server(tmp_path: Path) -> Iterator[PostgresServer]:
    """A real PostgreSQL server with a fresh cluster, on a unix socket only, as ``nobody`` when
    the tests run as root: ``.dsn`` for clients (database and superuser ``poller``, no password),
    ``.stop()``/``.start()``/``.restart()``, ``.kill()`` for a crash. Skipped when the binaries are
    missing, except on CI (``CI=true``), where that is a failure."""
    bindir = find_postgres_bindir()
    if bindir is None:
        missing("PostgreSQL", "postgresql")
    with PostgresServer(tmp_path / "postgres", bindir) as server:
        yield server
