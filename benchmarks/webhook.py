"""The webhook sink's acceptance run (issue 16): a ``poller run`` daemon posts its change records
to a receiver that fails on purpose, goes away for a while, and the daemon is killed with
SIGKILL and restarted meanwhile.

::

    python benchmarks/webhook.py [--duration-s 300] [--down-s 60] [--quick] [--out F]

Set-up
    The emulator (``--qps 100``) serves two groups of ``demo-app``: ``static`` with
    ``--static-uids`` members (50) created through ``/_emulator/members`` (so it never churns),
    and ``churn`` with ``--churn-uids`` members (200) flipping ``--churn-per-s`` times per
    second (5), for volume. One ``poller run`` daemon polls both every 2.0 s (``emit =
    "changes"``) and writes its change records to a file sink (``types = ["change"]``) and to a
    webhook sink (``max_batch = --max-batch``, default 10) on a receiver in this process
    (aiohttp, 127.0.0.1) that verifies every signature with ``poller.wire.webhook.verify`` and,
    with a seeded random sequence, answers 10 % of the requests HTTP 500 and 5 % HTTP 429 with
    ``Retry-After: 1``; the rest 200 (only those count as received).

Run (times from the daemon's first sweep)
    Every 3 intervals (6 s after the previous flip) ``--flips-per-event`` (3) static UIDs
    are flipped online/offline through ``/_emulator/members``; each flip is recorded with its
    time. At 40 % of (duration - down) the receiver closes its port for ``--down-s`` seconds;
    halfway through the outage the daemon, its spool holding undelivered batches, is killed
    with SIGKILL in the middle of a sweep (right after its records file grew: change records
    written, the sweep's state not yet saved) and restarted at once on the same ``state_dir``
    (hence the same spool and the same records file). The receiver comes back on the same
    port. At ``--duration-s`` the flips stop, the churning target is removed from the config
    (SIGHUP) so that no new change records appear, and the run waits (at most ``--drain-s``,
    60 s) until the daemon's ``poller_webhook_spooled_batches`` is 0 and every change record of
    the file reached the receiver; then the daemon is stopped with SIGTERM. The daemon's
    ``VmRSS`` and its ``/metrics`` are sampled every ``--sample-s`` (2 s).

Checks (exit status 1 when one fails)
    1. every change record the daemons wrote to the file (the killed one's included) reached the
       receiver at least once, by idempotency key
       ``change:<api>/<app>/<group>/<uid>:<version>`` built from the file's records;
    2. for the static group, de-duplicated by key (first receipt), the receiver holds exactly the
       flips made, in order per UID: online values as flipped, versions increasing;
    3. no bad signature;
    4. the daemon's RSS while the receiver is down stays within ``--rss-slack-mb`` of its
       maximum before the outage;
    5. the spool held undelivered batches when the daemon was killed, and was drained after
       the receiver came back; no record rejected, lost or dropped; the restarted daemon exits
       0 on SIGTERM.

Reported besides: requests received by answer, duplicates (a key received more than once),
retries and deliveries from the daemons' metrics, spooled bytes over time, and the log lines
about the webhook. ``--quick``: 90 s run, 20 s outage (for development). Everything binds
and connects to 127.0.0.1; every wait is bounded; the emulator and the daemons are stopped on
any exit (SIGTERM and SIGHUP included). Prints a Markdown report and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from harness import CHILDREN, cell, log, scratch_dir, stop_children_on_exit, table

from poller.emulator.process import EmulatorProcess
from poller.wire.webhook import SIGNATURE_HEADER, verify

HERE = Path(__file__).resolve().parent
APP, STATIC, CHURN = "demo-app", "static", "churn"
API = "BatchGetOnlineUsers"
SECRET = "whsec-benchmark-secret"
INTERVAL_S = 2.0
FLIP_EVERY_INTERVALS = 3  # flips spaced more than two intervals apart
FAIL_500, FAIL_429 = 0.10, 0.05
RETRY_AFTER = "1"


class Clock:
    """Seconds since the run's origin (set once the first daemon has swept once)."""

    def __init__(self) -> None:
        self.origin_mono = time.monotonic()
        self.origin_wall = time.time()

    def reset(self) -> None:
        self.origin_mono = time.monotonic()
        self.origin_wall = time.time()

    def now(self) -> float:
        return time.monotonic() - self.origin_mono

    def from_wall(self, wall: float) -> float:
        return wall - self.origin_wall


# -- the receiver ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    t: float
    status: int
    records: int
    batch: str


