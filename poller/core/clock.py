"""Time, in one place: every read of the clock and every sleep in poller goes through a
:class:`Clock`, so tests can inject a fake one and nothing else reads time directly.

``monotonic()`` measures intervals (rate slots, deadlines, schedules, idle connections);
``time()`` is the wall clock (record timestamps, request signatures, "last sweep at" metrics);
``sleep()`` waits. :class:`LoopClock` is the real one. :class:`SkewedClock` wraps one and adds
the offset learned from the server's clock (``server time - local time``) to ``time()``, so
signatures and record timestamps follow the server when the local clock is off.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = [
    "OFFSET_THRESHOLD_S",
    "Clock",
    "LoopClock",
    "SkewedClock",
    "epoch_ms",
    "http_date",
    "parse_http_date",
    "system_clock",
]

#: A server's reading moves the offset only when it differs from the current one by more than
#: this: HTTP dates have a resolution of one second, so smaller corrections would be jitter.
OFFSET_THRESHOLD_S = 2.0


class Clock(Protocol):
    """Monotonic time in seconds, wall-clock time, and a way to wait."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """Real time: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``.

    Not ``loop.time()``: uvloop's loop time is libuv's cached, millisecond-granular clock, so
    two readings half a millisecond apart can be equal, and a rate meter would then sleep for
    slots that are already due. Tests inject a fake :class:`Clock` instead.
    """

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "LoopClock()"


class SkewedClock:
    """``base`` with ``offset_s`` added to its wall time: ``time()`` is ``base.time() + offset_s``;
    ``monotonic()`` and ``sleep()`` pass through. ``offset_s`` (server time minus local time) is
    set directly or learned from a server's reading with :meth:`observe`."""

    __slots__ = ("_date_epoch", "_date_raw", "base", "offset_s")

    def __init__(self, base: Clock, offset_s: float = 0.0) -> None:
        self.base = base
        self.offset_s = offset_s
        self._date_raw: str | None = None
        self._date_epoch: float | None = None

    @classmethod
    def wrap(cls, clock: Clock) -> SkewedClock:
        """``clock`` itself when it is already a :class:`SkewedClock` (so the offset is shared),
        else a new one around it."""
        return clock if isinstance(clock, SkewedClock) else cls(clock)

    def monotonic(self) -> float:
        return self.base.monotonic()

    def time(self) -> float:
        return self.base.time() + self.offset_s

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)

    def implied_offset(self, server_time: float) -> float:
        """The offset a server's reading of its clock (epoch seconds), taken now, implies."""
        return server_time - self.base.time()

    def adopt(self, offset_s: float, threshold_s: float = OFFSET_THRESHOLD_S) -> bool:
        """Take ``offset_s`` when it differs from the current offset by more than
        ``threshold_s``; ``True`` when the offset changed."""
        if abs(offset_s - self.offset_s) <= threshold_s:
            return False
        self.offset_s = offset_s
        return True

    def observe(self, server_time: float, threshold_s: float = OFFSET_THRESHOLD_S) -> bool:
        """Learn from a server's reading of its clock (see :meth:`adopt`)."""
        return self.adopt(self.implied_offset(server_time), threshold_s)

    def observe_http_date(self, value: str) -> float | None:
        """Learn from a server's ``Date`` header (see :meth:`adopt`): the offset it implies, or
        ``None`` when it is unreadable. An HTTP date is truncated to the second, so the middle of
        that second is taken as the server's time."""
        if value != self._date_raw:  # the header changes once a second: parse it once
            self._date_raw, self._date_epoch = value, parse_http_date(value)
        if self._date_epoch is None:
            return None
        implied = self.implied_offset(self._date_epoch + 0.5)
        self.adopt(implied)
        return implied

    def __repr__(self) -> str:
        return f"SkewedClock({self.base!r}, offset_s={self.offset_s:+.3f})"


def parse_http_date(value: str) -> float | None:
    """An HTTP-date (``Sun, 06 Nov 1994 08:49:37 GMT``) as epoch seconds; ``None`` if unreadable."""
    try:
        import email.utils  # only where a Date header is read: keeps `import poller` light

        parts = email.utils.parsedate_tz(value)
        if parts is None:
            return None
        if parts[9] is None:  # no zone: HTTP dates are GMT
            parts = (*parts[:9], 0)
        return float(email.utils.mktime_tz(parts))
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def http_date(epoch_s: float) -> str:
    """``epoch_s`` as an HTTP-date (IMF-fixdate, GMT), truncated to the second."""
    import email.utils

    return email.utils.formatdate(int(epoch_s), usegmt=True)


_SYSTEM = LoopClock()


def system_clock() -> LoopClock:
    """The shared real clock (stateless, so one instance serves everyone)."""
    return _SYSTEM


def epoch_ms(clock: Clock | None = None) -> int:
    """Wall-clock time in epoch milliseconds (record timestamps)."""
    return int((clock or _SYSTEM).time() * 1000)
