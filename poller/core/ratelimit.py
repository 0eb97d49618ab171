"""The rate meter: paced slots, a sliding-window guard, and adaptive slow-down on throttling.

Why not plain aiolimiter: ``AsyncLimiter(100, 1)`` starts with a free burst (up to ~200 requests
land in the first second), and the fully paced ``AsyncLimiter(1, 0.01)`` loses every late timer
wake-up for good (about 91 % of the rate). This meter combines three rules:

1. **Absolute slots.** Slot *k+1* is due ``1/rate`` after slot *k* was *due*, not after it was
   *taken*, so a late wake-up is caught up by the next acquirer instead of being lost. An idle
   meter does not bank slots: after a pause the schedule restarts from "now".
2. **Sliding-window guard.** The times the last ``limit`` slots were actually granted are kept;
   a new slot is granted only once the oldest of them is ``window + margin`` old. So no window
   of ``window`` seconds ever holds more than ``limit`` grants, even after catch-up, and the
   margin absorbs jitter between our send time and the server's arrival time.
3. **Adaptive rate.** A throttling answer pauses every acquirer until the server's
   ``retry_after``. A throttle that follows another within ``isolated_s`` also multiplies the
   rate by ``decrease`` (at most once per window); the rate then recovers linearly by
   ``recovery_per_s`` of the configured rate per second. Other callers in the same account
   spend the same budget, so the meter must yield to them; a lone throttle after a quiet
   spell (arrival jitter at the server) only pauses.

Sleeps are rounded up to whole milliseconds and re-checked, so an event loop whose timers fire
slightly early (uvloop) costs one extra wake-up, not a spin. The meter sits behind the
:class:`RateMeter` protocol so that a shared (e.g. Redis) meter can replace it.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .clock import Clock, system_clock

__all__ = ["PacedRateLimiter", "RateMeter", "RateStats"]


@dataclass(frozen=True, slots=True)
class RateStats:
    granted: int
    wait_s: float
    rate: float
    max_rate: float
    throttle_events: int
    decreases: int


class RateMeter(Protocol):
    async def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        ...

    def on_throttled(self, retry_after_s: float | None) -> None: ...

    def stats(self) -> RateStats: ...


class PacedRateLimiter:
    """At most ``limit`` grants in any ``window_s`` (+ margin), paced evenly; see module doc."""

    def __init__(
        self,
        qps: float,
        *,
        window_s: float = 1.0,
        margin_s: float = 0.020,
        clock: Clock | None = None,
        adaptive: bool = True,
        decrease: float = 0.7,
        recovery_per_s: float = 0.02,
        min_fraction: float = 0.05,
        max_pause_s: float = 10.0,
        isolated_s: float = 5.0,
    ) -> None:
        self._clock = clock or system_clock()
        self._window = window_s
        self._decrease = decrease
        self._recovery_per_s = recovery_per_s
        self._min_fraction = min_fraction
        self._max_pause = max_pause_s
        self._isolated_s = isolated_s
        self._last_throttle = -math.inf
        self._granted_at: deque[float] = deque(maxlen=1)
        self.reconfigure(qps, margin_s=margin_s, adaptive=adaptive)
        self._next_due = -math.inf
        self._paused_until = -math.inf
        self._cooldown_until = -math.inf
        self._recovered_at = -math.inf
        self._lock: asyncio.Lock | None = None
        self._granted = 0
        self._wait_total = 0.0
        self._throttle_events = 0
        self._decreases = 0

    def reconfigure(
        self, qps: float, *, margin_s: float | None = None, adaptive: bool = True
    ) -> None:
        """A new budget, keeping the grants already made: the window guard then holds across
        the change (a lower ``qps`` waits for the newest grants to age, a higher one does not
        burst beyond what the window allows)."""
        if qps <= 0:
            raise ValueError("qps must be > 0")
        if margin_s is not None:
            self._margin = margin_s
        # qps per window, e.g. 100 requests in any 1 s; fractional budgets round down.
        self._limit = max(1, math.floor(qps * self._window))
        self._max_rate = self._limit / (self._window + self._margin)
        self._rate = self._max_rate
        self._min_rate = self._max_rate * self._min_fraction
        self._recovery = self._recovery_per_s * self._max_rate
        self._adaptive = adaptive
        self._granted_at = deque(self._granted_at, maxlen=self._limit)

    @property
    def rate(self) -> float:
        return self._rate

    def __repr__(self) -> str:
        return (
            f"<PacedRateLimiter limit={self._limit}/{self._window}s rate={self._rate:.2f}/s "
            f"granted={self._granted}>"
        )

    def stats(self) -> RateStats:
        return RateStats(
            granted=self._granted,
            wait_s=self._wait_total,
            rate=self._rate,
            max_rate=self._max_rate,
            throttle_events=self._throttle_events,
            decreases=self._decreases,
        )

    async def acquire(self) -> float:
        clock = self._clock
        start = clock.monotonic()
        lock = self._lock
        if lock is None:  # created inside the running loop, never at import time
            lock = self._lock = asyncio.Lock()
        if not lock.locked():
            # Fast path, no suspension: nobody is queued and the slot is already due.
            self._recover(start)
            due = max(start, self._next_due)
            if start >= self._ready(due):
                self._grant(start, due)
                return 0.0
        async with lock:
            now = clock.monotonic()
            self._recover(now)
            due = max(now, self._next_due)
            while True:
                ready = self._ready(due)
                now = clock.monotonic()
                if now >= ready:
                    break
                # Round up to whole ms: early-firing timers then cost one re-check, not a spin.
                await clock.sleep(math.ceil((ready - now) * 1000.0) / 1000.0)
            self._grant(now, due)
            waited = now - start
            self._wait_total += waited
            return waited

    def _ready(self, due: float) -> float:
        """When a slot due at ``due`` may be granted: after any pause and the window guard."""
        ready = max(due, self._paused_until)
        if len(self._granted_at) == self._limit:
            ready = max(ready, self._granted_at[0] + self._window + self._margin)
        return ready

    def _grant(self, now: float, due: float) -> None:
        self._granted_at.append(now)
        self._next_due = max(due, self._paused_until) + 1.0 / self._rate
        self._granted += 1

    def on_throttled(self, retry_after_s: float | None) -> None:
        now = self._clock.monotonic()
        self._throttle_events += 1
        if retry_after_s is not None and retry_after_s > 0:
            self._paused_until = max(self._paused_until, now + min(retry_after_s, self._max_pause))
        previous, self._last_throttle = self._last_throttle, now
        if now - previous > self._isolated_s:
            return  # one throttle after a quiet spell: a jitter blip; pausing is enough
        if self._adaptive and now >= self._cooldown_until:
            self._rate = max(self._min_rate, self._rate * self._decrease)
            self._decreases += 1
            self._cooldown_until = now + self._window
            self._recovered_at = self._cooldown_until

    def _recover(self, now: float) -> None:
        if self._rate >= self._max_rate or now < self._cooldown_until:
            return
        elapsed = now - max(self._recovered_at, self._cooldown_until)
        if elapsed > 0:
            self._rate = min(self._max_rate, self._rate + self._recovery * elapsed)
            self._recovered_at = now