class Receiver:
    """An aiohttp receiver on 127.0.0.1 in its own thread and event loop. It verifies every
    signature and answers a seeded share of the requests 500 or 429 (``Retry-After: 1``);
    ``stop`` closes the port (connections refused), ``start`` reopens the same port."""

    def __init__(self, clock: Clock, seed: int) -> None:
        self.clock = clock
        self.requests: list[Request] = []
        self.accepted: list[tuple[float, dict[str, Any]]] = []  # (t, record) of 2xx requests
        self.bad_signatures = 0
        self.malformed = 0
        self.up = False
        self.port = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(15)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = self.clock.now()
        good = verify(SECRET, request.headers.get(SIGNATURE_HEADER, ""), body)
        records: list[dict[str, Any]] = []
        with self._lock:
            if not good:
                self.bad_signatures += 1
                status = 401
            else:
                try:
                    records = orjson.loads(body)["records"]
                    roll = self._rng.random()
                    status = 500 if roll < FAIL_500 else 429 if roll < FAIL_500 + FAIL_429 else 200
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    self.malformed += 1
                    status = 400
            batch = request.headers.get("X-Poller-Batch", "")
            self.requests.append(Request(now, status, len(records), batch))
            if status == 200:
                self.accepted.extend((now, r) for r in records)
        if status == 429:
            return web.Response(status=429, headers={"Retry-After": RETRY_AFTER}, text="busy")
        if status == 500:
            return web.Response(status=500, text="failing on purpose")
        if status != 200:
            return web.Response(status=status, text="bad signature or body")
        return web.Response(text="ok")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> None:
        self._run(self._start())
        self.up = True

    def stop(self) -> None:
        self._run(self._stop())
        self.up = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def keys(self) -> set[str]:
        with self._lock:
            return {r["idempotency_key"] for _, r in self.accepted}

    def snapshot(self) -> tuple[list[Request], list[tuple[float, dict[str, Any]]]]:
        with self._lock:
            return list(self.requests), list(self.accepted)


# -- the daemon ------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """``poller_webhook_*`` values (one webhook sink: the label is dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(poller_webhook_\w+)\{[^}]*\} (\S+)$", line)
        if m:
            out[m[1]] = float(m[2])
    return out


class Daemon:
    """One ``poller run`` process: its JSON log read incrementally, its /metrics, its VmRSS."""

    def __init__(self, name: str, directory: Path, config: str, clock: Clock) -> None:
        self.name = name
        self.clock = clock
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "poller.toml"
        self.config_path.write_text(config, "utf-8")
        self.log_path = directory / "daemon.log"
        self._log_file = self.log_path.open("wb")
        self.started = clock.now()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "poller", "run", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            cwd=directory,
        )
        CHILDREN.add(self.proc)
        self.events: list[dict[str, Any]] = []
        self._offset = 0
        self.metrics_url: str | None = None
        self.last_metrics: dict[str, float] = {}
        self.killed_at: float | None = None
        self.exit_code: int | None = None

    def read_logs(self) -> list[dict[str, Any]]:
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            try:
                event["_wall"] = datetime.fromisoformat(event["ts"]).timestamp()
            except (KeyError, ValueError, TypeError):
                event["_wall"] = time.time()
            event["_t"] = self.clock.from_wall(event["_wall"])
            self.events.append(event)
            if event.get("event") == "metrics listening":
                self.metrics_url = event["url"]
        return self.events

    def sweeps(self) -> int:
        return sum(e.get("event") == "sweep" for e in self.read_logs())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def metrics(self) -> dict[str, float] | None:
        if self.metrics_url is None:
            self.read_logs()
        if self.metrics_url is None or not self.alive():
            return None
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
                values = parse_metrics(resp.read().decode())
        except (OSError, urllib.error.URLError):
            return None
        if values:
            self.last_metrics = values
        return values or None

    def rss_kb(self) -> int | None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        return int(m[1]) if m else None

    def kill(self) -> None:
        self.killed_at = self.clock.now()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.exit_code = self.proc.returncode
        self._log_file.close()
        self.read_logs()

    def terminate(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            self.exit_code = None
        self._log_file.close()
        self.read_logs()
        return self.exit_code

    def webhook_events(self) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("logger") == "poller.sinks" or "webhook" in str(e.get("event", ""))
        ]


def daemon_config(
    emu: EmulatorProcess, workdir: Path, port: int, static: list[str], churn: bool, max_batch: int
) -> str:
    text = emu.config_toml()
    text += (
        f'\n[daemon]\ninterval_s = {INTERVAL_S}\nemit = "changes"\n'
        f"state_dir = {json.dumps(str(workdir / 'state'))}\n"
        '\n[metrics]\nlisten = "127.0.0.1:0"\n'
        f'\n[[sinks]]\nkind = "file"\npath = {json.dumps(str(workdir / "changes.jsonl"))}\n'
        'types = ["change"]\n'
        f'\n[[sinks]]\nkind = "webhook"\nurl = "http://127.0.0.1:{port}/hook"\n'
        f'secret = "{SECRET}"\nmax_batch = {max_batch}\n'
        f'\n[[targets]]\napp_id = "{APP}"\ngroup_id = "{STATIC}"\nuids = {json.dumps(static)}\n'
    )
    if churn:
        text += (
            f'\n[[targets]]\napp_id = "{APP}"\ngroup_id = "{CHURN}"\n'
            f"uids_file = {json.dumps(str(workdir / 'churn.txt'))}\n"
        )
    return text


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    phase: str
    daemon: str
    rss_kb: int | None
    metrics: dict[str, float] | None


@dataclass
class Plan:
    duration_s: float
    down_s: float
    down_at: float
    kill_at: float
    up_at: float
    drain_s: float
    sample_s: float
    flips_per_event: int
    max_batch: int
    static_uids: int
    churn_uids: int
    churn_per_s: float
    seed: int
    rss_slack_mb: float

    def phase(self, t: float) -> str:
        if t < self.down_at:
            return "before outage"
        if t < self.up_at:
            return "receiver down"
        return "receiver back"


