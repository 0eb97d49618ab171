"""One action's rate meter shared by two lanes: sweeps and on-demand lookups.

Both lanes spend the same meter (so the window guarantee holds for their sum, and in a fleet
for the fleet, since a fleet meter is the one shared). Who may ask the meter for the next slot
is decided by a *turn*: one caller at a time waits inside the meter, and when it is granted
the turn passes on:

* to whoever waits, when only one lane has callers waiting (idle lookups leave the whole budget
  to sweeps, and the other way round);
* when both wait, to lookups if their share of the slots granted in the last ``window_s`` is
  below ``min_share``, else to sweeps. So lookups are sure of ``min_share`` of the budget while
  they have work (a floor, not a cap), and sweeps keep the rest.
* A lane asks for one slot at a time (a sweep's spawn loop, a lookup's dispatcher): the caller
  just granted is not waiting yet when the turn passes, though it will be a moment later. So
  when the rule picks the lane just granted and it has nobody waiting, the turn is kept for it
  for ``grace_s`` (2 ms): were it given to the other lane, the lanes would simply alternate.
  If the lane does not come back within the grace, the turn goes to whoever waits.

A lane's waiters are served in order. A caller cancelled while it waits for its turn leaves
nothing behind; one cancelled after the turn reached it passes the turn on. An uncontended
acquire costs no extra suspension.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Final

from .clock import Clock, system_clock
from .ratelimit import RateMeter, RateStats

__all__ = ["GRACE_S", "LOOKUPS", "SWEEPS", "Lane", "SharedMeter"]

SWEEPS: Final = "sweeps"
LOOKUPS: Final = "lookups"
#: How long the turn is kept for the lane just granted (see the module doc).
GRACE_S: Final = 0.002


class Lane:
    """One lane of a :class:`SharedMeter`: a :class:`~poller.core.ratelimit.RateMeter`."""

    __slots__ = ("_shared", "granted", "name", "waiters")

    def __init__(self, shared: SharedMeter, name: str) -> None:
        self._shared = shared
        self.name = name
        self.waiters: deque[asyncio.Future[None]] = deque()
        #: Slots this lane was granted.
        self.granted = 0

    def __repr__(self) -> str:
        return f"<Lane {self.name} granted={self.granted} waiting={len(self.waiters)}>"

    async def acquire(self) -> float:
        return await self._shared.acquire(self)

    def on_throttled(self, retry_after_s: float | None) -> None:
        self._shared.meter.on_throttled(retry_after_s)

    def stats(self) -> RateStats:
        return self._shared.meter.stats()


class SharedMeter:
    """``meter`` split between :attr:`sweeps` and :attr:`lookups`; see the module doc."""

    def __init__(
        self,
        meter: RateMeter,
        *,
        min_share: float,
        clock: Clock | None = None,
        window_s: float = 1.0,
        grace_s: float = GRACE_S,
    ) -> None:
        if not 0.0 <= min_share <= 1.0:
            raise ValueError(f"min_share must be between 0 and 1; got {min_share}")
        self.meter = meter
        self.min_share = min_share
        self._clock = clock or system_clock()
        self._window = window_s
        self._grace = grace_s
        self.sweeps = Lane(self, SWEEPS)
        self.lookups = Lane(self, LOOKUPS)
        self._busy = False  # a caller holds the turn (waits inside the meter), or it is kept
        self._kept_for: Lane | None = None  # the lane the turn is kept for (see module doc)
        self._keeping: asyncio.TimerHandle | None = None
        self._recent: deque[tuple[float, bool]] = deque()  # (granted at, to lookups)
        self._recent_lookups = 0

    def __repr__(self) -> str:
        return f"<SharedMeter min_share={self.min_share} {self.sweeps!r} {self.lookups!r}>"

    def lookup_share(self) -> float:
        """The lookups' share of the slots granted in the last ``window_s`` (0 when none)."""
        self._expire(self._clock.monotonic())
        return self._share()

    def _share(self) -> float:
        return self._recent_lookups / len(self._recent) if self._recent else 0.0

    async def acquire(self, lane: Lane) -> float:
        """Wait for ``lane``'s turn, then for a slot of the meter; the seconds waited."""
        start = self._clock.monotonic()
        if self._kept_for is lane:
            self._stop_keeping()  # the turn was kept for this lane: take it
        elif self._busy:
            turn = asyncio.get_running_loop().create_future()
            lane.waiters.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._pass_turn()  # the turn reached us as we were cancelled
                else:
                    with contextlib.suppress(ValueError):  # unless passed over already
                        lane.waiters.remove(turn)
                raise
        else:
            self._busy = True
        try:
            await self.meter.acquire()
        except BaseException:
            self._pass_turn()
            raise
        now = self._clock.monotonic()
        self._note(lane, now)
        self._pass_turn(lane)
        return now - start

    def _note(self, lane: Lane, now: float) -> None:
        lane.granted += 1
        to_lookups = lane is self.lookups
        self._recent.append((now, to_lookups))
        self._recent_lookups += to_lookups
        self._expire(now)

    def _expire(self, now: float) -> None:
        recent, horizon = self._recent, now - self._window
        while recent and recent[0][0] < horizon:
            self._recent_lookups -= recent.popleft()[1]

    def _pass_turn(self, granted: Lane | None = None) -> None:
        """Hand the turn on; ``granted`` is the lane whose caller was just granted a slot (its
        grant expired the window already, so the per-request path reads the clock once)."""
        share = self._share() if granted is not None else self.lookup_share()
        first, second = (
            (self.lookups, self.sweeps) if share < self.min_share else (self.sweeps, self.lookups)
        )
        if _wake_first(first.waiters):
            return
        if first is granted and second.waiters and self._grace > 0:
            self._kept_for = first  # it will ask again in a moment
            self._keeping = asyncio.get_running_loop().call_later(self._grace, self._give_up)
            return
        if not _wake_first(second.waiters):
            self._busy = False

    def _stop_keeping(self) -> None:
        self._kept_for = None
        if self._keeping is not None:
            self._keeping.cancel()
            self._keeping = None

    def _give_up(self) -> None:
        """The lane the turn was kept for did not come back: whoever waits gets it."""
        self._kept_for = self._keeping = None
        self._pass_turn()


def _wake_first(waiters: deque[asyncio.Future[None]]) -> bool:
    """Give the turn to the first waiter still waiting (one cancelled a moment ago is skipped)."""
    while waiters:
        turn = waiters.popleft()
        if not turn.done():
            turn.set_result(None)
            return True
    return False
