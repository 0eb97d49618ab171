"""A ``poller run`` daemon with a webhook sink against a receiver that goes away, while the
daemon is killed with SIGKILL and restarted: every change record reaches the receiver, and
de-duplicated by idempotency key the receiver holds exactly the flips made at the emulator."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from poller.emulator.process import EmulatorProcess
from poller.wire.webhook import SIGNATURE_HEADER, verify
from tests.daemons import Flips, base_config, http_get, target, wait_until

pytestmark = pytest.mark.slow

SECRET = "whsec-daemon-test"
APP, GROUP = "demo-app", "static"


class ThreadedReceiver:
    """An aiohttp receiver on 127.0.0.1 in its own thread and event loop; ``up`` toggles it
    (down: the port is closed, connections are refused)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET, request.headers.get(SIGNATURE_HEADER, ""), body):
            with self._lock:
                self.bad_signatures += 1
            return web.Response(status=401)
        with self._lock:
            self.records += orjson.loads(body)["records"]
        return web.Response(text="ok")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> None:
        self._run(self._start())

    def stop(self) -> None:
        self._run(self._stop())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def changes(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r["type"] == "change"]


@pytest.fixture
def receiver() -> Iterator[ThreadedReceiver]:
    r = ThreadedReceiver()
    r.start()
    try:
        yield r
    finally:
        r.close()


def test_changes_reach_the_receiver_across_an_outage_and_a_kill(
    tmp_path: Path, daemons: Any, receiver: ThreadedReceiver
) -> None:
    uids = [f"vip-{i}" for i in range(8)]
    with EmulatorProcess("--group", "demo-app/other:1") as emu:
        emu.change_members(APP, GROUP, join=uids)
        config = (
            base_config(emu, emit="changes")
            + '\n[metrics]\nlisten = "127.0.0.1:0"\n'
            + target(APP, GROUP, uids=uids)
            + '\n[[sinks]]\nkind = "webhook"\n'
            + f'url = "http://127.0.0.1:{receiver.port}/hook"\nsecret = "{SECRET}"\n'
            + "max_batch = 2\n"
        )
        flip = Flips(emu, APP, GROUP)
        daemon = daemons(tmp_path / "d", config)
        daemon.sweeps_done(2)
        flip("vip-0", False)
        daemon.sweeps_done(daemon.sweep_count() + 3)  # flips spaced more than two intervals
        receiver.stop()  # the receiver goes away: records wait in the spool
        flip("vip-1", False)
        daemon.sweeps_done(daemon.sweep_count() + 3)
        flip("vip-0", True)
        daemon.sweeps_done(daemon.sweep_count() + 3)
        url = next(e["url"] for e in daemon.logs() if e["event"] == "metrics listening")
        metrics = http_get(url)[1].decode()
        assert "poller_webhook_spooled_batches{" in metrics
        assert "poller_webhook_retries_total{" in metrics
        daemon.proc.send_signal(signal.SIGKILL)  # with undelivered records in its spool
        daemon.proc.wait(10)
        receiver.start()  # back, on the same port
        again = daemons(tmp_path / "d", config)  # the same state_dir, hence the same spool
        again.sweeps_done(2)
        flip("vip-2", False)
        again.sweeps_done(again.sweep_count() + 3)
        wait_until(lambda: len({r["idempotency_key"] for r in receiver.changes()}) >= 4, "all")
        assert again.stop() == 0
    assert receiver.bad_signatures == 0
    unique = {r["idempotency_key"]: r for r in receiver.changes()}
    got = [(r["uid"], r["online"]) for r in unique.values()]
    assert sorted(got) == sorted(flip.made)
    per_uid: dict[str, list[int]] = collections.defaultdict(list)
    for r in receiver.changes():
        per_uid[r["uid"]].append(r["version"])
    assert all(v == sorted(v) for v in per_uid.values())  # in order per user


def test_poller_once_delivers_its_records_before_it_exits(
    tmp_path: Path, receiver: ThreadedReceiver
) -> None:
    uids = [f"user-{i:06d}" for i in range(1, 121)]
    with EmulatorProcess("--group", "demo-app/g:120") as emu:
        config = tmp_path / "once.toml"
        config.write_text(
            emu.config_toml()
            + f'\n[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
            + '\n[[sinks]]\nkind = "webhook"\n'
            + f'url = "http://127.0.0.1:{receiver.port}/hook"\nsecret = "{SECRET}"\n'
            + 'types = ["presence", "error"]\nmax_batch = 50\n'
        )
        result = subprocess.run(
            [
                *(sys.executable, "-m", "poller", "once", "--config", str(config)),
                *("--target", "demo-app/g", "--uids", ",".join(uids), "-q"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert sorted(r["uid"] for r in receiver.records) == uids  # all there when it exited
    assert receiver.bad_signatures == 0 and SECRET not in result.stderr
