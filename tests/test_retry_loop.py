"""The one retry loop (poller.core.retry.Retrier): one Attempt event per attempt, throttling
signals, the budget, stop and deadline, and slots already granted."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import pytest

from poller.core.errors import (
    AuthError,
    PollerError,
    ServerError,
    StaleConnection,
    ThrottledError,
)
from poller.core.retry import Retrier, RetryBudget, RetryPolicy
from poller.core.stats import Attempt, SweepStats, Totals
from tests.conftest import FakeClock, InstantRateMeter


def failing(errors: list[PollerError | None]) -> Callable[[], Awaitable[str]]:
    """A call that raises ``errors[n]`` on attempt n (``None``: succeeds)."""
    calls = iter(errors)

    async def call() -> str:
        error = next(calls)
        if error is not None:
            raise error
        return "ok"

    return call


def server_error() -> ServerError:
    return ServerError("down", code="InternalError", http_status=500, request_id="r1")


def make(
    *, max_attempts: int = 4, budget: RetryBudget | None = None
) -> tuple[Retrier, list[Attempt], FakeClock]:
    events: list[Attempt] = []
    clock = FakeClock()
    retrier = Retrier(
        RetryPolicy(max_attempts=max_attempts),
        budget or RetryBudget(),
        clock,
        rng=random.Random(3),
        listener=events.append,
    )
    return retrier, events, clock


async def test_one_event_per_attempt_with_the_reason_for_each_retry() -> None:
    retrier, events, clock = make()
    meter = InstantRateMeter()
    outcome = await retrier.run(
        failing([server_error(), server_error(), None]), meter, action="BatchGetOnlineUsers"
    )
    assert outcome.value == "ok" and outcome.error is None and outcome.attempts == 3
    assert [(e.number, e.outcome, e.retry_of) for e in events] == [
        (1, "server_error", None),
        (2, "server_error", "InternalError"),
        (3, "ok", "InternalError"),
    ]
    assert all(e.action == "BatchGetOnlineUsers" for e in events)
    assert meter.granted == 3  # every attempt paid the rate meter
    assert len(clock.sleeps) == 2  # a backoff before each retry


async def test_a_slot_granted_before_the_call_is_not_taken_twice() -> None:
    retrier, events, _ = make()
    meter = InstantRateMeter()
    await retrier.run(failing([server_error(), None]), meter, action="A", slot_wait_s=0.25)
    assert meter.granted == 1  # only the retry took a slot here
    assert [e.rate_wait_s for e in events] == [0.25, 0.0]


async def test_throttling_slows_the_meter_and_is_counted_once_everywhere() -> None:
    retrier, events, _ = make()
    meter = InstantRateMeter()
    throttled = ThrottledError("slow", code="Throttling.User", http_status=400, retry_after_s=0.5)
    await retrier.run(failing([throttled, None]), meter, action="A", sweep=1)
    assert meter.throttled == [0.5]
    stats, totals = SweepStats(sweep=1), Totals()
    for event in events:
        stats.on_attempt(event)
        totals.on_attempt(event)
    assert (stats.requests, stats.retries, stats.throttled, stats.first_attempts) == (2, 1, 1, 1)
    assert (totals.requests, totals.retries, totals.throttled) == (2, 1, 1)


async def test_fatal_and_exhausted_calls_end_with_their_error() -> None:
    retrier, _, _ = make(max_attempts=2)
    meter = InstantRateMeter()
    auth = AuthError("bad key", code="InvalidAccessKeyId.NotFound", http_status=404)
    outcome = await retrier.run(failing([auth]), meter, action="A")
    assert outcome.error is auth and outcome.attempts == 1
    outcome = await retrier.run(failing([server_error(), server_error()]), meter, action="A")
    assert isinstance(outcome.error, ServerError) and outcome.attempts == 2
    with pytest.raises(ServerError):
        outcome.unwrap()


async def test_budget_first_attempts_earn_and_retries_spend() -> None:
    budget = RetryBudget(ratio=0.5, min_tokens=0.0)
    retrier, _, _ = make(budget=budget)
    meter = InstantRateMeter()
    # First attempt earns 0.5 token: not enough for a retry.
    outcome = await retrier.run(failing([server_error()]), meter, action="A")
    assert outcome.attempts == 1 and budget.denied == 1
    # The second call's first attempt brings it to 1.0: one retry is allowed.
    outcome = await retrier.run(failing([server_error(), None]), meter, action="A")
    assert outcome.attempts == 2 and budget.spent == 1


async def test_throttled_requests_are_retried_without_a_retry_token() -> None:
    """A burst of throttles (the account's window is full) must not drain the budget that
    guards against failures: the retries wait for rate slots like every request."""
    budget = RetryBudget(ratio=0.0, min_tokens=0.0)  # no retry token at all
    retrier, _, _ = make(budget=budget)
    meter = InstantRateMeter()
    throttled = ThrottledError("slow", code="Throttling.User", http_status=400, retry_after_s=0.1)
    outcome = await retrier.run(failing([throttled, throttled, throttled, None]), meter, action="A")
    assert outcome.value == "ok" and outcome.attempts == 4
    assert budget.spent == 0 and budget.denied == 0 and meter.granted == 4
    # A batch that keeps being throttled gets max_throttled_attempts (10), not max_attempts
    # (4): it was never served. Any other failure still ends it after max_attempts.
    outcome = await retrier.run(failing([throttled] * 10), meter, action="A")
    assert outcome.error is throttled and outcome.attempts == 10
    error = server_error()
    outcome = await retrier.run(failing([throttled] * 3 + [error]), meter, action="A")
    assert outcome.error is error and outcome.attempts == 4


async def test_no_retry_once_stopping_or_past_the_deadline() -> None:
    retrier, _, clock = make()
    meter = InstantRateMeter()
    stopped = await retrier.run(failing([server_error()]), meter, action="A", stopping=lambda: True)
    assert stopped.attempts == 1 and not stopped.deadline
    late = await retrier.run(
        failing([server_error()]), meter, action="A", deadline=clock.monotonic()
    )
    assert late.attempts == 1 and late.deadline and isinstance(late.error, ServerError)


async def test_a_continued_call_numbers_its_attempts_on() -> None:
    retrier, events, _ = make()
    budget_tokens = retrier.budget.tokens
    await retrier.run(
        failing([None]), InstantRateMeter(), action="A", attempt=2, retry_of="MissingInResponse"
    )
    assert [(e.number, e.retry_of) for e in events] == [(2, "MissingInResponse")]
    assert retrier.budget.tokens == budget_tokens  # only first attempts earn tokens


async def test_a_stale_connection_is_sent_again_at_once_without_a_token() -> None:
    budget = RetryBudget(ratio=0.0, min_tokens=0.0)  # no retry token at all
    retrier, events, clock = make(budget=budget)
    meter = InstantRateMeter()
    stale = StaleConnection("the server closed the kept-alive connection")
    outcome = await retrier.run(failing([stale, None]), meter, action="A")
    assert outcome.value == "ok" and outcome.attempts == 2
    assert clock.sleeps == [] and budget.spent == 0 and budget.denied == 0
    assert meter.granted == 2  # the second send took its own rate slot
    assert [(e.outcome, e.retry_of) for e in events] == [
        ("connection_error", None),
        ("ok", "ConnectionError"),
    ]
