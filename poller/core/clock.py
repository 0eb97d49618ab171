"""The only place poller reads time or sleeps; everything else takes a :class:`Clock`."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "LoopClock", "epoch_ms"]


class Clock(Protocol):
    """Monotonic time in seconds and a way to wait for it."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """Real time: ``time.monotonic`` and ``asyncio.sleep``.

    Not ``loop.time()``: uvloop's loop time is libuv's cached, millisecond-granular clock, so
    two readings half a millisecond apart can be equal, and a rate meter would then sleep for
    slots that are already due. Tests inject a fake :class:`Clock` instead.
    """

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def epoch_ms() -> int:
    """Wall-clock time in epoch milliseconds (record timestamps)."""
    return time.time_ns() // 1_000_000
