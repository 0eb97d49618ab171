"""Retry policy (which errors, how long to wait) and the retry budget."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.config import RetryConfig
from poller.core.errors import (
    ApiError,
    AttemptTimeout,
    AuthError,
    ClockSkewError,
    ConfigError,
    InvalidRequestError,
    MalformedResponse,
    NonceReusedError,
    PermissionDenied,
    PollerError,
    ServerError,
    SinkError,
    ThrottledError,
    TransportError,
    UnknownApiError,
)
from poller.core.retry import RetryBudget, RetryPolicy

POLICY = RetryPolicy(
    max_attempts=4, backoff_base_s=0.1, backoff_cap_s=5.0, throttle_backoff_base_s=1.0
)


def server_error(retry_after_s: float | None = None) -> ServerError:
    return ServerError("boom", code="InternalError", http_status=500, retry_after_s=retry_after_s)


def throttled(retry_after_s: float | None = None) -> ThrottledError:
    return ThrottledError(
        "slow down", code="Throttling.User", http_status=400, retry_after_s=retry_after_s
    )


@pytest.mark.parametrize(
    ("error", "base"),
    [
        (server_error(), 0.1),
        (TransportError("reset"), 0.1),
        (MalformedResponse("truncated"), 0.1),
        (throttled(), 1.0),
    ],
)
def test_full_jitter_bounds_per_retry_number(error: PollerError, base: float) -> None:
    rng = random.Random(1234)
    for n in range(1, 16):
        ceiling = min(POLICY.backoff_cap_s, base * 2 ** (n - 1))
        delays = [POLICY.backoff_s(error, n, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays), (n, max(delays), ceiling)
        # full jitter: spread over the whole range, not pinned at either end
        assert max(delays) > 0.8 * ceiling
        assert min(delays) < 0.2 * ceiling


def test_seeded_rng_gives_repeatable_delays() -> None:
    first = [POLICY.backoff_s(server_error(), n, random.Random(7)) for n in range(1, 6)]
    again = [POLICY.backoff_s(server_error(), n, random.Random(7)) for n in range(1, 6)]
    assert first == again


def test_throttling_uses_throttle_base() -> None:
    policy = RetryPolicy(backoff_base_s=0.01, backoff_cap_s=60.0, throttle_backoff_base_s=2.0)
    rng = random.Random(0)
    normal = [policy.backoff_s(server_error(), 1, rng) for _ in range(300)]
    slow = [policy.backoff_s(throttled(), 1, rng) for _ in range(300)]
    assert max(normal) <= 0.01
    assert max(slow) <= 2.0
    assert max(slow) > 1.5


@pytest.mark.parametrize("make", [throttled, server_error])
def test_retry_after_is_a_floor(make: Callable[[float | None], ApiError]) -> None:
    rng = random.Random(3)
    error = make(2.5)
    for n in range(1, 10):
        for _ in range(50):
            delay = POLICY.backoff_s(error, n, rng)
            assert 2.5 <= delay <= POLICY.backoff_cap_s


@pytest.mark.parametrize("hint", [5.0, 30.0, 1e9, math.inf])
def test_retry_after_is_clamped_to_cap(hint: float) -> None:
    rng = random.Random(4)
    for n in (1, 2, 10):
        assert POLICY.backoff_s(throttled(retry_after_s=hint), n, rng) == POLICY.backoff_cap_s


@pytest.mark.parametrize("hint", [0.0, -1.0, math.nan])
def test_meaningless_retry_after_is_ignored(hint: float) -> None:
    rng = random.Random(5)
    delays = [POLICY.backoff_s(throttled(retry_after_s=hint), 1, rng) for _ in range(100)]
    assert all(0.0 <= d <= 1.0 for d in delays)
    assert min(delays) < 0.2


@pytest.mark.parametrize("n", [60, 1024, 1025, 5000, 10**6, 10**18])
def test_huge_retry_numbers_stay_at_cap(n: int) -> None:
    rng = random.Random(6)
    for error in (server_error(), throttled()):
        delays = [POLICY.backoff_s(error, n, rng) for _ in range(50)]
        assert all(0.0 <= d <= POLICY.backoff_cap_s for d in delays)
        assert max(delays) > 0.5 * POLICY.backoff_cap_s


@settings(derandomize=True, deadline=None, max_examples=150)
@given(
    base=st.floats(min_value=0.0, max_value=100.0),
    throttle_base=st.floats(min_value=0.0, max_value=100.0),
    cap=st.floats(min_value=0.0, max_value=1000.0),
    n=st.integers(min_value=1, max_value=10**6),
    hint=st.one_of(st.none(), st.floats(allow_nan=True)),
    is_throttle=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_always_within_zero_and_cap(
    base: float,
    throttle_base: float,
    cap: float,
    n: int,
    hint: float | None,
    is_throttle: bool,
    seed: int,
) -> None:
    policy = RetryPolicy(
        backoff_base_s=base, backoff_cap_s=cap, throttle_backoff_base_s=throttle_base
    )
    error = throttled(hint) if is_throttle else server_error(hint)
    delay = policy.backoff_s(error, n, random.Random(seed))
    assert math.isfinite(delay)
    assert 0.0 <= delay <= cap


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (throttled(), True),
        (server_error(), True),
        (TransportError("reset"), True),
        (AttemptTimeout("no answer"), True),
        (MalformedResponse("not JSON"), True),
        (NonceReusedError("dup", code="SignatureNonceUsed", http_status=400), True),
        (UnknownApiError("?", code="Weird", http_status=502), True),
        (UnknownApiError("?", code="Weird", http_status=418), False),
        (AuthError("no", code="SignatureDoesNotMatch", http_status=400), False),
        (ClockSkewError("clock", code="InvalidTimeStamp.Expired", http_status=400), False),
        (PermissionDenied("no", code="Forbidden", http_status=403), False),
        (InvalidRequestError("bad", code="InvalidParameter", http_status=400), False),
        (ConfigError("bad"), False),
        (SinkError("disk full"), False),
    ],
)
def test_should_retry_by_error(error: PollerError, expected: bool) -> None:
    assert POLICY.should_retry(error, 1) is expected


def test_should_retry_stops_at_max_attempts() -> None:
    error = server_error()
    assert [POLICY.should_retry(error, a) for a in range(1, 7)] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    assert RetryPolicy(max_attempts=1).should_retry(error, 1) is False


def test_fatal_error_is_never_retried_even_if_marked_retriable() -> None:
    error = AuthError("no", code="InvalidAccessKeyId.NotFound", http_status=404)
    error.retriable = True
    assert POLICY.should_retry(error, 1) is False


def test_policy_from_config() -> None:
    cfg = RetryConfig(
        max_attempts=7, backoff_base_s=0.3, backoff_cap_s=9.0, throttle_backoff_base_s=2.0
    )
    assert cfg.policy() == RetryPolicy(
        max_attempts=7, backoff_base_s=0.3, backoff_cap_s=9.0, throttle_backoff_base_s=2.0
    )


# ----------------------------------------------------------------------------------------------
# RetryBudget


def test_budget_when_everything_fails() -> None:
    budget = RetryBudget(ratio=0.2, min_tokens=10.0)
    granted = 0
    for _ in range(1000):
        budget.on_first_attempt()
        for _retry in range(3):  # max_attempts = 4
            if not budget.try_spend():
                break
            granted += 1
    assert granted <= 10 + 0.2 * 1000
    assert granted >= 0.2 * 1000 - 5  # the budget does allow about ratio of first attempts
    assert budget.spent == granted
    assert budget.denied > 0


def test_budget_floor_absorbs_early_failures() -> None:
    budget = RetryBudget(ratio=0.2, min_tokens=10.0)
    assert [budget.try_spend() for _ in range(11)] == [True] * 10 + [False]
    assert (budget.spent, budget.denied) == (10, 1)


def test_budget_tokens_capped_after_long_healthy_run() -> None:
    budget = RetryBudget(ratio=0.2, min_tokens=10.0)
    for _ in range(100_000):
        budget.on_first_attempt()
    assert budget.tokens <= 10.0
    granted = sum(budget.try_spend() for _ in range(100))
    assert granted == 10  # a healthy past does not buy a retry storm


def test_budget_with_zero_floor_still_allows_ratio() -> None:
    budget = RetryBudget(ratio=0.5, min_tokens=0.0)
    assert budget.try_spend() is False
    budget.on_first_attempt()
    budget.on_first_attempt()
    assert budget.try_spend() is True


@settings(derandomize=True, deadline=None, max_examples=150)
@given(
    ratio=st.floats(min_value=0.0, max_value=1.0),
    min_tokens=st.floats(min_value=0.0, max_value=50.0),
    ops=st.lists(st.booleans(), max_size=400),
)
def test_budget_invariants(ratio: float, min_tokens: float, ops: list[bool]) -> None:
    budget = RetryBudget(ratio=ratio, min_tokens=min_tokens)
    cap = max(min_tokens, 1.0)
    firsts = tries = 0
    for is_first in ops:
        if is_first:
            firsts += 1
            budget.on_first_attempt()
        else:
            tries += 1
            budget.try_spend()
        assert 0.0 <= budget.tokens <= cap
    assert budget.spent + budget.denied == tries
    assert budget.spent <= min_tokens + ratio * firsts + 1e-6
