"""Per-account QPS enforcement over sliding one-second windows, and the request statistics.

Window semantics (used both for enforcement and for the statistics): a one-second window is the
half-open interval ``(t - 1 s, t]``. A request arriving at ``t`` is admitted when fewer than
``qps`` requests were *admitted* in ``(t - 1 s, t]``; rejected requests do not count against the
budget (otherwise a client over the limit would lock itself out for good). Hence no half-open
one-second window ever holds more than ``qps`` admitted requests.

``max_*_in_any_1s_window`` is computed incrementally: each arrival drops timestamps older than one
second from a deque and compares the deque's length with the running maximum. The maximum over
windows ending at an arrival is the maximum over all windows, since sliding any window's end to
its last arrival keeps its count.

Times come from the caller (the emulator's injectable monotonic clock).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Any

__all__ = ["SlidingWindowLimiter", "Stats", "StatsBlock", "WindowMax"]

WINDOW_S = 1.0


class WindowMax:
    """Running maximum of events in any one-second window."""

    __slots__ = ("_times", "max")

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self.max = 0

    def add(self, now: float) -> None:
        times = self._times
        horizon = now - WINDOW_S
        while times and times[0] <= horizon:
            times.popleft()
        times.append(now)
        if len(times) > self.max:
            self.max = len(times)


class SlidingWindowLimiter:
    """At most ``qps`` admissions in any one-second window (``qps == 0``: unlimited)."""

    __slots__ = ("_admitted", "qps")

    def __init__(self, qps: int) -> None:
        if qps < 0:
            raise ValueError("qps must be >= 0")
        self.qps = qps
        self._admitted: deque[float] = deque()

    def try_acquire(self, now: float) -> int:
        """Admit (return 0) or refuse with the milliseconds until an admission is possible (≥ 1)."""
        if self.qps == 0:
            return 0
        admitted = self._admitted
        horizon = now - WINDOW_S
        while admitted and admitted[0] <= horizon:
            admitted.popleft()
        if len(admitted) < self.qps:
            admitted.append(now)
            return 0
        # The oldest admission leaves the window at admitted[0] + 1 s. Rounded up to whole ms,
        # ignoring float noise below a nanosecond (0.6000000000000227 s is 600 ms, not 601).
        return max(1, math.ceil((admitted[0] + WINDOW_S - now) * 1000 - 1e-6))

    def reset(self) -> None:
        self._admitted.clear()


class StatsBlock:
    """Counters for one account, or for all traffic."""

    __slots__ = (
        "admitted",
        "admitted_total",
        "arrivals",
        "no_response_total",
        "requests_total",
        "responses_by_code",
        "responses_by_status",
        "throttled_total",
    )

    def __init__(self) -> None:
        self.requests_total = 0
        self.admitted_total = 0
        self.throttled_total = 0
        self.no_response_total = 0
        self.responses_by_code: Counter[str] = Counter()
        self.responses_by_status: Counter[str] = Counter()
        self.arrivals = WindowMax()
        self.admitted = WindowMax()

    def arrive(self, now: float) -> None:
        self.requests_total += 1
        self.arrivals.add(now)

    def admit(self, now: float) -> None:
        self.admitted_total += 1
        self.admitted.add(now)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests_total": self.requests_total,
            "admitted_total": self.admitted_total,
            "throttled_total": self.throttled_total,
            "no_response_total": self.no_response_total,
            "responses_by_code": dict(self.responses_by_code),
            "responses_by_status": dict(self.responses_by_status),
            "max_requests_in_any_1s_window": self.arrivals.max,
            "max_admitted_in_any_1s_window": self.admitted.max,
        }


class Stats:
    """Totals, per-account blocks, per-account limiters and injected-fault counts.

    A request counts in ``total`` on arrival and in its account's block once its key is known
    (even if the signature then fails). ``responses_by_code`` counts the cloud ``Code`` of each
    answer, ``"OK"`` for successes (partial answers included) and ``"Malformed"`` for injected
    malformed bodies; hangs and resets send no answer and count in ``no_response_total``.
    ``throttled_total`` counts genuine limiter refusals only; injected spurious throttling shows
    in ``responses_by_code`` and ``faults_injected["throttle"]``.
    """

    def __init__(self, qps: int) -> None:
        self.qps = qps
        self.total = StatsBlock()
        self.accounts: dict[str, StatsBlock] = {}
        self.limiters: dict[str, SlidingWindowLimiter] = {}
        self.faults_injected: Counter[str] = Counter()

    def account(self, name: str) -> StatsBlock:
        block = self.accounts.get(name)
        if block is None:
            block = self.accounts[name] = StatsBlock()
        return block

    def limiter(self, name: str) -> SlidingWindowLimiter:
        limiter = self.limiters.get(name)
        if limiter is None:
            limiter = self.limiters[name] = SlidingWindowLimiter(self.qps)
        return limiter

    def responded(self, block: StatsBlock | None, code: str, status: int) -> None:
        status_key = str(status)
        for b in (self.total, block) if block is not None else (self.total,):
            b.responses_by_code[code] += 1
            b.responses_by_status[status_key] += 1

    def throttled(self, block: StatsBlock) -> None:
        """A genuine refusal by the limiter (injected spurious throttling is not counted)."""
        self.total.throttled_total += 1
        block.throttled_total += 1

    def no_response(self, block: StatsBlock | None) -> None:
        self.total.no_response_total += 1
        if block is not None:
            block.no_response_total += 1

    def reset(self) -> None:
        """Zero every counter and empty the throttle windows."""
        self.total = StatsBlock()
        self.accounts = {}
        for limiter in self.limiters.values():
            limiter.reset()
        self.faults_injected = Counter()

    def as_dict(self) -> dict[str, Any]:
        return {
            "qps": self.qps,
            "total": self.total.as_dict(),
            "accounts": {name: block.as_dict() for name, block in sorted(self.accounts.items())},
            "faults_injected": dict(self.faults_injected),
        }