@dataclass
class Outcome:
    plan: Plan
    flips: list[tuple[float, str, bool]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    daemons: list[Daemon] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    accepted: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    bad_signatures: int = 0
    malformed: int = 0
    file_changes: list[dict[str, Any]] = field(default_factory=list)
    spooled_at_kill: dict[str, float] | None = None
    kill_after_write_s: float | None = None  # the kill, after the file grew (mid-sweep)
    down_at_actual: float | None = None
    up_at_actual: float | None = None
    reloaded_at: float | None = None
    drained_at: float | None = None  # spool empty and every file key received
    drain_waited_s: float | None = None
    final_exit: int | None = None
    wall_s: float = 0.0
    error: str | None = None


class Run:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.clock = Clock()
        self.out = Outcome(plan)
        self.rng = random.Random(plan.seed)
        self.static = [f"vip-{i:03d}" for i in range(plan.static_uids)]
        self.online = dict.fromkeys(self.static, True)
        self.daemon: Daemon | None = None
        self.next_sample = 0.0
        self.last_flip = 0.0
        self.flipping = True
        self.killed = False
        self.stopping = False
        self.emu: EmulatorProcess | None = None
        self.receiver: Receiver | None = None

    # the scheduler: flips, the outage, the kill, samples; called by every wait

    def step(self) -> None:
        plan, now = self.plan, self.clock.now()
        assert self.daemon is not None and self.receiver is not None
        if not self.daemon.alive() and not self.stopping:
            raise RuntimeError(
                f"daemon {self.daemon.name} exited {self.daemon.proc.returncode}:"
                f" {self.daemon.log_path.read_text('utf-8', 'replace')[-2000:]}"
            )
        flip_every = FLIP_EVERY_INTERVALS * INTERVAL_S
        if self.flipping and now >= self.last_flip + flip_every:
            if now + flip_every <= plan.duration_s:
                self.flip()
            else:
                self.flipping = False
        if self.receiver.up and self.out.down_at_actual is None and now >= plan.down_at:
            self.receiver.stop()
            self.out.down_at_actual = self.clock.now()
            log(f"[{now:6.1f}s] receiver down (port {self.receiver.port} closed)")
        if not self.killed and now >= plan.kill_at:
            self.kill_and_restart()
        if not self.receiver.up and now >= plan.up_at and self.out.up_at_actual is None:
            self.receiver.start()
            self.out.up_at_actual = self.clock.now()
            log(f"[{now:6.1f}s] receiver back on port {self.receiver.port}")
        if now >= self.next_sample:
            self.sample()
            self.next_sample = now + plan.sample_s

    def flip(self) -> None:
        assert self.emu is not None
        for uid in self.rng.sample(self.static, self.plan.flips_per_event):
            online = not self.online[uid]
            if online:
                self.emu.change_members(APP, STATIC, join=[uid])
            else:
                self.emu.change_members(APP, STATIC, offline=[uid])
            self.online[uid] = online
            self.out.flips.append((self.clock.now(), uid, online))
        self.last_flip = self.clock.now()

    def sample(self) -> None:
        assert self.daemon is not None
        t = self.clock.now()
        rss = self.daemon.rss_kb()
        metrics = self.daemon.metrics()
        self.out.samples.append(Sample(t, self.plan.phase(t), self.daemon.name, rss, metrics))

    def kill_and_restart(self) -> None:
        assert self.daemon is not None
        self.killed = True
        self.sample()
        # The spool must hold undelivered batches at the kill (bounded wait: the outage goes on).
        deadline = time.monotonic() + 5 * INTERVAL_S
        metrics = self.daemon.metrics()
        while (metrics is None or metrics.get("poller_webhook_spooled_batches", 0) == 0) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
            metrics = self.daemon.metrics()
        self.out.spooled_at_kill = metrics
        old = self.daemon
        # Kill mid-sweep: as soon as the records file grows (the file sink writes each batch of
        # change records at once, before the webhook spools it), the sweep is under way and its
        # state not yet saved. Bounded: after 3 intervals without growth, kill anyway.
        path = self.workdir / "changes.jsonl"
        size = path.stat().st_size if path.exists() else 0
        deadline = time.monotonic() + 3 * INTERVAL_S
        grew_at = None
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_size != size:
                grew_at = time.monotonic()
                break
            time.sleep(0.001)
        self.stopping = True
        old.kill()
        if grew_at is not None:
            self.out.kill_after_write_s = time.monotonic() - grew_at
        log(
            f"[{self.clock.now():6.1f}s] daemon {old.name} killed (SIGKILL), spool at the kill:"
            f" {metrics and metrics.get('poller_webhook_spooled_batches')} batches; restarting"
        )
        self.daemon = self.start_daemon("restarted", churn=True)
        self.stopping = False

    def start_daemon(self, name: str, churn: bool) -> Daemon:
        assert self.emu is not None and self.receiver is not None
        config = daemon_config(
            self.emu, self.workdir, self.receiver.port, self.static, churn, self.plan.max_batch
        )
        daemon = Daemon(name, self.workdir / name, config, self.clock)
        self.out.daemons.append(daemon)
        return daemon

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Run the scheduler until ``predicate()``; the seconds waited. Raises at ``timeout``."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            self.step()
            if predicate():
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.1)

    def file_keys(self) -> set[str]:
        return {change_key(r) for r in read_changes(self.workdir / "changes.jsonl", partial=True)}

    def execute(self) -> Outcome:
        plan, out = self.plan, self.out
        wall = time.monotonic()
        (self.workdir / "churn.txt").write_text(
            "".join(f"user-{i:06d}\n" for i in range(1, plan.churn_uids + 1))
        )
        emu_args = ["--seed", str(plan.seed), "--churn-per-s", str(plan.churn_per_s)]
        emu_args += ["--group", f"{APP}/{CHURN}:{plan.churn_uids}"]
        emu_log = self.workdir / "emulator.log"
        with EmulatorProcess(*emu_args, stderr_path=emu_log) as emu:
            assert emu.process is not None
            CHILDREN.add(emu.process)
            self.emu = emu
            emu.change_members(APP, STATIC, join=self.static)
            self.receiver = Receiver(self.clock, plan.seed)
            try:
                self.receiver.start()
                self.daemon = self.start_daemon("first", churn=True)
                daemon = self.daemon
                deadline = time.monotonic() + 60
                while daemon.sweeps() < 1:  # the first sweep learns the state silently
                    if not daemon.alive() or time.monotonic() > deadline:
                        raise RuntimeError(f"daemon did not sweep: {daemon.log_path.read_text()}")
                    time.sleep(0.1)
                self.clock.reset()
                for d in out.daemons:  # re-base the log times on the new origin
                    for e in d.events:
                        e["_t"] = self.clock.from_wall(e["_wall"])
                daemon.started = 0.0
                log(f"[   0.0s] first sweep done; running {plan.duration_s:g} s")
                self.wait_until(lambda: self.clock.now() >= plan.duration_s, plan.duration_s + 5,
                                "the end of the run")  # fmt: skip
                self.finish()
            finally:
                self.receiver.close()
                out.requests, out.accepted = self.receiver.snapshot()
                out.bad_signatures = self.receiver.bad_signatures
                out.malformed = self.receiver.malformed
                for d in out.daemons:
                    if d.alive():
                        d.terminate(10)
        out.file_changes = read_changes(self.workdir / "changes.jsonl", partial=False)
        with (self.workdir / "requests.jsonl").open("wb") as f:  # for --keep-tmp
            for r in out.requests:
                f.write(orjson.dumps(r) + b"\n")
        out.wall_s = time.monotonic() - wall
        return out

    def finish(self) -> None:
        """Stop the churn (SIGHUP without its target), wait for the drain, stop the daemon."""
        plan, out = self.plan, self.out
        assert self.daemon is not None and self.receiver is not None and self.emu is not None
        self.flipping = False
        daemon = self.daemon
        self.wait_until(lambda: daemon.metrics_url is not None, 30, "the restarted daemon's URL")
        config = daemon_config(
            self.emu, self.workdir, self.receiver.port, self.static, False, plan.max_batch
        )
        daemon.config_path.write_text(config, "utf-8")
        daemon.proc.send_signal(signal.SIGHUP)
        log(f"[{self.clock.now():6.1f}s] flips stopped; churning target removed (SIGHUP)")

        def reloaded() -> bool:
            return any(e.get("event") == "reloaded" for e in daemon.read_logs())

        self.wait_until(reloaded, 10 * INTERVAL_S + 10, "the reload")
        out.reloaded_at = self.clock.now()
        after = daemon.sweeps() + 2  # the last flip is seen, the last records are written
        self.wait_until(lambda: daemon.sweeps() >= after, 10 * INTERVAL_S + 10, "two sweeps")

        def drained() -> bool:
            metrics = daemon.metrics()
            if metrics is None or metrics.get("poller_webhook_spooled_batches", 1) != 0:
                return False
            assert self.receiver is not None
            return self.file_keys() <= self.receiver.keys()

        try:
            out.drain_waited_s = self.wait_until(drained, plan.drain_s, "the spool to drain")
            out.drained_at = self.clock.now()
            log(f"[{out.drained_at:6.1f}s] spool drained, every change received")
        except TimeoutError as exc:
            log(f"[{self.clock.now():6.1f}s] {exc}")
        self.sample()
        self.stopping = True
        out.final_exit = daemon.terminate(30)
        log(f"[{self.clock.now():6.1f}s] restarted daemon stopped (SIGTERM): exit {out.final_exit}")


