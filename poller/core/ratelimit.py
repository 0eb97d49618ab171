"""The rate meter: paced slots, a sliding-window guard, and adaptive slow-down on throttling.

Why not plain aiolimiter: ``AsyncLimiter(100, 1)`` starts with a free burst (up to ~200 requests
land in the first second), and the fully paced ``AsyncLimiter(1, 0.01)`` loses every late timer
wake-up for good (about 91 % of the rate). This meter follows six rules:

1. **Absolute slots.** Slot *k+1* is due ``1/rate`` after slot *k* was *due*, not after it was
   *taken*, so a late wake-up is caught up by the next acquirer instead of being lost. An idle
   meter does not bank slots: after a pause the schedule restarts from "now".
2. **Sliding-window guard.** The times the last ``limit`` slots were actually granted are kept;
   a new slot is granted only once the oldest of them is ``window + margin`` old. So no window
   of ``window`` seconds ever holds more than ``limit`` grants, even after catch-up, and the
   margin absorbs jitter between our send time and the server's arrival time.
3. **Pause.** A throttle that follows another within ``isolated_s`` pauses every acquirer
   until the server's ``retry_after`` (at most ``max_pause_s``). A lone throttle after a quiet
   spell (arrival jitter at the server) does not, nor does any throttle during a trial (rule 4:
   a pause would stop the very traffic the trial measures) or a hold (rule 5: the throttles are
   known noise). The throttled request's own retry always waits at least its ``retry_after``
   (the retry policy's floor).
4. **Cut, on trial.** Other callers in the same account spend the same budget, so the meter
   must yield to them: a throttle that follows another within ``isolated_s`` multiplies the
   rate by ``decrease``, unless it comes in the first ``trial_s`` after an idle spell, when
   there is nothing yet to judge a cut by. The cut is a trial: the rate stays put, no further
   cut is made, and after ``trial_s`` the trial's throttle fraction (throttles / grants) is
   compared with that of the ``trial_s`` before the cut (not counting the throttle that
   triggered it). A trial goes on while too few throttles came to tell anything: until it
   has 30 grants and 6 throttles would have come at the fraction before, or 6 came and at
   least as many as would have (they did not fall), at most 5 ``trial_s``; a trial that
   drew fewer than 30 grants by then (the meter went quiet) just restores the rate.
5. **Keep a cut only if it helped.** It helped when the throttles stopped (fewer than 2), or
   their fraction moved by at least ``z`` standard errors (a two-proportion z-test: falling,
   cutting works; growing, someone is taking more of the account; for growing, the throttle
   that triggered the cut counts in "before"), or successes per second stayed above half the
   cut below what the rate before would have brought at the fraction before (we are above a
   competitor's leftover and the cut only removed requests that would have been throttled;
   the rate before, not the grants before, is the yardstick, since pauses thinned those
   out). Otherwise the throttles are not ours to fix (other tenants' noise, the cloud's
   jitter: the same fraction at any rate): the rate returns to where the run of kept cuts
   that led here began (they rested on the same thin evidence) and **holds** there for
   ``hold_s`` (doubled for each failed trial in a row, up to 32 ``hold_s``): no cuts, no
   recovery, no pauses. A hold ends early when the throttle fraction since it began (30
   grants at least) is ``z`` standard errors above the one of the failed trial (a competitor
   arrived during the hold).
6. **Recover.** Outside trials and holds the rate climbs back linearly by ``recovery_per_s``
   of the configured rate per second.

So a real competitor (say 50 of the account's 100 requests/s) makes cuts help: throttles fall
as the rate nears the leftover 50/s, cuts are kept, and the rate settles below it, probing
upward by rule 6. Random throttles (2-5 % of answers whatever the rate, with any retry-after)
fail rule 5: they cost a few pauses and one short trial at the lower rate, then a hold that
doubles with each failed trial, not a collapse of the rate.
``tests/test_ratelimit.py`` checks both against a simulated server.

Sleeps are rounded up to whole milliseconds and re-checked, so an event loop whose timers fire
slightly early (uvloop) costs one extra wake-up, not a spin. The meter sits behind the
:class:`RateMeter` protocol so that a shared (e.g. Redis) meter can replace it.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .clock import Clock, system_clock

__all__ = ["PacedRateLimiter", "RateMeter", "RateStats", "Retunable"]

#: A trial goes on until the cut's grants, at the throttle fraction before it, would have drawn
#: this many throttles (so that "they persisted" can be told from chance)...
_EVIDENCE = 6.0
#: ...but for at most this many ``trial_s``.
_LONGEST_TRIAL = 5.0
#: Grants a "before" or a trial needs at the least to be judged at all.
_MIN_GRANTS = 30


@dataclass(frozen=True, slots=True)
class RateStats:
    granted: int
    wait_s: float
    rate: float
    max_rate: float
    throttle_events: int
    decreases: int
    undone: int = 0  # cuts undone because they did not help (rule 5)
    holding: bool = False  # rule 5's hold is in force


@dataclass(frozen=True, slots=True)
class _Trial:
    """A cut on trial (rule 4): when it ends, the rate it replaced, and the counts to judge it."""

    started: float
    until: float  # the earliest end
    deadline: float  # the latest end
    rate_before: float
    granted: int  # counters at the cut; the trial's own counts are the differences
    throttled: int
    before_grants: int  # the ``trial_s`` before the cut
    before_throttles: int


class RateMeter(Protocol):
    async def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        ...

    def on_throttled(self, retry_after_s: float | None) -> None: ...

    def stats(self) -> RateStats: ...


@runtime_checkable
class Retunable(Protocol):
    """A meter whose budget can change in place (a reloaded config), keeping what it granted."""

    def reconfigure(self, qps: float, *, margin_s: float, adaptive: bool) -> None: ...


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
        trial_s: float = 1.0,
        hold_s: float = 10.0,
        z: float = 3.0,
    ) -> None:
        self._clock = clock or system_clock()
        self._window = window_s
        self._decrease = decrease
        self._recovery_per_s = recovery_per_s
        self._min_fraction = min_fraction
        self._max_pause = max_pause_s
        self._isolated_s = isolated_s
        self._trial_s = trial_s
        self._hold_s = hold_s
        self._z = z
        self._last_throttle = -math.inf
        self._granted_at: deque[float] = deque(maxlen=1)
        self._recent_grants: deque[float] = deque()  # the last ``trial_s`` (rule 4's "before")
        self._recent_throttles: deque[float] = deque()
        self._trial: _Trial | None = None
        self._hold_until = -math.inf
        self._failed_trials = 0
        self._active_since = math.inf
        self._floor = (0, 0)  # throttles and grants of the trial that started the hold
        self._hold_counts = (0, 0)  # grants and throttles when it started
        self._chain_rate: float | None = None  # the rate before a run of kept cuts
        self.reconfigure(qps, margin_s=margin_s, adaptive=adaptive)
        self._next_due = -math.inf
        self._paused_until = -math.inf
        self._recovered_at = -math.inf
        self._lock: asyncio.Lock | None = None
        self._granted = 0
        self._wait_total = 0.0
        self._throttle_events = 0
        self._decreases = 0
        self._undone = 0

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
        self._trial = None  # a trial or hold measured against the old budget means nothing now
        self._chain_rate = None
        self._failed_trials = 0
        self._hold_until = -math.inf

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def max_rate(self) -> float:
        """The configured rate (grants/s): ``limit / (window + margin)``."""
        return self._max_rate

    @property
    def limit(self) -> int:
        """Grants allowed in any ``window_s`` (+ margin)."""
        return self._limit

    @property
    def paused_until(self) -> float:
        """The monotonic time before which no slot is granted (rule 3, or :meth:`pause`)."""
        return self._paused_until

    def pause(self, seconds: float) -> None:
        """Grant nothing for ``seconds`` from now (a pause decided elsewhere, e.g. a fleet's)."""
        if seconds > 0:
            until = self._clock.monotonic() + min(seconds, self._max_pause)
            self._paused_until = max(self._paused_until, until)

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
            undone=self._undone,
            holding=self._clock.monotonic() < self._hold_until,
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
        recent = self._recent_grants
        if not recent or recent[-1] < now - self._trial_s:
            self._active_since = now  # the first grant after an idle spell
        _note(recent, now, now - self._trial_s)
        self._next_due = max(due, self._paused_until) + 1.0 / self._rate
        self._granted += 1

    def on_throttled(self, retry_after_s: float | None) -> None:
        now = self._clock.monotonic()
        self._throttle_events += 1
        _note(self._recent_throttles, now, now - self._trial_s)
        self._judge(now)
        previous, self._last_throttle = self._last_throttle, now
        if now - previous > self._isolated_s:
            return  # one throttle after a quiet spell: a jitter blip; only its request waits
        if retry_after_s is not None and retry_after_s > 0 and self._may_pause(now):
            self._paused_until = max(self._paused_until, now + min(retry_after_s, self._max_pause))
        if now < self._hold_until and self._above_floor(now):
            self._hold_until = now  # throttles grew beyond the noise we held for
        if (
            self._adaptive
            and self._trial is None
            and now >= self._hold_until
            and now - self._active_since >= self._trial_s  # a "before" to judge the cut by
        ):
            self._cut(now)

    def _may_pause(self, now: float) -> bool:
        """Rule 3's exceptions: a hold (the throttles are known noise) and a trial (a pause
        would stop the very traffic the trial measures); only the throttled request waits."""
        return self._trial is None and now >= self._hold_until

    def _cut(self, now: float) -> None:
        """Rule 4: cut the rate and put the cut on trial against the ``trial_s`` before it."""
        grants, throttles = self._recent(now)
        self._trial = _Trial(
            started=now,
            until=now + self._trial_s,
            deadline=now + _LONGEST_TRIAL * self._trial_s,
            rate_before=self._rate,
            granted=self._granted,
            throttled=self._throttle_events,
            before_grants=grants,
            before_throttles=throttles - 1,  # not the one that made us cut: a biased pick
        )
        if self._chain_rate is None:
            self._chain_rate = self._rate  # the first of a run of kept cuts
        self._rate = max(self._min_rate, self._rate * self._decrease)
        self._decreases += 1

    def _recent(self, now: float) -> tuple[int, int]:
        """Grants and throttles in the last ``trial_s``."""
        horizon = now - self._trial_s
        for times in (self._recent_grants, self._recent_throttles):
            while times and times[0] < horizon:
                times.popleft()
        return len(self._recent_grants), len(self._recent_throttles)

    def _above_floor(self, now: float) -> bool:
        """Whether the recent throttle fraction is clearly above the one a hold was for."""
        # Since the hold began, not the last moments: checked at every throttle, a short
        # window would see noise climb "clearly" above the floor now and then.
        grants = self._granted - self._hold_counts[0]
        throttles = self._throttle_events - self._hold_counts[1]
        if grants < _MIN_GRANTS:
            return False
        floor_throttles, floor_grants = self._floor
        return throttles * floor_grants > floor_throttles * grants and _moved(
            floor_throttles, floor_grants, throttles, grants, self._z
        )

    def _judge(self, now: float) -> None:
        """Rule 5, once the trial is over: keep the cut if it helped, else undo it and hold."""
        trial = self._trial
        if trial is None or now < trial.until:
            return
        grants = self._granted - trial.granted
        throttles = self._throttle_events - trial.throttled
        expected = grants * trial.before_throttles / max(1, trial.before_grants)
        # Enough throttles came to tell they did not fall, or were to be expected if they did not.
        persisted = throttles >= max(_EVIDENCE, expected)
        told = grants >= _MIN_GRANTS and (expected >= _EVIDENCE or persisted)
        if not told and now < trial.deadline:
            return  # too few grants or throttles either way to tell yet: go on
        self._trial = None
        self._recovered_at = now
        if grants < _MIN_GRANTS:
            self._rate = trial.rate_before  # the meter went quiet: nothing to judge the cut by
            return
        before = (trial.before_throttles, trial.before_grants)
        # The throttle that made us cut is left out of "before" (a biased pick): fair when
        # asking whether throttles fell, not when asking whether they grew.
        grew = (throttles * before[1] > (before[0] + 1) * grants) and _moved(
            before[0] + 1, before[1], throttles, grants, self._z
        )
        fell = throttles * before[1] < before[0] * grants and _moved(
            *before, throttles, grants, self._z
        )
        if throttles < 2 or fell or grew:
            self._failed_trials = 0
            return  # the throttles stopped, fell or grew: they answer to the rate
        # Successes per second kept (within half the cut): only doomed requests were cut. The
        # rate before, not the grants before, is the yardstick: pauses thinned those out.
        kept = 1.0 - trial.before_throttles / max(1, trial.before_grants)
        if grants - throttles >= (1.0 + self._decrease) / 2.0 * trial.rate_before * kept * (
            now - trial.started
        ):
            self._failed_trials = 0
            return
        # Cutting did not help here, so the cuts kept before this one (on the same, smaller
        # evidence) probably did not either: back to where the run of cuts began.
        self._rate = max(trial.rate_before, self._chain_rate or 0.0)
        self._chain_rate = None
        self._undone += 1
        # Each cut in a row that did not help doubles the hold (up to 32 x hold_s).
        self._hold_until = now + self._hold_s * 2 ** min(self._failed_trials, 5)
        self._failed_trials += 1
        self._floor = (trial.before_throttles + throttles, trial.before_grants + grants)
        self._hold_counts = (self._granted, self._throttle_events)

    def _recover(self, now: float) -> None:
        """Rule 6 (also where a finished trial is judged)."""
        self._judge(now)
        frozen = self._trial is not None or now < self._hold_until
        if not frozen and self._rate < self._max_rate:
            elapsed = max(0.0, now - self._recovered_at)
            self._rate = min(self._max_rate, self._rate + self._recovery * elapsed)
            if self._rate >= self._max_rate:
                self._chain_rate = None
        self._recovered_at = now


def _moved(throttles_a: int, grants_a: int, throttles_b: int, grants_b: int, z: float) -> bool:
    """Whether two throttle fractions differ by at least ``z`` standard errors (two-proportion
    z-test; no grants on a side counts as a difference, nothing to compare with)."""
    if grants_a <= 0 or grants_b <= 0:
        return True
    pooled = (throttles_a + throttles_b) / (grants_a + grants_b)
    variance = pooled * (1.0 - pooled) * (1.0 / grants_a + 1.0 / grants_b)
    diff = throttles_a / grants_a - throttles_b / grants_b
    return variance <= 0.0 or diff * diff >= z * z * variance


def _note(times: deque[float], now: float, horizon: float) -> None:
    """Append ``now`` to ``times`` and drop the times before ``horizon``."""
    times.append(now)
    while times[0] < horizon:
        times.popleft()
