"""Seeded fault injection and response latency.

Fault kinds (``--faults "500=0.05,503=0.02,throttle=0.01,..."``; rates are probabilities per
request, their sum at most 1):

==============  ===============================================================================
``500``         ``InternalError`` envelope, HTTP 500
``503``         ``ServiceUnavailable`` envelope, HTTP 503
``server_error`` ``ServerError`` envelope, HTTP 500 (the current interactive-messaging family's
                "unknown server error, retry later"; answered for legacy actions too)
``throttle``    spurious ``Throttling.User`` (400) with ``x-acs-retry-after`` (1-1000 ms)
``hang``        no answer for ``hang_s`` seconds, then the connection is closed
``reset_before`` connection reset (RST) before processing: the nonce is not consumed
``reset_after`` the request is processed (nonce consumed, state read), then the connection reset
``malformed``   either a 200 with truncated JSON or a 502 HTML error page (seeded choice)
``partial``     a 200 whose per-UID list (``OnlineUsers``, ``Users`` or ``UserList``) misses one
                requested UID, duplicates one, or adds one that was not requested (seeded
                choice; BatchGetOnlineUsers, CheckLiveMessageUsersInGroup and
                CheckLiveMessageUsersOnline only: other actions answer normally)
==============  ===============================================================================

Every kind applies to every action (both families). Determinism: exactly one ``random()`` draw per
eligible request (authenticated and admitted), in the order requests reach that point. The draw
picks the kind by cumulative probability (kinds in the table's order) and its position inside the
kind's slice, rescaled to ``[0, 1)``, is the ``detail`` that drives every secondary choice; so the
same seed gives the same sequence of kinds and variants, whatever the latency or the other traffic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "FAULT_KINDS",
    "HTML_ERROR_PAGE",
    "FaultDecision",
    "FaultInjector",
    "FaultRates",
    "Latency",
    "partial_online_users",
    "truncate_json",
]

FAULT_KINDS: Final = (
    "500",
    "503",
    "server_error",
    "throttle",
    "hang",
    "reset_before",
    "reset_after",
    "malformed",
    "partial",
)

HTML_ERROR_PAGE: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>Tengine</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Validated fault probabilities; only non-zero kinds are kept, in :data:`FAULT_KINDS` order."""

    rates: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        total = 0.0
        for kind, rate in self.rates:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
            if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
                raise ValueError(f"fault rate for {kind!r} must be within [0, 1]")
            total += rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {total:g}, more than 1")

    @classmethod
    def from_mapping(cls, rates: Mapping[str, Any]) -> FaultRates:
        for kind in rates:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
        parsed: list[tuple[str, float]] = []
        for kind in FAULT_KINDS:
            if kind in rates:
                value = rates[kind]
                if isinstance(value, bool) or not isinstance(value, int | float | str):
                    raise ValueError(f"fault rate for {kind!r} must be a number")
                try:
                    rate = float(value)
                except ValueError:
                    raise ValueError(f"fault rate for {kind!r} must be a number") from None
                if rate != 0.0:
                    parsed.append((kind, rate))
        return cls(tuple(parsed))

    @classmethod
    def parse(cls, spec: str) -> FaultRates:
        """``"500=0.05,hang=0.01"``; an empty string means no faults."""
        rates: dict[str, str] = {}
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            kind, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"expected KIND=RATE, got {item!r}")
            if kind.strip() in rates:
                raise ValueError(f"fault kind {kind.strip()!r} given twice")
            rates[kind.strip()] = value.strip()
        return cls.from_mapping(rates)

    def as_dict(self) -> dict[str, float]:
        return dict(self.rates)

    def __str__(self) -> str:
        return ",".join(f"{kind}={rate:g}" for kind, rate in self.rates)

    def __bool__(self) -> bool:
        return bool(self.rates)


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """The fault to inject and a uniform ``detail`` in ``[0, 1)`` for its secondary choices."""

    kind: str
    detail: float


