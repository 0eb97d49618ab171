"""One account's request budget shared by every poller process, through Redis.

:class:`Fleet` is this process's membership: the Redis connection, a heartbeat that registers
the member and counts the members seen in the last minute, and the mode (shared or degraded).
:meth:`Fleet.meter` gives a :class:`SharedRateMeter` per API action, a drop-in
:class:`~poller.core.ratelimit.RateMeter`:

* The member's own :class:`~poller.core.ratelimit.PacedRateLimiter` stays in front at the full
  rate: it paces the member's sends and keeps the adaptive rules (pauses, cuts on trial).
* Then the RESERVE script (:mod:`poller.fleet.scripts`) decides: it hands out slots of a
  sliding-window log on Redis time, a few at a time (``block``), so one round trip serves
  several requests. A slot may lie a little ahead; the member waits for it.
* A throttle that makes the local meter pause everyone is published (PAUSE): every member's
  next slot comes after it. A cut is published too (each reservation says what fraction of
  the full rate the member's meter allows): slots are spaced for the slowest member of the
  last 2 s, so the fleet slows down as one process would, and recovers with that member.
* Redis unreachable (down, restarting, a network fault): never a crash, never a storm. With
  ``on_redis_down = "share"`` the local meter becomes the budget, at ``qps / members seen in
  the last minute`` (``expected_members`` if none was ever seen), after a window and the
  longest reservation lead of silence (the fleet's grants of the last window are unknown);
  with ``"pause"`` nothing is sent. Redis is probed about once a second; on success the
  member returns to the shared budget: the sends it made meanwhile are entered into the log,
  and no slot is handed out until the other members have had time to do the same (the
  quarantine of RESERVE). A Redis that lost its data (a new epoch) admits nobody for one
  window.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from poller.config import ClusterConfig, env_secret, mask_url
from poller.core.clock import Clock, system_clock
from poller.core.errors import ConfigError
from poller.core.ratelimit import PacedRateLimiter, RateStats

from .scripts import HEARTBEAT, PAUSE, RESERVE, Keys

__all__ = [
    "FORGET_MEMBERS_S",
    "Fleet",
    "FleetStatus",
    "FleetUnavailable",
    "SharedRateMeter",
    "account_of",
    "open_redis",
    "redis_secrets",
]

log = logging.getLogger("poller.fleet")

#: Members whose last heartbeat is older than this are no longer counted.
FORGET_MEMBERS_S: Final = 60.0
#: Slots asked for per round trip: at 100 requests/s, 4 slots span 40 ms.
BLOCK: Final = 4
#: Reserve no slot further ahead than this (s); beyond, wait and ask again.
AHEAD_S: Final = 0.25
#: The shared log's window is 1 s plus this many ``window_margin_ms``.
FLEET_MARGIN_FACTOR: Final = 2.0
#: Seconds between probes of an unreachable Redis (jittered by ±25 %).
PROBE_S: Final = 1.0
#: Redis calls that take longer count as failures (the member falls back, it does not hang).
REDIS_TIMEOUT_S: Final = 1.0

Mode = Literal["shared", "degraded"]
T = TypeVar("T")


def account_of(cluster: ClusterConfig, access_key_id: str | None) -> str:
    """The budget key: ``[cluster] account``, else a hash of the AccessKeyId (never a secret)."""
    if cluster.account:
        return cluster.account
    if not access_key_id:
        raise ConfigError(
            "required when no AccessKeyId is configured (the default budget key is derived "
            "from it)",
            key="cluster.account",
        )
    return "ak-" + hashlib.sha256(access_key_id.encode()).hexdigest()[:16]


def _env_password(cluster: ClusterConfig) -> str | None:
    if not cluster.password_env:
        return None
    return env_secret(cluster.password_env, key="cluster.password_env")


def redis_secrets(cluster: ClusterConfig) -> list[str]:
    """The Redis passwords in play (the URL's, the environment's): for the log redactor."""
    url = urlsplit(cluster.redis_url)
    return [p for p in (url.password, url.username, _env_password(cluster)) if p]


def open_redis(cluster: ClusterConfig) -> aioredis.Redis:
    """A client for ``redis_url`` that fails fast instead of retrying (the fleet falls back)."""
    password = _env_password(cluster)
    kwargs: dict[str, Any] = {}
    if password is not None:
        kwargs["password"] = password
    return aioredis.Redis.from_url(
        cluster.redis_url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        client_name="poller",
        **kwargs,
    )


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """What this member knows of the fleet: for metrics, readiness and logs."""

    mode: Mode
    on_redis_down: Literal["share", "pause"]
    members: int
    redis_url: str  # masked
    reason: str  # why degraded ("" when shared)
    since: float  # monotonic time of the last mode change
    round_trips: int  # Redis calls made by the meters
    grants: int  # slots the shared meters used
    redis_latency_s: float  # the last round trip

    @property
    def description(self) -> str:
        if self.mode == "shared":
            return f"shared budget through {self.redis_url} ({self.members} members)"
        fallback = (
            f"local budget of qps/{self.members}"
            if self.on_redis_down == "share"
            else "sending paused"
        )
        return f"Redis unreachable ({self.reason}); {fallback}"


class Fleet:
    """This process's membership of a fleet; see the module docstring.

    ::

        fleet = Fleet(cluster, account=account_of(cluster, key_id))
        await fleet.start()
        meter = fleet.meter("BatchGetOnlineUsers", qps=100)
        ...
        await fleet.aclose()
    """

    def __init__(
        self,
        cluster: ClusterConfig,
        *,
        account: str,
        clock: Clock | None = None,
        client: aioredis.Redis | None = None,
        heartbeat_s: float = 5.0,
        probe_s: float = PROBE_S,
        rng: random.Random | None = None,
    ) -> None:
        self.cluster = cluster
        self.account = account
        self.keys = Keys(account)
        self.member = cluster.member or f"{socket.gethostname()}-{os.getpid()}"
        self._clock = clock or system_clock()
        self._redis = client
        self._own_client = client is None
        self._heartbeat_s = heartbeat_s
        self.probe_s = probe_s
        self._rng = rng or random.Random()
        self._mode: Mode = "shared"
        self._reason = ""
        self._since = self._clock.monotonic()
        self._next_probe = -1.0
        self._members = cluster.expected_members
        self._meters: list[SharedRateMeter] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._started_at = time.time()
        self.round_trips = 0
        self.redis_latency_s = 0.0
        self.clock_sync = ClockSync()
        self._scripts: dict[str, AsyncScript] = {}
        self.on_mode_change: Callable[[FleetStatus], None] | None = None
        #: Called after every Redis call with its duration and whether it succeeded.
        self.on_redis_call: Callable[[float, bool], None] | None = None

    @property
    def clock(self) -> Clock:
        return self._clock

    def secrets(self) -> list[str]:
        """The Redis passwords this member uses (for a log redactor); never logged."""
        return redis_secrets(self.cluster)

    def __repr__(self) -> str:
        return (
            f"<Fleet {self.cluster.name!r} member={self.member!r} account={self.account!r} "
            f"mode={self._mode} redis={mask_url(self.cluster.redis_url)!r}>"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and register; a Redis that is down now only starts the member degraded."""
        if self._redis is None:
            self._redis = open_redis(self.cluster)
        with contextlib.suppress(FleetUnavailable):
            await self._beat()  # Redis down now: the member starts degraded
        self._heartbeat = asyncio.create_task(self._heartbeats(), name="poller-fleet-heartbeat")

    async def aclose(self) -> None:
        """Stop the heartbeat, deregister (best effort, bounded) and close the connection."""
        tasks = [t for t in (self._heartbeat, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._heartbeat = None
        redis = self._redis
        if redis is None:
            return
        if self._mode == "shared":
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(REDIS_TIMEOUT_S):
                    await redis.zrem(self.keys.members, self.member)
                    await redis.delete(self.keys.member(self.member))
        if self._own_client:
            await redis.aclose()
        self._redis = None

    # -- meters ------------------------------------------------------------------------------

    def meter(
        self,
        action: str,
        qps: float,
        *,
        margin_s: float = 0.020,
        adaptive: bool = True,
        block: int = BLOCK,
    ) -> SharedRateMeter:
        """A shared meter for ``action``'s budget of ``qps`` requests/s on this account."""
        meter = SharedRateMeter(
            self, action, qps, margin_s=margin_s, adaptive=adaptive, block=block
        )
        self._meters.append(meter)
        return meter

    # -- state -------------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def members(self) -> int:
        """Members seen in the last minute (this one included), or the configured guess."""
        return self._members

    def status(self) -> FleetStatus:
        return FleetStatus(
            mode=self._mode,
            on_redis_down=self.cluster.on_redis_down,
            members=self._members,
            redis_url=mask_url(self.cluster.redis_url),
            reason=self._reason,
            since=self._since,
            round_trips=self.round_trips,
            grants=sum(m.shared_grants for m in self._meters),
            redis_latency_s=self.redis_latency_s,
        )

    def redis_time(self) -> float:
        """Now on Redis's clock (s), as learned from round trips; the local wall clock until
        Redis has answered once."""
        clock = self._clock
        if not self.clock_sync.ready:
            return clock.time()
        return clock.monotonic() - self.clock_sync.local(0.0)

    def local_time(self, redis_s: float) -> float:
        """The local monotonic time of the Redis time ``redis_s`` (see :meth:`redis_time`)."""
        return self._clock.monotonic() + (redis_s - self.redis_time())

    def seen(self, members: int) -> None:
        """Members counted by Redis just now (0 after Redis lost its data: not yet known)."""
        if members > 0:
            self._members = members

    def probe_due(self) -> bool:
        return self._clock.monotonic() >= self._next_probe

    def until_probe(self) -> float:
        return max(0.0, self._next_probe - self._clock.monotonic())

    async def call(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script; a Redis failure switches to degraded mode and raises
        :class:`FleetUnavailable`; a success ends degraded mode."""
        redis = self._redis
        if redis is None:
            raise FleetUnavailable("the fleet is closed")
        registered = self._scripts.get(script)
        if registered is None:  # EVALSHA, loading the script again after NOSCRIPT (a restart)
            registered = self._scripts[script] = redis.register_script(script)
        return await self.command(lambda _: registered(keys=keys, args=args))

    async def command(self, send: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """``send(redis)`` under the same rules as :meth:`call` (timeout, degraded mode)."""
        redis = self._redis
        if redis is None:
            raise FleetUnavailable("the fleet is closed")
        start = self._clock.monotonic()
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                reply = await send(redis)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            if self.on_redis_call is not None:
                self.on_redis_call(self._clock.monotonic() - start, False)
            raise FleetUnavailable(self._reason) from exc
        self.redis_latency_s = self._clock.monotonic() - start
        self.round_trips += 1
        if self.on_redis_call is not None:
            self.on_redis_call(self.redis_latency_s, True)
        if self._mode != "shared":
            self._change("shared", "")
        return reply

    def _failed(self, exc: BaseException) -> None:
        jitter = 1.0 + self._rng.uniform(-0.25, 0.25)
        self._next_probe = self._clock.monotonic() + self.probe_s * jitter
        reason = _describe(exc)
        if self._mode != "degraded":
            self._change("degraded", reason)
        self._reason = reason

    def _change(self, mode: Mode, reason: str) -> None:
        self._mode, self._reason, self._since = mode, reason, self._clock.monotonic()
        for meter in self._meters:
            meter.mode_changed(mode)
        status = self.status()
        # Fields for the daemon's JSON log; the text says it all for plain logging.
        fields: dict[str, object] = {
            "fleet_mode": mode,
            "members": status.members,
            "redis": status.redis_url,
            "on_redis_down": status.on_redis_down,
        }
        if mode == "shared":
            log.warning(
                "Redis is reachable again: back to the shared budget (%s)",
                status.description,
                extra={"fields": fields},
            )
            self.spawn(self._beat())  # re-register at once: Redis may have lost the registry
        else:
            fields["reason"] = reason
            log.error("fleet degraded: %s", status.description, extra={"fields": fields})
        if self.on_mode_change is not None:
            self.on_mode_change(status)

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run ``work`` in the background, cancelled at :meth:`aclose`."""

        async def run() -> None:
            with contextlib.suppress(FleetUnavailable):
                await work

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- heartbeat ---------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await self._clock.sleep(self._heartbeat_s * (0.9 + 0.2 * self._rng.random()))
            with contextlib.suppress(FleetUnavailable):
                await self._beat()

    async def _beat(self) -> None:
        info = {
            "fleet": self.cluster.name,
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "started_at": f"{self._started_at:.3f}",
            "mode": self._mode,
            "grants": str(sum(m.shared_grants for m in self._meters)),
            "round_trips": str(self.round_trips),
        }
        usage = [self.keys.budget(m.action).usage for m in self._meters]
        args: list[str] = [
            self.member,
            str(int(self._heartbeat_s * 3000)),
            str(int(FORGET_MEMBERS_S * 1000)),
        ]
        for field, value in info.items():
            args += [field, value]
        keys = [self.keys.members, self.keys.member(self.member), *usage]
        seen, _now = await self.call(HEARTBEAT, keys, args)
        self.seen(int(seen))


class ClockSync:
    """Local monotonic time <-> Redis time, as NTP does it: each round trip gives the offset
    ``redis - (sent + received) / 2``, off by at most half its round trip, so the sample with
    the shortest round trip of the last ``keep_s`` is used. A slot's local time is then right
    to about a tenth of a millisecond on a quiet link, not early by a whole (busy) round trip."""

    def __init__(self, keep_s: float = 30.0) -> None:
        self._keep = keep_s
        self._samples: deque[tuple[float, float, float]] = deque()  # (received, rtt, offset)
        self._best: tuple[float, float, float] | None = None

    def observe(self, sent: float, received: float, redis_s: float) -> None:
        rtt = max(0.0, received - sent)
        sample = (received, rtt, redis_s - (sent + received) / 2.0)
        samples = self._samples
        samples.append(sample)
        stale = received - self._keep
        while samples[0][0] < stale:
            samples.popleft()
        best = self._best
        if best is None or best[0] < stale or rtt <= best[1]:
            self._best = min(samples, key=lambda s: s[1])

    def local(self, redis_s: float) -> float:
        """The local monotonic time of the Redis time ``redis_s``."""
        assert self._best is not None, "observe() first"
        return redis_s - self._best[2]

    @property
    def ready(self) -> bool:
        """A round trip was observed (:meth:`local` can be used)."""
        return self._best is not None


class FleetUnavailable(Exception):
    """Redis could not be used just now (the fleet is degraded)."""


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


class SharedRateMeter:
    """A :class:`~poller.core.ratelimit.RateMeter` whose slots come from the fleet's budget."""

    def __init__(
        self,
        fleet: Fleet,
        action: str,
        qps: float,
        *,
        margin_s: float,
        adaptive: bool,
        block: int,
    ) -> None:
        self._fleet = fleet
        self.action = action
        self._keys = fleet.keys.budget(action)
        self._clock = fleet.clock
        self._block = max(1, block)
        self._local = PacedRateLimiter(qps, margin_s=margin_s, clock=self._clock, adaptive=adaptive)
        self._qps = qps
        self._margin = margin_s
        self._adaptive = adaptive
        self._slots: deque[float] = deque()  # granted slots, local monotonic time
        self._local_sends: deque[float] = deque()  # sends made while degraded
        self._lock: asyncio.Lock | None = None
        self._returning = False  # the next reservation is the first after a degraded spell
        self.shared_grants = 0

    @property
    def _window(self) -> float:
        """The shared log's window: 1 s plus twice the margin. Members are separate processes
        (often on separate hosts), so a send's delay between its slot and its arrival varies
        more than in one process; the second margin absorbs that."""
        return 1.0 + FLEET_MARGIN_FACTOR * self._margin

    def __repr__(self) -> str:
        return f"<SharedRateMeter {self.action} {self._qps:g}/s account={self._fleet.account!r}>"

    @property
    def local(self) -> PacedRateLimiter:
        """The member's own meter in front (its rate, its adaptive state)."""
        return self._local

    def stats(self) -> RateStats:
        return self._local.stats()

    def reconfigure(self, qps: float, *, margin_s: float, adaptive: bool) -> None:
        """A new budget (a reloaded config), in the mode the fleet is in now."""
        self._qps, self._margin, self._adaptive = qps, margin_s, adaptive
        self._slots.clear()
        self._retune(self._fleet.mode)

    def mode_changed(self, mode: Mode) -> None:
        """The fleet's mode changed: the local meter becomes, or stops being, the budget."""
        self._slots.clear()
        self._retune(mode)
        if mode == "degraded":
            self._returning = True
            # The fleet's grants of the last window are unknown, and slots reserved before Redis
            # went away may still be used for up to AHEAD_S: wait both out before sending alone.
            self._local.pause(self._window + AHEAD_S)

    def _retune(self, mode: Mode) -> None:
        """The local meter: the full rate in front of the shared budget, or, without Redis,
        the member's share of it with the fleet's margin (members send alone, side by side)."""
        if mode == "shared":
            self._local.reconfigure(self._qps, margin_s=self._margin, adaptive=self._adaptive)
        else:
            share = self._qps / max(1, self._fleet.members)
            margin = self._window - 1.0
            self._local.reconfigure(share, margin_s=margin, adaptive=self._adaptive)

    async def acquire(self) -> float:
        clock = self._clock
        start = clock.monotonic()
        lock = self._lock
        if lock is None:
            lock = self._lock = asyncio.Lock()
        async with lock:
            await self._local.acquire()
            while True:
                fleet = self._fleet
                if fleet.mode == "degraded" and not fleet.probe_due():
                    if fleet.cluster.on_redis_down == "share":
                        self._note_local_send(clock.monotonic())
                        break
                    await clock.sleep(fleet.until_probe())
                    continue
                slot = self._next_slot(clock.monotonic())
                if slot is None:
                    try:
                        slot = await self._reserve()
                    except FleetUnavailable:
                        continue
                    if slot is None:
                        continue
                wait = slot - clock.monotonic()
                if wait > 0:
                    await clock.sleep(wait)
                break
        return clock.monotonic() - start

    def _next_slot(self, now: float) -> float | None:
        """The next granted slot still usable: a slot missed by more than half the margin
        is dropped (a send that late could crowd a window the log thinks is free)."""
        slots = self._slots
        while slots:
            slot = slots.popleft()
            if now <= slot + self._margin / 2:
                self.shared_grants += 1
                return slot
        return None

    def _note_local_send(self, now: float) -> None:
        sends = self._local_sends
        sends.append(now)
        horizon = now - self._window
        while sends and sends[0] < horizon:
            sends.popleft()

    async def _reserve(self) -> float | None:
        """Ask the fleet for slots; the first one, or None after waiting as told."""
        clock = self._clock
        asked = clock.monotonic()
        window_ms = self._window * 1000.0
        limit = max(1, int(self._qps))
        spacing_ms = window_ms / limit
        fraction = self._local.rate / self._local.max_rate
        ages = [f"{(asked - t) * 1000.0:.3f}" for t in self._local_sends]
        # Back from a spell without Redis: the others may still send alone for up to a probe
        # interval (+25 % jitter) and a slot is reserved up to AHEAD_S early; their sends must
        # have left the window before any slot is used.
        quarantine = (window_ms + (1.25 * self._fleet.probe_s + AHEAD_S) * 1000.0) * self._returning
        reply = await self._fleet.call(
            RESERVE,
            [
                self._keys.log,
                self._keys.pause,
                self._keys.epoch,
                self._keys.usage,
                self._fleet.keys.members,
                self._keys.rates,
            ],
            [
                limit,
                f"{window_ms:.3f}",
                f"{spacing_ms:.3f}",
                self._block,
                f"{AHEAD_S * 1000.0:.3f}",
                self._fleet.member,
                f"{quarantine:.3f}",
                f"{fraction:.4f}",
                *ages,
            ],
        )
        self._local_sends.clear()
        self._returning = False
        _epoch, wait_ms, members, now_ms, *offsets = reply
        self._fleet.seen(int(members))
        sync = self._fleet.clock_sync
        sync.observe(asked, clock.monotonic(), float(now_ms) / 1000.0)
        if not offsets:
            await clock.sleep(max(0.001, float(wait_ms) / 1000.0))
            return None
        redis_now = float(now_ms) / 1000.0
        self._slots.extend(sync.local(redis_now + float(off) / 1000.0) for off in offsets)
        return self._next_slot(clock.monotonic())

    def on_throttled(self, retry_after_s: float | None) -> None:
        before = self._local.paused_until
        self._local.on_throttled(retry_after_s)
        pause = self._local.paused_until - self._clock.monotonic()
        if self._local.paused_until > before and pause > 0 and self._fleet.mode == "shared":
            # The local meter decided everyone should wait: so should the whole fleet.
            self._slots.clear()
            self._fleet.spawn(
                self._fleet.call(PAUSE, [self._keys.pause], [f"{pause * 1000.0:.3f}"])
            )
