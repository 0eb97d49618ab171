"""Retry policy (pure): which errors, how long to wait, and how many retries in total.

Backoff is "full jitter": the n-th retry waits ``uniform(0, min(cap, base * 2**(n-1)))``, with
``base = throttle_backoff_base_s`` after throttling; a server hint (``x-acs-retry-after``) is a
floor, clamped to the cap. A :class:`RetryBudget` keeps retries to about ``ratio`` of first
attempts (Envoy/gRPC style): every first attempt earns ``ratio`` of a token, every retry spends
one, and a small floor of tokens lets a healthy run absorb a few early failures. When the cloud
is down the budget runs dry and requests fail fast instead of tripling the load.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from poller.config import RetryConfig
from poller.core.errors import PollerError, ThrottledError

__all__ = ["RetryBudget", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 5.0
    throttle_backoff_base_s: float = 1.0

    @classmethod
    def from_config(cls, cfg: RetryConfig) -> RetryPolicy:
        return cls(
            max_attempts=cfg.max_attempts,
            backoff_base_s=cfg.backoff_base_s,
            backoff_cap_s=cfg.backoff_cap_s,
            throttle_backoff_base_s=cfg.throttle_backoff_base_s,
        )

    def should_retry(self, error: PollerError, attempts_made: int) -> bool:
        return error.retriable and not error.fatal and attempts_made < self.max_attempts

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

    def __init__(self, ratio: float = 0.2, min_tokens: float = 10.0) -> None:
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