class FaultInjector:
    """Draws one fault decision per eligible request from a seeded RNG."""

    __slots__ = ("_rng", "_thresholds", "rates", "seed")

    def __init__(self, rates: FaultRates, seed: int) -> None:
        self.rates = rates
        self.seed = seed
        self._rng = random.Random(seed)
        self._thresholds = self._cumulative(rates)

    @staticmethod
    def _cumulative(rates: FaultRates) -> tuple[tuple[float, float, str], ...]:
        out = []
        low = 0.0
        for kind, rate in rates.rates:
            out.append((low, low + rate, kind))
            low += rate
        return tuple(out)

    def configure(self, rates: FaultRates, seed: int | None = None) -> None:
        """Swap the rates; with a ``seed`` the sequence restarts, else the stream continues."""
        self.rates = rates
        self._thresholds = self._cumulative(rates)
        if seed is not None:
            self.seed = seed
            self._rng = random.Random(seed)

    def draw(self) -> FaultDecision | None:
        if not self._thresholds:
            return None
        u = self._rng.random()
        for low, high, kind in self._thresholds:
            if u < high:
                return FaultDecision(kind, min((u - low) / (high - low), math.nextafter(1.0, 0)))
        return None


@dataclass(frozen=True, slots=True)
class Latency:
    """Added response delay: ``mean_ms`` ± uniform ``jitter_ms`` (never negative)."""

    mean_ms: float = 0.0
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean_ms) and math.isfinite(self.jitter_ms)):
            raise ValueError("latency must be finite")
        if self.mean_ms < 0 or self.jitter_ms < 0:
            raise ValueError("latency and jitter must be >= 0")

    @classmethod
    def parse(cls, spec: str) -> Latency:
        """``"50"``, ``"50±10"`` or ``"50+-10"`` (milliseconds)."""
        text = spec.strip().replace("+-", "±")
        mean, sep, jitter = text.partition("±")
        try:
            return cls(float(mean), float(jitter) if sep else 0.0)
        except ValueError:
            raise ValueError(f"expected MS or MS±JITTER, got {spec!r}") from None

    def __bool__(self) -> bool:
        return self.mean_ms > 0 or self.jitter_ms > 0

    def __str__(self) -> str:
        return f"{self.mean_ms:g}±{self.jitter_ms:g}" if self.jitter_ms else f"{self.mean_ms:g}"

    def sample_s(self, rng: random.Random) -> float:
        if not self.jitter_ms:
            return self.mean_ms / 1000.0
        return max(0.0, self.mean_ms + rng.uniform(-self.jitter_ms, self.jitter_ms)) / 1000.0


def truncate_json(body: bytes, detail: float) -> bytes:
    """A proper prefix of a JSON object (never valid JSON), cut at a ``detail``-chosen point."""
    if len(body) < 2:
        return b""
    return body[: 1 + int(detail * (len(body) - 1))]


def partial_online_users(
    users: list[dict[str, Any]], requested: list[str], detail: float, *, join_time: bool = True
) -> tuple[str, list[dict[str, Any]]]:
    """Damage a per-UID answer list: ``("missing"|"duplicate"|"extra", damaged copy)``.

    An extra entry is ``{"UserId", "Online": false}``, plus ``"JoinTime": 0`` with ``join_time``
    (the legacy ``OnlineUsers`` shape)."""
    scaled = detail * 3
    variant = ("missing", "duplicate", "extra")[min(int(scaled), 2)]
    pick = scaled - int(scaled)
    out = list(users)
    if variant == "extra" or not out:
        taken = set(requested)
        uid = f"extra-{int(pick * 1_000_000):06d}"
        while uid in taken:
            uid += "x"
        extra: dict[str, Any] = {"UserId": uid, "Online": False}
        if join_time:
            extra["JoinTime"] = 0
        out.insert(int(pick * (len(out) + 1)), extra)
        return "extra", out
    index = int(pick * len(out))
    if variant == "missing":
        del out[index]
    else:
        out.insert(index + 1, dict(out[index]))
    return variant, out