def read_changes(path: Path, *, partial: bool) -> list[dict[str, Any]]:
    """The change records of the file sink; with ``partial`` only whole lines (still written).
    A line cut short by the kill and cut off at the restart is gone from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if partial:
        data = data[: data.rfind(b"\n") + 1]
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if record.get("type") == "change":
            out.append(record)
    return out


def change_key(r: dict[str, Any]) -> str:
    return f"change:{r['api']}/{r['app_id']}/{r['group_id'] or ''}/{r['uid']}:{r['version']}"


# -- the report ------------------------------------------------------------------------------


def table1(header: str, rows: list[tuple[Any, ...]]) -> str:
    """This report's tables: floats with one decimal."""
    return table(header, rows, decimals=1)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def mib(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f} MiB"


@dataclass
class Analysis:
    checks: list[tuple[str, bool, str]]
    figures: list[tuple[str, Any]]
    static_rows: list[tuple[Any, ...]]
    memory_rows: list[tuple[Any, ...]]


def analyse(out: Outcome) -> Analysis:
    plan = out.plan
    checks: list[tuple[str, bool, str]] = []
    figures: list[tuple[str, Any]] = []

    # 1. every change record of the file reached the receiver
    file_keys = [change_key(r) for r in out.file_changes]
    received: dict[str, tuple[float, dict[str, Any]]] = {}
    copies: collections.Counter[str] = collections.Counter()
    for t, r in out.accepted:
        if r.get("type") != "change":
            continue
        key = r["idempotency_key"]
        copies[key] += 1
        received.setdefault(key, (t, r))
    missing = sorted(set(file_keys) - received.keys())
    checks.append((
        "every change record in the file reached the receiver (by idempotency key)",
        not missing and bool(file_keys),
        f"{len(set(file_keys)):,} keys in the file ({len(file_keys):,} records), "
        f"{len(missing)} missing" + (f": {', '.join(missing[:5])}" if missing else ""),
    ))  # fmt: skip
    mismatched = [k for k, (_, r) in received.items() if change_key(r) != k]
    if mismatched:
        checks.append(("idempotency keys match the records' fields", False, str(mismatched[:3])))

    # 2. the static group holds exactly the flips, in order per UID
    expected: dict[str, list[bool]] = collections.defaultdict(list)
    for _, uid, online in out.flips:
        expected[uid].append(online)
    got: dict[str, list[tuple[int, bool]]] = collections.defaultdict(list)
    for _, r in sorted(received.values(), key=lambda x: x[0]):
        if r["group_id"] == STATIC:
            got[r["uid"]].append((r["version"], r["online"]))
    wrong = []
    for uid in sorted(set(expected) | set(got)):
        versions = [v for v, _ in got[uid]]
        onlines = [o for _, o in got[uid]]
        if onlines != expected[uid] or versions != sorted(set(versions)):
            wrong.append(uid)
    n_static = sum(len(v) for v in got.values())
    checks.append((
        "static group, de-duplicated: exactly the flips made, in order per UID",
        not wrong and n_static == len(out.flips) and bool(out.flips),
        f"{len(out.flips)} flips of {len(expected)} UIDs; {n_static} distinct change records"
        f" received; {len(wrong)} UIDs differ" + (f": {', '.join(wrong[:5])}" if wrong else ""),
    ))  # fmt: skip
    static_rows = []
    for uid in sorted(expected, key=lambda u: -len(expected[u]))[:5]:
        static_rows.append((
            uid,
            " ".join("on" if o else "off" for o in expected[uid]),
            " ".join(f"v{v}:{'on' if o else 'off'}" for v, o in got[uid]),
        ))  # fmt: skip

    # churn group: order per UID (information)
    churn_order_bad = 0
    churn_uids = 0
    per_uid: dict[str, list[int]] = collections.defaultdict(list)
    for _, r in sorted(received.values(), key=lambda x: x[0]):
        if r["group_id"] == CHURN:
            per_uid[r["uid"]].append(r["version"])
    for versions in per_uid.values():
        churn_uids += 1
        churn_order_bad += versions != sorted(versions)

    # 3. signatures
    checks.append(("bad signatures", out.bad_signatures == 0, str(out.bad_signatures)))

    # 4. memory while the receiver is down
    before = [s.rss_kb for s in out.samples if s.phase == "before outage" and s.rss_kb]
    down = [s for s in out.samples if s.phase == "receiver down" and s.rss_kb]
    slack_kb = plan.rss_slack_mb * 1024
    memory_rows: list[tuple[Any, ...]] = []
    for phase in ("before outage", "receiver down", "receiver back"):
        for name in ("first", "restarted"):
            rows = [s for s in out.samples if s.phase == phase and s.daemon == name and s.rss_kb]
            if not rows:
                continue
            rss = [s.rss_kb or 0 for s in rows]
            spooled = [(s.metrics or {}).get("poller_webhook_spooled_bytes", 0) for s in rows]
            batches = [(s.metrics or {}).get("poller_webhook_spooled_batches", 0) for s in rows]
            memory_rows.append((phase, name, len(rows), mib(min(rss)), mib(max(rss)),
                                mib(rss[-1]), f"{max(spooled) / 1024:,.1f} KiB",
                                int(max(batches))))  # fmt: skip
    if before and down:
        top = max(s.rss_kb or 0 for s in down)
        checks.append((
            f"RSS while the receiver is down ≤ max before the outage + {plan.rss_slack_mb:g} MiB",
            top <= max(before) + slack_kb,
            f"max {mib(top)} while down (both processes) vs {mib(max(before))} before",
        ))  # fmt: skip
    else:
        checks.append(("RSS sampled before and during the outage", False, "no samples"))

    # 5. the kill, the drain, nothing lost, a clean stop
    at_kill = (out.spooled_at_kill or {}).get("poller_webhook_spooled_batches", 0)
    checks.append((
        "the spool held undelivered batches when the daemon was killed",
        at_kill > 0,
        f"{int(at_kill)} batches, "
        f"{(out.spooled_at_kill or {}).get('poller_webhook_spooled_bytes', 0) / 1024:,.1f} KiB",
    ))  # fmt: skip
    checks.append((
        f"spool drained and every file record received within {plan.drain_s:g} s of the end",
        out.drained_at is not None,
        "-" if out.drain_waited_s is None else f"after {out.drain_waited_s:.1f} s",
    ))  # fmt: skip
    bad_counters = {}
    for d in out.daemons:
        for name in ("rejected_records", "lost_records", "dropped_batches"):
            value = d.last_metrics.get(f"poller_webhook_{name}_total", 0)
            if value:
                bad_counters[f"{d.name}.{name}"] = value
    checks.append((
        "no record rejected, lost or dropped (last metrics of each daemon)",
        not bad_counters,
        ", ".join(f"{k} {v:g}" for k, v in bad_counters.items()) or "0",
    ))  # fmt: skip
    checks.append(("restarted daemon exits 0 on SIGTERM", out.final_exit == 0, str(out.final_exit)))

    # figures
    statuses = collections.Counter(r.status for r in out.requests)
    duplicates = sum(n - 1 for n in copies.values())
    dup_keys = sum(n > 1 for n in copies.values())
    file_by_group = collections.Counter(r["group_id"] for r in out.file_changes)
    file_dups = len(file_keys) - len(set(file_keys))
    extra = len(received.keys() - set(file_keys))
    first_after_up = next(
        (r.t for r in out.requests if out.up_at_actual and r.t >= out.up_at_actual
         and r.status == 200), None)  # fmt: skip
    drained_after_up = next(
        (s.t for s in out.samples if out.up_at_actual and s.t >= out.up_at_actual and s.metrics
         and s.metrics.get("poller_webhook_spooled_batches") == 0), None)  # fmt: skip
    restarted = next((d for d in out.daemons if d.name == "restarted"), None)
    first = out.daemons[0] if out.daemons else None
    restart_sweep = None
    if restarted is not None:
        restart_sweep = next((e["_t"] for e in restarted.events if e.get("event") == "sweep"), None)
    figures += [
        ("requests received", len(out.requests)),
        ("answered 200 / 500 / 429 (Retry-After: 1)",
         f"{statuses[200]:,} / {statuses[500]:,} / {statuses[429]:,}"),
        ("answered 401 (bad signature) / 400 (malformed)", f"{statuses[401]} / {statuses[400]}"),
        ("records received in 2xx requests (all types)", len(out.accepted)),
        ("change records received / distinct keys",
         f"{sum(copies.values()):,} / {len(copies):,}"),
        ("duplicates received (copies beyond the first) / keys received more than once",
         f"{duplicates:,} / {dup_keys:,}"),
        ("keys received that the file lacks", extra),
        ("change records in the file: static / churn", f"{file_by_group[STATIC]:,} / "
         f"{file_by_group[CHURN]:,}"),
        ("records in the file with a key seen before in it (re-decided after the kill)",
         file_dups),
        ("churn group: UIDs whose first receipts are out of version order",
         f"{churn_order_bad} of {churn_uids:,}"),
        ("flips made (static group)", len(out.flips)),
        ("change records written per second (file records / run length)",
         round(len(out.file_changes) / plan.duration_s, 1)),
    ]  # fmt: skip
    for d in out.daemons:
        m = d.last_metrics
        figures.append((
            f"daemon {d.name}: delivered records / retries (last /metrics)",
            f"{m.get('poller_webhook_delivered_records_total', 0):,.0f} / "
            f"{m.get('poller_webhook_retries_total', 0):,.0f}",
        ))  # fmt: skip
    ok_requests = [r for r in out.requests if r.status == 200]
    figures.append((
        "records per 2xx request: mean / max",
        "-" if not ok_requests else
        f"{sum(r.records for r in ok_requests) / len(ok_requests):.2f} / "
        f"{max(r.records for r in ok_requests)}",
    ))  # fmt: skip
    if first_after_up is not None and drained_after_up is not None:
        span = [r for r in out.requests if first_after_up <= r.t <= drained_after_up]
        seconds = max(1e-9, drained_after_up - first_after_up)
        figures.append((
            "while draining after the outage: requests/s, 2xx requests/s, records/s delivered",
            f"{len(span) / seconds:.1f}, {sum(r.status == 200 for r in span) / seconds:.1f}, "
            f"{sum(r.records for r in span if r.status == 200) / seconds:.1f}",
        ))  # fmt: skip
    before_up = [s for s in out.samples if s.phase == "before outage" and s.metrics]
    if before_up:
        m0, m1 = before_up[0].metrics or {}, before_up[-1].metrics or {}
        figures.append((
            "spooled batches with the receiver up, first / last sample before the outage",
            f"{m0.get('poller_webhook_spooled_batches', 0):g} / "
            f"{m1.get('poller_webhook_spooled_batches', 0):g}",
        ))  # fmt: skip
    oldest = [(s.metrics or {}).get("poller_webhook_oldest_undelivered_seconds", 0)
              for s in out.samples]  # fmt: skip
    figures.append(("max oldest undelivered batch age, s (sampled)", max(oldest, default=None)))
    figures += [
        ("receiver down, s (actual)", None if out.down_at_actual is None or out.up_at_actual
         is None else round(out.up_at_actual - out.down_at_actual, 1)),
        ("daemon killed at, s", None if first is None else first.killed_at),
        ("the kill: ms after the records file grew (mid-sweep) / median sweep, ms",
         "no growth seen" if out.kill_after_write_s is None else
         f"{1000 * out.kill_after_write_s:.1f} / {median_sweep_ms(first)}"),
        ("longest gap between requests outside the outage, s (the answers before it)",
         longest_gap(out)),
        ("restarted daemon: first sweep, s after the kill",
         None if restart_sweep is None or first is None or first.killed_at is None
         else round(restart_sweep - first.killed_at, 1)),
        ("first 2xx after the receiver came back, s later",
         None if first_after_up is None or out.up_at_actual is None
         else round(first_after_up - out.up_at_actual, 1)),
        ("spool first empty after the receiver came back, s later (sampled)",
         None if drained_after_up is None or out.up_at_actual is None
         else round(drained_after_up - out.up_at_actual, 1)),
    ]  # fmt: skip
    return Analysis(checks, figures, static_rows, memory_rows)


