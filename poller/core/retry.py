"""Retries: the policy (which errors, how long to wait), the budget (how many in total), and
the one retry loop every call to the cloud goes through.

Backoff is "full jitter": the n-th retry waits ``uniform(0, min(cap, base * 2**(n-1)))``, with
``base = throttle_backoff_base_s`` after throttling; a server hint (``x-acs-retry-after``) is a
floor, clamped to the cap. A :class:`RetryBudget` keeps retries to about ``ratio`` of first
attempts (Envoy/gRPC style): every first attempt earns ``ratio`` of a token, every retry spends
one, and a small floor of tokens lets a healthy run absorb a few early failures. When the cloud
is down the budget runs dry and requests fail fast instead of tripling the load. Retries of
throttled requests spend no token: they wait for a rate slot like every request, so the rate
meter already bounds their load.

:class:`Retrier` runs one call (a batch, a discovery page) through attempts: each attempt takes
a rate slot (the first one may arrive with its slot already granted), is timed, and ends in one
:class:`~poller.core.stats.Attempt` event; a throttling answer slows the rate meter down; a
retriable failure is retried after backoff if the policy, the budget, the caller's stop signal
and the deadline all allow it. An ``immediate`` failure (a kept-alive connection that died before
answering) is sent again at once, without backoff or a retry token.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .clock import Clock
from .errors import PollerError, ThrottledError
from .ratelimit import RateMeter
from .stats import Attempt, AttemptListener, outcome_of

__all__ = [
    "DEFAULT_BUDGET_MIN_TOKENS",
    "DEFAULT_BUDGET_RATIO",
    "Outcome",
    "Retrier",
    "RetryBudget",
    "RetryPolicy",
]

T = TypeVar("T")

#: Retries may spend about this fraction of first attempts ...
DEFAULT_BUDGET_RATIO = 0.2
#: ... plus this floor of tokens, so a healthy run absorbs a few early failures.
DEFAULT_BUDGET_MIN_TOKENS = 10.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 5.0
    throttle_backoff_base_s: float = 1.0
    #: A throttled request was not served: it may be tried this often in all (while the rate
    #: meter learns a lower budget, a run of throttles for one batch is no failure of it).
    max_throttled_attempts: int = 10

    def should_retry(self, error: PollerError, attempts_made: int) -> bool:
        if not error.retriable or error.fatal:
            return False
        if isinstance(error, ThrottledError):
            return attempts_made < max(self.max_attempts, self.max_throttled_attempts)
        return attempts_made < self.max_attempts

    def backoff_s(self, error: PollerError, retry_number: int, rng: random.Random) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        base = (
            self.throttle_backoff_base_s
            if isinstance(error, ThrottledError)
            else self.backoff_base_s
        )
        try:
            ceiling = min(self.backoff_cap_s, base * 2.0 ** (retry_number - 1))
        except OverflowError:
            ceiling = self.backoff_cap_s
        delay = rng.uniform(0.0, ceiling)
        hint = getattr(error, "retry_after_s", None)
        if isinstance(hint, float | int) and hint > 0:
            delay = max(delay, min(float(hint), self.backoff_cap_s))
        return delay


class RetryBudget:
    __slots__ = ("_cap", "_ratio", "denied", "spent", "tokens")

    def __init__(
        self, ratio: float = DEFAULT_BUDGET_RATIO, min_tokens: float = DEFAULT_BUDGET_MIN_TOKENS
    ) -> None:
        self._ratio = ratio
        self._cap = max(min_tokens, 1.0)
        self.tokens = min_tokens
        self.spent = 0
        self.denied = 0

    def on_first_attempt(self) -> None:
        self.tokens = min(self._cap, self.tokens + self._ratio)

    def try_spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.spent += 1
            return True
        self.denied += 1
        return False


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """How a call ended: its ``value``, or the last ``error`` after ``attempts`` attempts.

    ``deadline`` is true when a retry was due but the deadline would pass during its backoff.
    """

    value: T | None
    error: PollerError | None
    attempts: int
    deadline: bool = False

    def unwrap(self) -> T:
        """The value, or the error raised."""
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


class Retrier:
    """The retry loop, shared by every call (see the module docstring).

    ``listener`` receives every :class:`Attempt`. The policy and budget can be swapped between
    calls (a reloaded config) with :meth:`configure`.
    """

    __slots__ = ("_clock", "_rng", "budget", "listener", "policy")

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        listener: AttemptListener | None = None,
    ) -> None:
        self.policy = policy
        self.budget = budget
        self.listener = listener
        self._clock = clock
        self._rng = rng or random.Random()

    def configure(self, policy: RetryPolicy, budget: RetryBudget) -> None:
        self.policy = policy
        self.budget = budget

    def spend(self) -> bool:
        """Take a retry token for a retry decided outside the loop (a partial answer)."""
        return self.budget.try_spend()

    async def run(
        self,
        call: Callable[[], Awaitable[T]],
        meter: RateMeter,
        *,
        action: str,
        sweep: int | None = None,
        attempt: int = 1,
        retry_of: str | None = None,
        slot_wait_s: float | None = None,
        stopping: Callable[[], bool] | None = None,
        deadline: float | None = None,
    ) -> Outcome[T]:
        """Attempt ``call`` until it succeeds or may not be retried.

        ``attempt`` numbers the first attempt made here (a re-poll continues a batch's count)
        and ``retry_of`` says why it is made; ``slot_wait_s`` is set when its rate slot was
        already granted (and how long that took). ``stopping()`` true, or a backoff that would
        end past ``deadline`` (monotonic), means no further retry.
        """
        clock = self._clock
        if attempt == 1:
            self.budget.on_first_attempt()
        while True:
            waited = await meter.acquire() if slot_wait_s is None else slot_wait_s
            slot_wait_s = None
            started = clock.monotonic()
            try:
                value = await call()
            except PollerError as err:
                self._emit(action, attempt, err, started, waited, retry_of, sweep)
                if isinstance(err, ThrottledError):
                    meter.on_throttled(err.retry_after_s)
                if not self.policy.should_retry(err, attempt) or (stopping and stopping()):
                    return Outcome(None, err, attempt)
                if not err.immediate:
                    delay = self.policy.backoff_s(err, attempt, self._rng)
                    if deadline is not None and clock.monotonic() + delay >= deadline:
                        return Outcome(None, err, attempt, deadline=True)
                    # A throttled request was not served, and its retry takes a rate slot like
                    # any request: it cannot add load beyond the budget the meter keeps, so it
                    # spends no retry token (those stop amplification when the cloud fails).
                    throttled = isinstance(err, ThrottledError)
                    if not throttled and not self.budget.try_spend():
                        return Outcome(None, err, attempt)
                    await clock.sleep(delay)
                attempt += 1
                retry_of = err.code
                continue
            self._emit(action, attempt, None, started, waited, retry_of, sweep)
            return Outcome(value, None, attempt)

    def _emit(
        self,
        action: str,
        number: int,
        error: PollerError | None,
        started: float,
        waited: float,
        retry_of: str | None,
        sweep: int | None,
    ) -> None:
        listener = self.listener
        if listener is not None:
            listener(
                Attempt(
                    action=action,
                    number=number,
                    outcome=outcome_of(error),
                    duration_s=self._clock.monotonic() - started,
                    rate_wait_s=waited,
                    retry_of=retry_of,
                    error=error,
                    sweep=sweep,
                )
            )
