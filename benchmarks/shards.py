"""Shard handover in a fleet of ``poller run`` daemons: coverage per aligned sweep.

::

    python benchmarks/shards.py [--members 2 3 4] [--scenarios steady sigterm sigkill join]
    python benchmarks/shards.py --quick     # 2 members, the SIGTERM scenario only (< 1 min)
    python benchmarks/shards.py --quick --scenarios sigkill   # or another single scenario

One emulator (``--qps 100``, group ``demo-app/demo-group:UIDS``) for the whole benchmark; for
each fleet size M and scenario a fresh ``redis-server`` (unix socket, no persistence) and fresh
``poller run`` daemons ``m1``, ``m2``, ... (``tests/daemons.py``), each with its own config:
``[daemon] interval_s``, ``emit = "all"``, a file sink; ``[cluster]`` on that Redis with one
``account``, ``shards`` and ``lease_ttl_s``; one target whose ``uids_file`` holds ``--uids``
UIDs. Every polled UID gives one ``presence`` record carrying the aligned sweep number, which
is the same on every member; the benchmark counts, per sweep number, how many times each UID
was polled over all members.

Scenarios (M = the fleet size):

* ``steady``: M members; ``--steady-sweeps`` sweeps after two warm-up sweeps.
* ``sigterm``: M members; after two warm-up and ``--pre-sweeps`` sweeps, ``m1`` gets SIGTERM
  in the middle of an aligned interval (it hands its leases over and drains).
* ``sigkill``: the same with SIGKILL (its leases expire after ``lease_ttl_s``).
* ``join``: M - 1 members; after the same warm-up, ``mM`` is started (the fleet grows to M).

After the event the fleet runs until ``POST_COVERED`` sweeps after it covered every UID (or a
bound), then every member gets SIGTERM.

Which sweep numbers count, from the records and logs only (no wall-clock guesses):

* *start-up*: numbers below the first sweep of the last member to start (its first ``sweep``
  log event); then two *warm-up* sweeps (leases still moving to their rendezvous owners).
* *steady*: from there up to the event; the event's sweep is the aligned index of the signal
  (or of the joiner's start) on Redis's clock (``TIME`` read at the start, same host).
* a stopped member's *last sweep* is the highest sweep number in its records; a joiner's
  *first sweep* the lowest. A member is *live* for the numbers between its first and last
  sweep; a live member without a record or log event for a number *skipped* it (an overrun:
  "the sweep took longer than the interval").
* *stopping*: numbers after the last sweep every remaining member had logged before the final
  SIGTERM; they are shown but not counted.

Figures: per steady sweep the UIDs polled 0, 1 and more than once (expected: all exactly once);
around a handover the sweeps with a gap (some UID polled by nobody), the duplicate polls (a UID
polled more than once in one sweep; each extra poll counts), and the handover time: from the
signal to the start of the first sweep (after the stopped member's last) in which the remaining
members polled every UID, and to that sweep's last record (``polled_at``). For SIGKILL the
target is a handover time at most ``lease_ttl_s + interval_s``. Also the emulator's
``max_requests_in_any_1s_window`` and ``throttled_total`` per scenario (reset before each) and
the count of each lease/handover log line. Prints a Markdown report, writes it to ``--out``;
exit status 1 when an expectation is missed.

Capacity: the fleet shares one budget of 100 requests/s x 20 UIDs = 2,000 UIDs/s, so a sweep
of the default 3,000 UIDs takes at least 1.5 s of the 2 s interval. With more UIDs than the
interval holds (e.g. ``--uids 6000``) every member overruns and skips to the next aligned start,
and every other sweep number is run by nobody (reported as *skipped*; the header says so).

Every wait is bounded (start-up, sweeps, stops); every child is stopped on any exit (SIGTERM
and SIGHUP included). Everything binds and connects to 127.0.0.1 or unix sockets.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from poller.emulator.process import EmulatorProcess

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # ``python benchmarks/shards.py`` puts only benchmarks/ on the path
    sys.path.insert(0, str(REPO))

from harness import (  # noqa: E402
    CHILDREN,
    busy_share,
    cell,
    core_times,
    log,
    scratch_dir,
    stop_children_on_exit,
    table,
)

from tests.daemons import DaemonProcess, base_config, target  # noqa: E402
from tests.redisserver import RedisServer, find_redis_server  # noqa: E402

APP_ID, GROUP_ID = "demo-app", "demo-group"
ACCOUNT = "acct"
QPS_LIMIT = 100
IDS_PER_REQUEST = 20
SCENARIOS = ("steady", "sigterm", "sigkill", "join")
WARMUP_SWEEPS = 2
#: After the event, stop once this many sweeps covered every UID.
POST_COVERED = 3
#: Start-up of one ``poller run`` (interpreter, imports, first lease tick) on a busy machine.
STARTUP_S = 60.0
#: SIGTERM: drain_timeout_s (10 s by default) plus margin.
STOP_S = 30.0


def _parse_ts(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


# -- one daemon ------------------------------------------------------------------------------


class Feed:
    """A JSONL file read incrementally, whole lines only (the writer may be mid-line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in data[:end].split(b"\n"):
            if line.startswith(b"{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    out.append(orjson.loads(line))
        return out


class Member:
    """One ``poller run`` daemon and what it wrote so far."""

    def __init__(self, name: str, workdir: Path, config: str) -> None:
        self.name = name
        self.spawned_at = time.time()
        self.daemon = DaemonProcess(workdir / name, config)
        CHILDREN.add(self.daemon.proc)
        self._records = Feed(self.daemon.out)
        self._logs = Feed(self.daemon.err_path)
        self.events: list[dict[str, Any]] = []
        self.logged: set[int] = set()  # sweep numbers of its "sweep" log events
        self.uids: dict[int, list[str]] = defaultdict(list)  # presence UIDs per sweep
        self.errors: Counter[int] = Counter()  # error records per sweep
        self.last_ms: dict[int, int] = {}  # latest polled_at per sweep
        self.signal: str | None = None
        self.signalled_at: float | None = None
        self.exit_code: int | None = None
        self.exit_s: float | None = None  # from the signal to the exit

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.daemon.proc

    def running(self) -> bool:
        return self.proc.poll() is None

    def read_logs(self) -> None:
        for e in self._logs.new():
            self.events.append(e)
            if e.get("event") == "sweep" and isinstance(e.get("sweep"), int):
                self.logged.add(e["sweep"])

    def read_records(self) -> None:
        for r in self._records.new():
            sweep = r.get("sweep")
            if not isinstance(sweep, int):
                continue
            if r.get("type") == "presence":
                self.uids[sweep].append(r["uid"])
            elif r.get("type") == "error":
                self.errors[sweep] += 1
            at = r.get("polled_at")
            if isinstance(at, int):
                self.last_ms[sweep] = max(at, self.last_ms.get(sweep, at))

    def seen(self) -> set[int]:
        """Sweep numbers it ran: logged, or with records (a sweep cut short may log nothing)."""
        return self.logged | {n for n, u in self.uids.items() if u} | set(self.errors)

    def send(self, sig: signal.Signals) -> None:
        self.signal = sig.name
        self.signalled_at = time.time()
        if self.running():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> None:
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"  {self.name} did not exit within {timeout:.0f} s: killed")
            self.proc.kill()
            self.proc.wait()
            self.exit_code = None
        if self.signalled_at is not None:
            self.exit_s = time.time() - self.signalled_at
        CHILDREN.discard(self.proc)
        self.daemon.close()

    def kill(self) -> None:
        if self.running():
            self.proc.kill()
            self.proc.wait()
        CHILDREN.discard(self.proc)
        self.daemon.close()


def member_config(
    emu: EmulatorProcess, redis_url: str, name: str, uids_file: Path, args: argparse.Namespace
) -> str:
    cluster = (
        f'\n[cluster]\nredis_url = "{redis_url}"\nmember = "{name}"\naccount = "{ACCOUNT}"\n'
        f"shards = {args.shards}\nlease_ttl_s = {float(args.lease_ttl)}\n"
    )
    return (
        base_config(emu, interval_s=float(args.interval))
        + cluster
        + target(APP_ID, GROUP_ID, uids_file=str(uids_file))
    )


def redis_offset(server: RedisServer) -> float:
    """Redis ``TIME`` minus the local clock, in seconds (the same host: about 0)."""
    import redis

    client = redis.Redis(unix_socket_path=str(server.socket_path), socket_timeout=5)
    try:
        t0 = time.time()
        sec, usec = client.time()
        t1 = time.time()
    finally:
        client.close()
    return sec + usec / 1e6 - (t0 + t1) / 2


# -- results ---------------------------------------------------------------------------------


@dataclass
class SweepRow:
    number: int
    phase: str  # start-up, warm-up, steady, after event, stopping
    runners: list[str]
    polls: int
    zero: int  # UIDs polled by nobody
    once: int
    more: int  # UIDs polled more than once
    extra: int  # polls beyond the first of a UID
    errors: int
    last_ms: int | None
    notes: list[str] = field(default_factory=list)


@dataclass
class Scenario:
    kind: str
    size: int  # fleet size M
    uids: int
    interval: float
    ttl: float
    started: list[str] = field(default_factory=list)
    subject: str | None = None  # the stopped member, or the joiner
    event_at: float | None = None  # local epoch s of the signal / the joiner's spawn
    offset: float = 0.0  # Redis minus local clock
    fleet_first: int | None = None
    end_cut: int | None = None
    rows: list[SweepRow] = field(default_factory=list)
    subject_first: int | None = None
    subject_last: int | None = None
    subject_exit: int | None = None
    subject_exit_s: float | None = None
    subject_last_polls: tuple[int, int, int] | None = None  # its last sweep: polls, error
    # records; polls in the sweep it ran before that
    emulator: dict[str, Any] = field(default_factory=dict)
    log_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    stop_at: float | None = None  # local epoch s of the final SIGTERM
    held: dict[str, int] = field(default_factory=dict)  # shards held before the final SIGTERM
    bounds_hit: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cores_busy: str = "-"

    @property
    def label(self) -> str:
        if self.kind == "join":
            return f"M={self.size}, join ({self.size - 1} → {self.size})"
        return f"M={self.size}, {self.kind}"

    @property
    def event_index(self) -> int | None:
        """The aligned sweep index at the signal (or the joiner's start), on Redis's clock."""
        if self.event_at is None:
            return None
        return math.floor((self.event_at + self.offset) / self.interval)

    @property
    def window_start(self) -> int | None:
        """The first sweep of the handover window: the event's sweep, or the stopped member's
        last sweep if that is earlier (a sweep still running at the signal, begun before)."""
        event = self.event_index
        if event is None or self.subject_last is None or self.kind == "join":
            return event
        return min(event, self.subject_last)

    def rel(self, n: int | None) -> str:
        if n is None:
            return "-"
        base = self.rows[0].number if self.rows else 0
        return f"s{n - base}"

    def rows_in(self, *phases: str) -> list[SweepRow]:
        return [r for r in self.rows if r.phase in phases]

    # -- derived figures ----------------------------------------------------------------------

    def first_covered(self) -> SweepRow | None:
        """The first sweep after the event that polled every UID, without the stopped member
        (after its last sweep) or with the joiner (from its first)."""
        for r in self.rows_in("after event"):
            if not r.runners or r.zero:
                continue
            leaving = self.kind in ("sigterm", "sigkill")
            if leaving and self.subject_last is not None and r.number <= self.subject_last:
                continue
            joining = self.kind == "join"
            if joining and (self.subject_first is None or r.number < self.subject_first):
                continue
            return r
        return None

    def handover_s(self) -> tuple[float | None, float | None]:
        """From the event to the start of :meth:`first_covered`, and to its last record."""
        r = self.first_covered()
        if r is None or self.event_at is None:
            return None, None
        start = r.number * self.interval - (self.event_at + self.offset)
        done = None if r.last_ms is None else r.last_ms / 1000.0 - self.event_at
        return start, done


# -- running one scenario --------------------------------------------------------------------


def wait_for(what: str, predicate: Callable[[], bool], timeout: float, sc: Scenario) -> bool:
    """Poll ``predicate`` every 0.2 s for at most ``timeout`` s; a timeout is noted, not raised."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            log(f"  bound reached ({timeout:.0f} s) waiting for {what}")
            sc.bounds_hit.append(f"{what} ({timeout:.0f} s)")
            return False
        time.sleep(0.2)


class Died(Exception):
    pass


def check_alive(members: Iterable[Member]) -> None:
    for m in members:
        if not m.running():
            raise Died(f"{m.name} exited {m.proc.returncode} unexpectedly")


def sleep_to_mid_interval(sc: Scenario) -> int:
    """Sleep until half an interval after an aligned sweep start (Redis clock), less than one
    interval; that sweep's number."""
    phase = (time.time() + sc.offset) % sc.interval
    time.sleep((0.5 * sc.interval - phase) % sc.interval)
    return math.floor((time.time() + sc.offset) / sc.interval)


def mid_sweep_of(victim: Member, sc: Scenario, tries: int = 4) -> None:
    """Sleep until half an interval into an aligned sweep that ``victim`` is running (it has
    records of that number): at most ``tries`` intervals, then go ahead anyway."""
    for _ in range(tries):
        number = sleep_to_mid_interval(sc)
        victim.read_records()
        if victim.uids.get(number):
            return
    log(f"  {victim.name} not seen polling half an interval into a sweep: signalling anyway")


def run_scenario(
    kind: str,
    size: int,
    emu: EmulatorProcess,
    uids_file: Path,
    args: argparse.Namespace,
    workdir: Path,
) -> Scenario:
    sc = Scenario(kind, size, args.uids, float(args.interval), float(args.lease_ttl))
    wd = workdir / f"{kind}-m{size}"
    wd.mkdir(parents=True, exist_ok=True)
    initial = size - 1 if kind == "join" else size
    pre = args.steady_sweeps if kind == "steady" else args.pre_sweeps
    interval = sc.interval
    log(f"{sc.label}: {initial} member(s), {WARMUP_SWEEPS} warm-up + {pre} sweeps before the event")
    t0 = time.monotonic()
    cores0 = core_times()
    emu.reset(nonces=True)
    members: dict[str, Member] = {}
    with RedisServer(wd / "redis", find_redis_server()) as server:
        sc.offset = redis_offset(server)

        def spawn(name: str) -> Member:
            m = Member(name, wd, member_config(emu, server.url, name, uids_file, args))
            members[name] = m
            return m

        def live() -> list[Member]:
            return [m for m in members.values() if m.signal is None]

        def poll_logs() -> list[Member]:
            ms = live()
            for m in members.values():
                m.read_logs()
            check_alive(ms)
            return ms

        try:
            for i in range(1, initial + 1):
                spawn(f"m{i}")
            sc.started = list(members)
            wait_for(
                "every member's first sweep",
                lambda: all(m.logged for m in poll_logs()),
                STARTUP_S,
                sc,
            )
            firsts = [min(m.logged) for m in live() if m.logged]
            sc.fleet_first = max(firsts) if firsts else None
            need = WARMUP_SWEEPS + pre

            def enough_before() -> bool:
                ms = poll_logs()
                if sc.fleet_first is None:
                    return False
                return all(sum(n >= sc.fleet_first for n in m.logged) >= need for m in ms)

            # A member that overruns runs every other number: allow 2.5 intervals per sweep.
            wait_for(f"{need} sweeps of the fleet", enough_before, need * interval * 2.5 + 20, sc)

            if kind != "steady":
                if kind == "join":
                    sleep_to_mid_interval(sc)
                    sc.subject = f"m{size}"
                    sc.event_at = time.time()
                    spawn(sc.subject)
                    log(f"  started {sc.subject} (sweep index {sc.event_index})")
                else:
                    victim = members["m1"]
                    mid_sweep_of(victim, sc)
                    sc.subject = victim.name
                    sig = signal.SIGTERM if kind == "sigterm" else signal.SIGKILL
                    victim.send(sig)
                    sc.event_at = victim.signalled_at
                    log(f"  {sig.name} to {victim.name} (sweep index {sc.event_index})")
                    victim.wait_exit(STOP_S)
                    victim.read_logs()
                    victim.read_records()
                    seen = victim.seen()
                    sc.subject_last = max(seen) if seen else None

                post_max = math.ceil((sc.ttl + interval) / interval) + POST_COVERED + 3
                state: dict[str, Any] = {"upto": None}

                def enough_after() -> bool:
                    ms = poll_logs()
                    if not ms or any(not m.logged for m in ms):
                        return False  # e.g. the joiner not up yet
                    upto = min(max(m.logged) for m in ms)  # every live member got this far
                    boundary = sc.event_index or 0
                    if sc.subject_last is not None:
                        boundary = max(boundary, sc.subject_last + 1)
                    if kind == "join":
                        boundary = max(boundary, min(members[sc.subject or ""].logged))
                    if upto < boundary or upto == state["upto"]:
                        return False
                    state["upto"] = upto
                    if upto - boundary + 1 >= post_max:
                        return True
                    for m in members.values():
                        m.read_records()
                    covered = 0
                    for n in range(boundary, upto + 1):
                        polled: set[str] = set()
                        for m in members.values():
                            polled.update(m.uids.get(n, ()))
                        covered += len(polled) == sc.uids
                    return covered >= POST_COVERED

                bound = post_max * interval * 2.5 + 20 + (STARTUP_S if kind == "join" else 0)
                wait_for(f"{POST_COVERED} covered sweeps after the event", enough_after, bound, sc)

            # The end: every remaining member stops; later sweeps are cut short.
            remaining = live()
            for m in remaining:
                m.read_logs()
            cut = [max(m.logged) for m in remaining if m.logged]
            sc.end_cut = min(cut) if cut else None
            sc.stop_at = time.time()
            for m in remaining:
                m.send(signal.SIGTERM)
            for m in remaining:
                m.wait_exit(STOP_S)
        except Died as exc:
            log(f"  {exc}")
            sc.bounds_hit.append(str(exc))
        finally:
            for m in members.values():
                m.kill()
    sc.emulator = emu.stats()["total"]
    for m in members.values():
        m.read_logs()
        m.read_records()
    sc.wall_s = time.monotonic() - t0
    sc.cores_busy = busy_share(cores0, core_times())
    analyze(sc, members)
    if not args.keep_tmp:
        shutil.rmtree(wd, ignore_errors=True)
    log(f"  {summary(sc)}")
    return sc


# -- analysis --------------------------------------------------------------------------------


def analyze(sc: Scenario, members: dict[str, Member]) -> None:
    seen = {name: m.seen() for name, m in members.items()}
    every = set().union(*seen.values()) if seen else set()
    if not every:
        return
    subject = members.get(sc.subject or "")
    if subject is not None and seen[subject.name]:
        sc.subject_first = min(seen[subject.name])
        sc.subject_exit = subject.exit_code
        sc.subject_exit_s = subject.exit_s
        if sc.kind != "join":
            sc.subject_last = max(seen[subject.name])
            last = sc.subject_last
            before = max((n for n in seen[subject.name] if n < last), default=None)
            sc.subject_last_polls = (
                len(subject.uids.get(last, ())),
                subject.errors.get(last, 0),
                len(subject.uids.get(before, ())) if before is not None else 0,
            )
    span = {name: (min(s), max(s)) for name, s in seen.items() if s}
    lo, hi = min(every), max(every)
    event = sc.window_start
    warm = 0
    for n in range(lo, hi + 1):
        counts: Counter[str] = Counter()
        runners = []
        for name, m in members.items():
            got = m.uids.get(n, ())
            counts.update(got)
            if n in seen[name]:
                runners.append(name)
        more = sum(1 for c in counts.values() if c > 1)
        row = SweepRow(
            number=n,
            phase="",
            runners=runners,
            polls=sum(counts.values()),
            zero=sc.uids - len(counts),
            once=len(counts) - more,
            more=more,
            extra=sum(counts.values()) - len(counts),
            errors=sum(m.errors.get(n, 0) for m in members.values()),
            last_ms=max((m.last_ms[n] for m in members.values() if n in m.last_ms), default=None),
        )
        if sc.end_cut is not None and n > sc.end_cut:
            row.phase = "stopping"
        elif sc.fleet_first is None or n < sc.fleet_first:
            row.phase = "start-up"
        elif warm < WARMUP_SWEEPS:
            row.phase = "warm-up"
            warm += bool(runners)
        elif event is not None and n >= event:
            row.phase = "after event"
        else:
            row.phase = "steady"
        notes = row.notes
        if not runners:
            notes.append("no member ran it")
        for name, (first, last) in span.items():
            if n == first and n > lo:
                why = "joined" if name == sc.subject and sc.kind == "join" else "started"
                notes.append(f"{name}: first sweep ({why})")
            if name == sc.subject and sc.kind != "join" and n == last:
                m = members[name]
                into = ""
                if m.signalled_at is not None:
                    into = f", {m.signal} {m.signalled_at + sc.offset - n * sc.interval:+.2f} s"
                    into += " from its start"
                notes.append(f"{name}: last sweep{into}")
            if first < n < last and name not in runners:
                notes.append(f"{name} skipped it")
            early = n < first and bool(runners)
            joiner = sc.kind == "join" and name == sc.subject and row.phase == "after event"
            if early and (row.phase == "start-up" or joiner):
                notes.append(f"{name} not running yet")
        if sc.event_index is not None and n == sc.event_index:
            notes.append("the event's sweep (aligned index at the signal)")
        sc.rows.append(row)
    sc.log_counts = count_logs(members, sc.event_at)
    for name, m in members.items():
        for e in m.events:
            ts, held = e.get("ts"), e.get("shards_held")
            if not isinstance(ts, str) or not isinstance(held, int):
                continue
            if sc.stop_at is None or _parse_ts(ts) < sc.stop_at:
                sc.held[name] = held


LOG_KEYS = (
    (re.compile(r"^shards now held"), "shards now held: … (held shards changed)"),
    (re.compile(r"^shards handed over"), "shards handed over to the other members"),
    (re.compile(r"^could not hand the shards over"), "could not hand the shards over (Redis)"),
    (re.compile(r"^the sweep took longer"), "the sweep took longer than the interval; skipping"),
    (re.compile(r"^stopping"), "stopping: … draining"),
)


def count_logs(members: dict[str, Member], event_at: float | None) -> dict[str, tuple[int, int]]:
    """``line -> (count, count at or after the event)`` over all members; the lease and handover
    lines always, any other warning or error under its own text."""
    total: Counter[str] = Counter()
    after: Counter[str] = Counter()
    for m in members.values():
        for e in m.events:
            text = str(e.get("event", ""))
            key = next((k for rx, k in LOG_KEYS if rx.search(text)), None)
            if key is None:
                if e.get("level") not in ("warning", "error", "critical"):
                    continue
                key = f"{e.get('level')}: {text}"
            total[key] += 1
            ts = e.get("ts")
            if event_at is not None and isinstance(ts, str):
                with contextlib.suppress(ValueError):
                    after[key] += _parse_ts(ts) >= event_at - 0.001
    return {k: (total[k], after[k]) for k in sorted(total)}


@dataclass(frozen=True)
class Steady:
    ran: int  # steady sweep numbers some member ran
    skipped: int  # steady sweep numbers no member ran (every member overran)
    exact: int  # of ``ran``, with every UID exactly once
    zero: int  # UIDs x sweeps (of ``ran``)
    once: int
    more: int
    errors: int


def steady_counts(sc: Scenario) -> Steady:
    rows = sc.rows_in("steady")
    ran = [r for r in rows if r.runners]
    return Steady(
        ran=len(ran),
        skipped=len(rows) - len(ran),
        exact=sum(1 for r in ran if r.zero == 0 and r.more == 0),
        zero=sum(r.zero for r in ran),
        once=sum(r.once for r in ran),
        more=sum(r.more for r in ran),
        errors=sum(r.errors for r in ran),
    )


def window(sc: Scenario) -> list[SweepRow]:
    return sc.rows_in("after event")


def gap_rows(sc: Scenario) -> tuple[list[SweepRow], list[SweepRow]]:
    """Window sweeps some member ran in which a UID was polled by nobody; window sweeps no
    member ran at all."""
    w = window(sc)
    return [r for r in w if r.runners and r.zero], [r for r in w if not r.runners]


def summary(sc: Scenario) -> str:
    st = steady_counts(sc)
    text = (
        f"{sc.label}: {st.ran} steady sweeps run ({st.exact} exact, 0x {st.zero}, "
        f">1x {st.more}), {st.skipped} skipped by every member"
    )
    if sc.kind != "steady":
        gaps, skipped = gap_rows(sc)
        start, _ = sc.handover_s()
        text += (
            f"; after the event: {len(gaps)} gap sweeps, {len(skipped)} skipped by all, "
            f"{sum(r.extra for r in window(sc))} duplicate polls, covered again after "
            + ("-" if start is None else f"{start:.2f} s")
        )
    return (
        text + f"; max window {sc.emulator.get('max_requests_in_any_1s_window')}, throttled "
        f"{sc.emulator.get('throttled_total')}, wall {sc.wall_s:.0f} s"
    )


# -- report ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def sweeps_list(sc: Scenario, rows: list[SweepRow]) -> str:
    return ", ".join(sc.rel(r.number) for r in rows) or "none"


def report(scenarios: list[Scenario], meta: dict[str, str]) -> tuple[str, bool]:
    ok = True
    out = ["# Shards: coverage per aligned sweep, handover on leave, kill and join\n"]
    out.append(table("item|value", list(meta.items())))

    out.append("## Steady state\n")
    out.append(
        "Aligned sweep numbers after the two warm-up sweeps and before the handover window "
        "(`steady`: up to the end). UIDs × sweeps summed over the sweeps some member ran; "
        "skipped: numbers no member ran, because every member's previous sweep overran the "
        "interval. Expected: every UID exactly once in every aligned sweep (no skip).\n"
    )
    rows: list[tuple[Any, ...]] = []
    for sc in scenarios:
        st = steady_counts(sc)
        good = st.ran > 0 and st.exact == st.ran and not st.skipped
        ok &= good
        rows.append(
            (
                sc.label,
                st.ran + st.skipped,
                st.skipped,
                st.ran,
                sc.uids * st.ran,
                st.zero,
                st.once,
                st.more,
                st.errors,
                f"{st.exact}/{st.ran}",
                verdict(good),
            )
        )
    out.append(
        table(
            "scenario|aligned sweeps|skipped by every member|run|UIDs × sweeps run"
            "|polled 0 times|polled once|polled > once|error records"
            "|sweeps run with every UID exactly once|verdict",
            rows,
        )
    )

    leaves = [sc for sc in scenarios if sc.kind in ("sigterm", "sigkill")]
    if leaves:
        out.append("## Handover when a member stops (SIGTERM) or dies (SIGKILL)\n")
        out.append(
            "Window: from the stopped member's last sweep (the highest sweep number in its "
            "records) or the aligned index at the signal, whichever is earlier, to the last "
            "sweep every remaining member finished. Gap sweeps: sweeps some member ran in which "
            "a UID was polled by nobody (the stopped member's last sweep included: what it had "
            "not polled when it stopped; its unsent UIDs are `Cancelled` error records). "
            "Skipped: numbers no member ran (overrun). Duplicate polls: polls beyond the first "
            "of a UID in a sweep. Handover: from the signal to the start of the first sweep "
            "after the stopped member's last in which the remaining members polled every UID "
            "(and to that sweep's last record). Target for SIGKILL: handover ≤ lease_ttl_s + "
            "interval_s; for SIGTERM ≤ interval_s (the next aligned sweep after the signal).\n"
        )
        rows = []
        for sc in leaves:
            w = window(sc)
            gaps, skipped = gap_rows(sc)
            dups = [r for r in w if r.more]
            first = sc.first_covered()
            start, done = sc.handover_s()
            polls = sc.subject_last_polls
            bound = sc.ttl + sc.interval
            if sc.kind == "sigkill":
                good = start is not None and start <= bound
                check = f"{verdict(good)} (≤ {bound:.1f} s)"
            else:
                good = start is not None and start <= sc.interval
                check = f"{verdict(good)} (≤ {sc.interval:.1f} s)"
            ok &= good
            into = "-"
            if sc.event_at is not None and sc.subject_last is not None:
                into = f"{sc.event_at + sc.offset - sc.subject_last * sc.interval:.2f}"
            rows.append(
                (
                    sc.label,
                    sc.subject,
                    sc.rel(sc.event_index),
                    f"{sc.subject_exit} after {cell(sc.subject_exit_s)} s",
                    sc.rel(sc.subject_last)
                    + (
                        ""
                        if polls is None
                        else f" ({polls[0]:,} polled, {polls[1]:,} cancelled; "
                        f"{polls[2]:,} in its sweep before)"
                    ),
                    into,
                    f"{len(gaps)}: {sweeps_list(sc, gaps)}",
                    sum(r.zero for r in gaps),
                    f"{len(skipped)}: {sweeps_list(sc, skipped)}",
                    f"{len(dups)}: {sweeps_list(sc, dups)}",
                    sum(r.extra for r in w),
                    sc.rel(first.number) if first else "-",
                    start,
                    done,
                    check,
                )
            )
        out.append(
            table(
                "scenario|stopped|event's sweep|exit (code, s after the signal)"
                "|its last sweep|signal, s after its last sweep's start"
                "|gap sweeps|UIDs missed in them|skipped by all|sweeps with duplicates"
                "|duplicate polls|first covered sweep|handover s (to its start)"
                "|s to its last record|verdict",
                rows,
            )
        )

    joins = [sc for sc in scenarios if sc.kind == "join"]
    if joins:
        out.append("## A member joins a running fleet\n")
        out.append(
            "Window: from the sweep in progress when the joiner was started to the last sweep "
            "every member finished. Settled: the first sweep from the joiner's first on that "
            "polled every UID exactly once.\n"
        )
        rows = []
        for sc in joins:
            w = window(sc)
            gaps, skipped = gap_rows(sc)
            dups = [r for r in w if r.more]
            settled = next(
                (
                    r
                    for r in w
                    if r.runners
                    and not r.zero
                    and not r.more
                    and sc.subject_first is not None
                    and r.number >= sc.subject_first
                ),
                None,
            )
            first_start = (
                None
                if sc.subject_first is None or sc.event_at is None
                else sc.subject_first * sc.interval - (sc.event_at + sc.offset)
            )
            settled_s = (
                None
                if settled is None or sc.event_at is None
                else settled.number * sc.interval - (sc.event_at + sc.offset)
            )
            good = not gaps and not skipped and settled is not None
            ok &= good
            rows.append(
                (
                    sc.label,
                    sc.subject,
                    sc.rel(sc.event_index),
                    f"{sc.rel(sc.subject_first)} ({cell(first_start)} s after its start)",
                    f"{len(gaps)}: {sweeps_list(sc, gaps)}",
                    sum(r.zero for r in gaps),
                    f"{len(skipped)}: {sweeps_list(sc, skipped)}",
                    f"{len(dups)}: {sweeps_list(sc, dups)}",
                    sum(r.extra for r in w),
                    sc.rel(settled.number) if settled else "-",
                    settled_s,
                    verdict(good) + " (no gap, no skip)",
                )
            )
        out.append(
            table(
                "scenario|joiner|event's sweep|its first sweep|gap sweeps|UIDs missed in them"
                "|skipped by all|sweeps with duplicates|duplicate polls|settled sweep"
                "|s from its start to the settled sweep|verdict",
                rows,
            )
        )

    out.append("## Emulator and runs\n")
    rows = []
    for sc in scenarios:
        e = sc.emulator
        rows.append(
            (
                sc.label,
                e.get("requests_total"),
                e.get("max_requests_in_any_1s_window"),
                e.get("throttled_total"),
                ", ".join(f"{k} {v}" for k, v in sc.held.items()) or "-",
                sc.wall_s,
                sc.cores_busy,
                "; ".join(sc.bounds_hit) or "none",
            )
        )
    out.append(
        table(
            "scenario|requests|max requests in any 1 s|throttled"
            "|shards held before the final stop (last log line)|wall s|cores busy|bounds reached",
            rows,
        )
    )

    out.append("## Lease and handover log lines\n")
    out.append(
        "Count over all members of the scenario (after: at or after the signal or the "
        "joiner's start, by the line's timestamp); other warnings and errors under their text.\n"
    )
    rows = [
        (sc.label, key, total, after if sc.event_at is not None else "-")
        for sc in scenarios
        for key, (total, after) in sc.log_counts.items()
    ]
    out.append(table("scenario|log line|count|after the event", rows))

    out.append("## Sweeps\n")
    out.append(
        "Sweep numbers relative to the first one of the scenario (s0). Phase: start-up (not "
        "every member running yet), warm-up (the first two sweeps of the whole fleet), steady, "
        "after event (from the sweep in progress at the signal or the join), stopping (after "
        "the last sweep every remaining member finished before the final SIGTERM; not "
        "counted). Ran it: members with records or a `sweep` log line for that number.\n"
    )
    for sc in scenarios:
        out.append(f"### {sc.label}\n")
        out.append(
            table(
                "sweep|phase|ran it|polls|UIDs polled 0|once|> once|errors|notes",
                [
                    (
                        sc.rel(r.number),
                        r.phase,
                        ", ".join(r.runners) or "-",
                        r.polls,
                        r.zero,
                        r.once,
                        r.more,
                        r.errors,
                        "; ".join(r.notes),
                    )
                    for r in sc.rows
                ],
            )
        )
    return "\n".join(out), ok


# -- main ------------------------------------------------------------------------------------


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "?"


@contextlib.contextmanager
def emulator(args: argparse.Namespace, workdir: Path, pin: int | None) -> Iterator[EmulatorProcess]:
    prefix: tuple[str, ...] = ()
    if pin is not None and shutil.which("taskset"):
        prefix = ("taskset", "-c", str(pin))
    emu = EmulatorProcess(
        "--host", "127.0.0.1", "--log-level", "WARNING", "--qps", str(QPS_LIMIT),
        "--group", f"{APP_ID}/{GROUP_ID}:{args.uids}",
        startup_timeout_s=30.0,
        stderr_path=workdir / "emulator.stderr",
        command_prefix=prefix,
    )  # fmt: skip
    with emu:
        yield emu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--members", type=int, nargs="+", default=[2, 3, 4], help="fleet sizes (default 2 3 4)"
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=SCENARIOS,
        default=None,
        help="default: all (steady sigterm sigkill join); with --quick: the first one given",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 members, one scenario: sigterm, or the first of --scenarios (< 1 min)",
    )
    parser.add_argument("--uids", type=int, default=3000, help="UIDs (default 3000)")
    parser.add_argument("--interval", type=float, default=2.0, help="[daemon] interval_s (2.0)")
    parser.add_argument("--lease-ttl", type=float, default=3.0, help="lease_ttl_s (3.0)")
    parser.add_argument("--shards", type=int, default=64, help="[cluster] shards (64)")
    parser.add_argument(
        "--steady-sweeps", type=int, default=8, help="sweeps measured in `steady` (8)"
    )
    parser.add_argument(
        "--pre-sweeps", type=int, default=3, help="steady sweeps before an event (3)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results" / "shards.md",
        help="Markdown report (default benchmarks/results/shards.md)",
    )
    parser.add_argument(
        "--pin", action="store_true", help="emulator and Redis on core 1, the rest on core 0"
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.scenarios = [2], [args.scenarios[0] if args.scenarios else "sigterm"]
    elif args.scenarios is None:
        args.scenarios = list(SCENARIOS)
    if min(args.members) < 1 or (("join" in args.scenarios) and min(args.members) < 2):
        parser.error("--members: at least 1 (2 for join)")
    if args.uids < 1 or args.interval <= 0 or args.lease_ttl < 1 or args.pre_sweeps < 1:
        parser.error("--uids, --interval, --pre-sweeps must be positive, --lease-ttl >= 1")
    if find_redis_server() is None:
        parser.error("redis-server not found")

    stop_children_on_exit()
    cores = sorted(os.sched_getaffinity(0))
    pin = cores[1] if args.pin and len(cores) >= 2 else None
    if pin is not None:
        os.sched_setaffinity(0, {cores[0]})  # the daemons inherit it
    started = time.monotonic()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    scenarios: list[Scenario] = []
    with scratch_dir("poller-shards-", keep=args.keep_tmp) as workdir:
        uids_file = workdir / "uids.txt"
        uids_file.write_text("".join(f"user-{i:06d}\n" for i in range(1, args.uids + 1)))
        with emulator(args, workdir, pin) as emu:
            for size in args.members:
                for kind in args.scenarios:
                    scenarios.append(run_scenario(kind, size, emu, uids_file, args, workdir))
    wall = time.monotonic() - started
    ceiling_s = args.uids / (QPS_LIMIT * IDS_PER_REQUEST)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "redis-server": _version([find_redis_server() or "redis-server", "--version"]),
        "pinning": "not pinned"
        if pin is None
        else f"harness and daemons on core {cores[0]}, emulator and Redis on core {pin}",
        "emulator": f"--qps {QPS_LIMIT}, group {APP_ID}/{GROUP_ID}:{args.uids}",
        "fleet": f'[daemon] interval_s = {args.interval}, emit = "all"; [cluster] shards = '
        f"{args.shards}, lease_ttl_s = {args.lease_ttl}; {args.uids:,} UIDs in a uids_file",
        "one sweep at the budget's ceiling": f"{ceiling_s:.2f} s ({args.uids:,} UIDs at "
        f"{QPS_LIMIT} requests/s × {IDS_PER_REQUEST} UIDs, shared by the fleet) for an interval "
        f"of {args.interval} s"
        + (
            ": every sweep overruns, so members skip aligned sweeps"
            if ceiling_s > args.interval
            else ""
        ),
        "sweeps": f"{WARMUP_SWEEPS} warm-up; steady: {args.steady_sweeps}; before an event: "
        f"{args.pre_sweeps}; after it: until {POST_COVERED} covered every UID",
        "run": f"--quick ({args.scenarios[0]})"
        if args.quick
        else f"--members {' '.join(map(str, args.members))} --scenarios {' '.join(args.scenarios)}",
        "benchmark wall time": f"{wall:.0f} s",
        "load average (1, 5, 15 min)": f"before {load_before}; after "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    text, ok = report(scenarios, meta)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, "utf-8")
    log(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
