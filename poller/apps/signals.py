"""Stop signals, one helper for every command.

SIGTERM and SIGINT call ``on_stop(signum)`` once: the command stops starting work and drains.
A second one exits the process at once with 128 + the signal number, for an operator who will
not wait. SIGHUP, when ``on_hup`` is given, asks for a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from types import TracebackType
from typing import Self

from .exits import signal_exit_code

__all__ = ["StopSignals"]

log = logging.getLogger("poller")

_STOP = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """``with StopSignals(on_stop, on_hup=...) as signals:`` inside the running loop."""

    def __init__(
        self, on_stop: Callable[[int], None], *, on_hup: Callable[[], None] | None = None
    ) -> None:
        self._on_stop = on_stop
        self._on_hup = on_hup
        self._installed: list[signal.Signals] = []
        #: The stop signals received, in order.
        self.received: list[int] = []

    @property
    def first(self) -> int | None:
        return self.received[0] if self.received else None

    def _stop(self, signum: int) -> None:
        if self.received:
            log.warning("second signal %d: exiting at once", signum)
            os._exit(signal_exit_code(signum))
        self.received.append(signum)
        self._on_stop(signum)

    def __enter__(self) -> Self:
        loop = asyncio.get_running_loop()
        wanted: list[tuple[signal.Signals, Callable[..., None], tuple[object, ...]]] = [
            (sig, self._stop, (sig,)) for sig in _STOP
        ]
        if self._on_hup is not None:
            wanted.append((signal.SIGHUP, self._on_hup, ()))
        for sig, handler, args in wanted:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler, *args)
                self._installed.append(sig)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        self._installed.clear()
