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
    """The running event loop's clock (``loop.time``), so patched loop time drives it in tests."""

    __slots__ = ()

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def epoch_ms() -> int:
    """Wall-clock time in epoch milliseconds (record timestamps)."""
    return time.time_ns() // 1_000_000