def median_sweep_ms(daemon: Daemon | None) -> str:
    if daemon is None:
        return "-"
    durations = [float(e["duration_s"]) for e in daemon.events if e.get("event") == "sweep"]
    return f"{1000 * statistics.median(durations):.0f}" if durations else "-"


def longest_gap(out: Outcome) -> str:
    """The longest pause between two requests, leaving out the outage (from the receiver going
    down to the first request after it came back), with the answers just before it."""
    best: tuple[float, int] | None = None
    reqs = out.requests
    down = out.down_at_actual if out.down_at_actual is not None else float("inf")
    up = out.up_at_actual if out.up_at_actual is not None else float("inf")
    for i in range(1, len(reqs)):
        a, b = reqs[i - 1].t, reqs[i].t
        if a <= up and b >= down:
            continue  # spans the outage
        if best is None or b - a > best[0]:
            best = (b - a, i)
    if best is None:
        return "-"
    gap, i = best
    side = reqs[i - 1].t >= up
    before = " ".join(str(r.status) for r in reqs[max(0, i - 6) : i] if (r.t >= up) == side)
    return f"{gap:.1f} at {reqs[i - 1].t:.1f} s (answers before it: {before})"


def log_section(out: Outcome) -> str:
    lines = ["## Webhook log lines\n"]
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for d in out.daemons:
        for e in d.webhook_events():
            text = re.sub(r"\d+(\.\d+)?", "N", str(e.get("event", "")))
            counts[(d.name, str(e.get("level", "")), text)] += 1
    lines.append(
        "Every line of the `poller.sinks` logger or naming the webhook, numbers replaced by N:\n"
    )
    lines.append(table1("daemon|level|line|count", [(*k, n) for k, n in sorted(counts.items())]))
    notable = []
    for d in out.daemons:
        for e in d.webhook_events():
            text = str(e.get("event", ""))
            if not re.search(r"\(HTTP (500|429)\); records wait|after [0-4]\.\d s;", text):
                notable.append((round(e["_t"], 1), d.name, e.get("level"), text))
    lines.append(
        "Every line but the routine pair a single 500 or 429 causes (`delivery failing (HTTP"
        " 500|429)` and `delivering again after` less than 5 s):\n"
    )
    notable.sort(key=lambda x: x[0])
    if len(notable) > 40:
        lines.append(f"({len(notable)} lines; the first 40)\n")
    lines.append(table1("s|daemon|level|line", notable[:40]))
    levels: collections.Counter[tuple[str, str]] = collections.Counter()
    for d in out.daemons:
        for e in d.events:
            levels[(d.name, str(e.get("level")))] += 1
    lines.append("All log lines by level: " + ", ".join(
        f"{name} {level} {n}" for (name, level), n in sorted(levels.items())) + ".\n")  # fmt: skip
    return "\n".join(lines)


