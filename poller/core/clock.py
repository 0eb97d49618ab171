"""Time, in one place: every read of the clock and every sleep in poller goes through a
:class:`Clock`, so tests can inject a fake one and nothing else reads time directly.

``monotonic()`` measures intervals (rate slots, deadlines, schedules, idle connections);
``time()`` is the wall clock (record timestamps, request signatures, "last sweep at" metrics);
``sleep()`` waits. :class:`LoopClock` is the real one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "LoopClock", "epoch_ms", "system_clock"]


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


_SYSTEM = LoopClock()


def system_clock() -> LoopClock:
    """The shared real clock (stateless, so one instance serves everyone)."""
    return _SYSTEM


def epoch_ms(clock: Clock | None = None) -> int:
    """Wall-clock time in epoch milliseconds (record timestamps)."""
    return int((clock or _SYSTEM).time() * 1000)
