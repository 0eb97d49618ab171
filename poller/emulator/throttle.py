"""Per-account, per-action QPS over sliding one-second windows, and the request statistics.

Budgets: every (account, action) pair has its own limiter, as on the real cloud, where each API
has its own per-account QPS: ``--qps`` for each legacy action (``BatchGetOnlineUsers`` and the
others), ``--live-message-qps`` for each action of the current interactive-messaging family. A
``BatchGetOnlineUsers`` call never spends a ``CheckLiveMessageUsersInGroup`` budget, nor the
other way round.

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
from collections.abc import Iterable, Mapping
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
    """Totals, per-account and per-action blocks, limiters and injected-fault counts.

    A request counts in ``total`` on arrival, in its action's block once the action is known (a
    known ``Action``/``x-acs-action`` and version), and in its account's block and in the account's
    block under its action once its key is known (even if the signature then fails).
    ``responses_by_code`` counts the cloud ``Code`` of each answer, ``"OK"`` for successes (partial
    answers included) and ``"Malformed"`` for injected malformed bodies; hangs and resets send no
    answer and count in ``no_response_total``. ``throttled_total`` counts genuine limiter refusals
    only; injected spurious throttling shows in ``responses_by_code`` and
    ``faults_injected["throttle"]``.
    """

    def __init__(
        self,
        qps: int,
        action_qps: Mapping[str, int] | None = None,
        *,
        live_message_qps: int | None = None,
        known_actions: Iterable[str] = (),
    ) -> None:
        """``qps``: the limit of any action not in ``action_qps`` (the legacy ones);
        ``known_actions`` appear in :meth:`as_dict` even before their first call."""
        self.qps = qps
        self.live_message_qps = live_message_qps
        self.action_qps: dict[str, int] = dict(action_qps or {})
        self.known_actions = tuple(known_actions)
        self.total = StatsBlock()
        self.accounts: dict[str, StatsBlock] = {}
        self.actions: dict[str, StatsBlock] = {}
        self.account_actions: dict[tuple[str, str], StatsBlock] = {}
        self.limiters: dict[tuple[str, str], SlidingWindowLimiter] = {}
        self.faults_injected: Counter[str] = Counter()

    def qps_of(self, action: str) -> int:
        return self.action_qps.get(action, self.qps)

    def account(self, name: str) -> StatsBlock:
        block = self.accounts.get(name)
        if block is None:
            block = self.accounts[name] = StatsBlock()
        return block

    def action(self, name: str) -> StatsBlock:
        block = self.actions.get(name)
        if block is None:
            block = self.actions[name] = StatsBlock()
        return block

    def account_action(self, account: str, action: str) -> StatsBlock:
        block = self.account_actions.get((account, action))
        if block is None:
            block = self.account_actions[(account, action)] = StatsBlock()
        return block

    def limiter(self, account: str, action: str) -> SlidingWindowLimiter:
        limiter = self.limiters.get((account, action))
        if limiter is None:
            limiter = SlidingWindowLimiter(self.qps_of(action))
            self.limiters[(account, action)] = limiter
        return limiter

    def admit(self, blocks: Iterable[StatsBlock], now: float) -> None:
        self.total.admit(now)
        for block in blocks:
            block.admit(now)

    def responded(self, blocks: Iterable[StatsBlock], code: str, status: int) -> None:
        status_key = str(status)
        for b in (self.total, *blocks):
            b.responses_by_code[code] += 1
            b.responses_by_status[status_key] += 1

    def throttled(self, blocks: Iterable[StatsBlock]) -> None:
        """A genuine refusal by the limiter (injected spurious throttling is not counted)."""
        self.total.throttled_total += 1
        for block in blocks:
            block.throttled_total += 1

    def no_response(self, blocks: Iterable[StatsBlock]) -> None:
        self.total.no_response_total += 1
        for block in blocks:
            block.no_response_total += 1

    def reset(self) -> None:
        """Zero every counter and empty the throttle windows."""
        self.total = StatsBlock()
        self.accounts = {}
        self.actions = {}
        self.account_actions = {}
        for limiter in self.limiters.values():
            limiter.reset()
        self.faults_injected = Counter()

    def as_dict(self) -> dict[str, Any]:
        """The ``/_emulator/stats`` document."""
        names = sorted({*self.known_actions, *self.actions})
        actions: dict[str, Any] = {}
        for name in names:
            block = self.actions.get(name) or StatsBlock()
            accounts = {
                account: b.as_dict()
                for (account, action), b in sorted(self.account_actions.items())
                if action == name
            }
            actions[name] = {"qps": self.qps_of(name), **block.as_dict(), "accounts": accounts}
        out: dict[str, Any] = {"qps": self.qps}
        if self.live_message_qps is not None:
            out["live_message_qps"] = self.live_message_qps
        out.update(
            {
                "total": self.total.as_dict(),
                "accounts": {n: b.as_dict() for n, b in sorted(self.accounts.items())},
                "actions": actions,
                "faults_injected": dict(self.faults_injected),
            }
        )
        return out