def timeline_section(out: Outcome) -> str:
    rows = []
    last_t = -1e9
    for i, s in enumerate(out.samples):
        boundary = i + 1 < len(out.samples) and out.samples[i + 1].daemon != s.daemon
        if s.t - last_t < 9.5 and not boundary and i != len(out.samples) - 1:
            continue
        last_t = s.t
        m = s.metrics or {}
        rows.append((
            f"{s.t:.1f}", s.phase, s.daemon, mib(s.rss_kb),
            cell(m.get("poller_webhook_spooled_batches"), 1),
            "-" if not m else f"{m.get('poller_webhook_spooled_bytes', 0) / 1024:,.1f}",
            cell(m.get("poller_webhook_oldest_undelivered_seconds"), 1),
            cell(m.get("poller_webhook_delivered_records_total"), 1),
            cell(m.get("poller_webhook_retries_total"), 1),
        ))  # fmt: skip
    return "## Timeline (a sample every ~10 s; `-`: no /metrics yet)\n\n" + table1(
        "s|phase|daemon|VmRSS|spooled batches|spooled KiB|oldest undelivered s|delivered records"
        "|retries",
        rows,
    )


def report(out: Outcome, meta: list[tuple[str, Any]]) -> tuple[str, bool]:
    a = analyse(out)
    ok = all(passed for _, passed, _ in a.checks) and out.error is None
    parts = ["# Webhook sink: receiver failures, an outage and a kill -9 (issue 16)\n"]
    parts.append(table1("item|value", meta))
    if out.error:
        parts.append(f"**The run was cut short:** {out.error}\n")
    parts.append("## Checks\n")
    parts.append(table1("check|value|verdict", [(n, v, verdict(p)) for n, p, v in a.checks]))
    parts.append("## Figures\n")
    parts.append(table1("figure|value", a.figures))
    parts.append("## Memory and spool by phase (samples every few seconds)\n")
    parts.append(
        table1(
            "phase|daemon|samples|VmRSS min|VmRSS max|VmRSS last|max spooled|max spooled batches",
            a.memory_rows,
        )
    )
    parts.append(timeline_section(out))
    parts.append("## Static group: the UIDs flipped most (flips made vs first receipts)\n")
    parts.append(table1("uid|flips made|received, de-duplicated (version:online)", a.static_rows))
    parts.append(log_section(out))
    return "\n".join(parts), ok


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=300.0, help="run length (300)")
    parser.add_argument("--down-s", type=float, default=60.0, help="receiver outage (60)")
    parser.add_argument("--quick", action="store_true", help="90 s run, 20 s outage")
    parser.add_argument("--drain-s", type=float, default=60.0, help="drain wait at the end (60)")
    parser.add_argument("--static-uids", type=int, default=50, help="static group size (50)")
    parser.add_argument("--churn-uids", type=int, default=1000, help="churning group size (1000)")
    parser.add_argument("--churn-per-s", type=float, default=10.0, help="churn flips/s (10)")
    parser.add_argument("--flips-per-event", type=int, default=3, help="UIDs per flip event (3)")
    parser.add_argument("--max-batch", type=int, default=100, help="webhook max_batch (100)")
    parser.add_argument("--sample-s", type=float, default=2.0, help="RSS/metrics period (2)")
    parser.add_argument("--rss-slack-mb", type=float, default=25.0, help="RSS bound slack (25)")
    parser.add_argument("--seed", type=int, default=16, help="seed of flips and answers (16)")
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results" / "webhook.md",
        help="Markdown report (default benchmarks/results/webhook.md)",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration_s, args.down_s = 90.0, 20.0
    if not 0 < args.down_s < args.duration_s or args.static_uids < args.flips_per_event:
        parser.error("need 0 < --down-s < --duration-s and --static-uids >= --flips-per-event")
    down_at = max(3 * INTERVAL_S, 0.4 * (args.duration_s - args.down_s))
    plan = Plan(
        duration_s=args.duration_s,
        down_s=args.down_s,
        down_at=down_at,
        kill_at=down_at + args.down_s / 2,
        up_at=down_at + args.down_s,
        drain_s=args.drain_s,
        sample_s=args.sample_s,
        flips_per_event=args.flips_per_event,
        max_batch=args.max_batch,
        static_uids=args.static_uids,
        churn_uids=args.churn_uids,
        churn_per_s=args.churn_per_s,
        seed=args.seed,
        rss_slack_mb=args.rss_slack_mb,
    )

    stop_children_on_exit()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with scratch_dir("poller-webhook-", keep=args.keep_tmp) as workdir:
        run = Run(plan, workdir)
        try:
            out = run.execute()
        except (RuntimeError, TimeoutError, OSError) as exc:
            out = run.out
            out.error = f"{type(exc).__name__}: {exc}"
            log(f"run cut short: {out.error}")
    meta: list[tuple[str, Any]] = [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("machine", f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"),
        ("python", platform.python_version()),
        ("mode", "quick" if args.quick else "full"),
        ("run", f"{plan.duration_s:g} s from the daemon's first sweep; interval_s {INTERVAL_S}"),
        ("emulator", f"--qps 100; {APP}/{STATIC}: {plan.static_uids} UIDs (no churn); "
         f"{APP}/{CHURN}: {plan.churn_uids:,} UIDs, --churn-per-s {plan.churn_per_s:g}"),
        ("flips", f"{plan.flips_per_event} static UIDs every "
         f"{FLIP_EVERY_INTERVALS * INTERVAL_S:g} s (after the previous flip)"),
        ("webhook sink", f"max_batch {plan.max_batch}; file sink types = [\"change\"]"),
        ("receiver", f"{FAIL_500:.0%} HTTP 500, {FAIL_429:.0%} HTTP 429 (Retry-After: "
         f"{RETRY_AFTER}), seed {plan.seed}; down {plan.down_at:g}-{plan.up_at:g} s"),
        ("kill -9", f"at {plan.kill_at:g} s, restarted at once on the same state_dir"),
        ("benchmark wall time", f"{out.wall_s:.0f} s"),
        ("load average (1, 5, 15 min)", f"before {load_before}; after "
         + " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]  # fmt: skip
    text, ok = report(out, meta)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, "utf-8")
    log(f"wrote {args.out}; {'all checks pass' if ok else 'a check FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
