"""On-demand lookups: single questions coalesced into batches on the sweeps' rate meter.

A service that embeds poller is asked "is this user online?" one user at a time. A
:class:`Lookup` (made by :meth:`poller.Poller.lookup`) gathers such questions about one target
into batches of the API's batch size (the DataLoader pattern)::

    questions ─▶ cache? ─▶ already waiting or in flight? (share it) ─▶ waiting (bounded)
        ─▶ dispatcher: linger, in-flight slot, rate slot (the lookups lane) ─▶ cut the batch
        ─▶ batch task (poller.engine.batch: retries, re-poll of missing UIDs) ─▶ answers

* A batch is cut when its rate slot is granted (or at once when a full batch is waiting), so
  under load batches fill up while they wait for a slot; ``linger_ms`` only bounds how long
  the first question of a batch waits for company while slots are free.
* A UID already waiting or in flight is never asked twice: later questions share the answer.
* Answers (presence records) younger than ``cache_ttl_s`` are served from a bounded LRU cache;
  every answer says how old it is (``age_ms``).
* At most ``max_pending`` questions wait for a batch; beyond, :class:`LookupOverloaded` at once.
* A caller that gives up (its timeout, its task cancelled) only withdraws itself: the batch
  others wait on goes on, and a question nobody waits for any more is dropped before it is sent.
* Invalid user IDs are answered at once with an ``InvalidUserId`` error record, never sent.

Records are those of a sweep with ``sweep`` 0 (lookups belong to no sweep), plus ``age_ms``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, TypeAlias, cast

from poller.core.apis import api_spec
from poller.core.batching import invalid_reason
from poller.core.clock import Clock, epoch_ms
from poller.core.errors import PollerError
from poller.core.ratelimit import RateMeter
from poller.core.records import (
    CANCELLED,
    INVALID_USER_ID,
    MISSING_IN_RESPONSE,
    Batch,
    ErrorRecord,
    PresenceRecord,
    Record,
    Target,
    error_record,
)
from poller.core.retry import Retrier
from poller.core.stats import SweepStats
from poller.wire.client import BatchFetcher

from .batch import StopControl, SweepContext, poll_batch

__all__ = ["SOURCES", "Answer", "Lookup", "LookupListener", "LookupOverloaded", "LookupStats"]

log = logging.getLogger("poller.lookup")

Answer: TypeAlias = PresenceRecord | ErrorRecord
"""What a question gets: the UID's presence record, or an error record."""

#: Where a question's answer came from (``poller_lookup_questions_total{source}``).
SOURCES = ("cache", "shared", "new", "invalid", "overloaded")


class LookupOverloaded(PollerError):
    """Too many questions wait for a batch already: this one was refused, not queued."""

    retriable = True
    default_code = "Overloaded"


class LookupListener(Protocol):
    """Receives what a lookup does (metrics)."""

    def on_question(self, source: str) -> None:
        """A question was asked; ``source`` is one of :data:`SOURCES`."""

    def on_batch(self, uids: int) -> None:
        """A batch of ``uids`` user IDs got its rate slot and is sent."""

    def on_answer(self, wait_s: float) -> None:
        """A call (``get`` or ``get_many``) got its answers after ``wait_s`` seconds (answers
        from the cache or at once included)."""


@dataclass(slots=True)
class LookupStats:
    """Counters of one lookup handle."""

    questions: int = 0
    cache_hits: int = 0
    shared: int = 0
    invalid: int = 0
    overloaded: int = 0
    timeouts: int = 0
    batches: int = 0
    uids_sent: int = 0


class _Question:
    """One UID's pending question, shared by every caller that asks it meanwhile."""

    __slots__ = ("asked_at", "callers", "future", "uid")

    def __init__(self, uid: str, future: asyncio.Future[tuple[Answer, float]], now: float):
        self.uid = uid
        self.future = future  # (the answer, when it arrived)
        self.asked_at = now
        self.callers = 0


class Lookup:
    """Coalesced, cached, shared questions about one target; see the module doc.

    Made by :meth:`poller.Poller.lookup` and closed with it (or earlier with :meth:`aclose`,
    or as ``async with``). ``get`` and ``get_many`` may be called from any number of tasks.
    """

    def __init__(
        self,
        target: Target,
        *,
        fetcher: Callable[[], BatchFetcher],
        retrier: Retrier,
        meter: RateMeter,
        inflight: Callable[[], asyncio.Semaphore],
        clock: Clock,
        linger_s: float,
        cache_ttl_s: float,
        cache_size: int,
        max_pending: int,
        timeout_s: float,
        max_uid_bytes: int = 128,
        listener: LookupListener | None = None,
        on_close: Callable[[Lookup], None] | None = None,
    ) -> None:
        if linger_s < 0 or cache_ttl_s < 0 or timeout_s <= 0:
            raise ValueError("linger_ms and cache_ttl_s must be >= 0, timeout_s > 0")
        if cache_size < 1 or max_pending < 1:
            raise ValueError("cache_size and max_pending must be >= 1")
        self.target = target
        self.batch_size = api_spec(target.api).batch_size
        self.linger_s = linger_s
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self.stats = LookupStats()
        self._fetcher = fetcher
        self._retrier = retrier
        self._meter = meter
        self._inflight = inflight
        self._clock = clock
        self._max_uid_bytes = max_uid_bytes
        self._listener = listener
        self._on_close = on_close
        self._waiting: OrderedDict[str, _Question] = OrderedDict()
        self._in_flight: dict[str, _Question] = {}
        self._cache: OrderedDict[str, tuple[PresenceRecord, float]] = OrderedDict()
        self._control = StopControl()
        self._work = asyncio.Event()
        self._lingering: asyncio.Future[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<Lookup {self.target} waiting={len(self._waiting)} "
            f"in_flight={len(self._in_flight)} cached={len(self._cache)}>"
        )

    @property
    def pending(self) -> int:
        """Questions waiting for a batch."""
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        """User IDs sent and not answered yet."""
        return len(self._in_flight)

    # -- questions ------------------------------------------------------------------------

    async def get(self, uid: str, *, timeout_s: float | None = None) -> Answer:
        """``uid``'s record: its presence, or an error record (``InvalidUserId`` at once).

        Raises :class:`LookupOverloaded` at once when too many questions wait already, and
        :class:`TimeoutError` when no answer came within ``timeout_s`` (default: the handle's).
        """
        asked = self._clock.monotonic()
        found = self._ask(uid, asked)
        if not isinstance(found, _Question):
            self._answered(asked)
            return found
        try:
            answer = (await self._wait([found], asked, timeout_s))[0]
        finally:
            self._withdraw(found)
        self._answered(asked)
        return answer

    async def get_many(
        self, uids: Iterable[str], *, timeout_s: float | None = None
    ) -> dict[str, Answer]:
        """Every distinct UID's record (in the order asked), as :meth:`get` would answer it;
        one timeout for all.

        An overload refuses the whole call (the questions it had asked are withdrawn)."""
        asked = self._clock.monotonic()
        found: dict[str, Answer | _Question] = {}
        questions: list[_Question] = []
        try:
            for uid in uids:
                if uid not in found:
                    found[uid] = answer = self._ask(uid, asked)
                    if isinstance(answer, _Question):
                        questions.append(answer)
            got = await self._wait(questions, asked, timeout_s) if questions else []
        finally:
            for q in questions:
                self._withdraw(q)
        self._answered(asked)
        waited = dict(zip((q.uid for q in questions), got, strict=True))
        return {
            uid: waited[uid] if isinstance(answer, _Question) else answer
            for uid, answer in found.items()
        }

    def _ask(self, uid: str, now: float) -> Answer | _Question:
        """An immediate answer, or the question to wait on (with this caller counted)."""
        if self._closed:
            raise RuntimeError("lookup used after it was closed")
        stats = self.stats
        stats.questions += 1
        reason = invalid_reason(uid, self._max_uid_bytes)
        if reason is not None:
            stats.invalid += 1
            self._event("invalid")
            return error_record(
                self.target,
                uid,
                INVALID_USER_ID,
                reason,
                sweep=0,
                polled_at=epoch_ms(self._clock),
            )
        cached = self._cached(uid, now)
        if cached is not None:
            stats.cache_hits += 1
            self._event("cache")
            return cached
        question = self._waiting.get(uid) or self._in_flight.get(uid)
        if question is not None:
            stats.shared += 1
            self._event("shared")
        else:
            if len(self._waiting) >= self.max_pending:
                stats.overloaded += 1
                self._event("overloaded")
                raise LookupOverloaded(
                    f"lookup of {self.target} overloaded: {len(self._waiting)} questions wait "
                    f"for a batch already (max_pending {self.max_pending})"
                )
            future: asyncio.Future[tuple[Answer, float]] = (
                asyncio.get_running_loop().create_future()
            )
            question = self._waiting[uid] = _Question(uid, future, now)
            self._event("new")
            self._start()
            if len(self._waiting) >= self.batch_size and self._lingering is not None:
                self._lingering.cancel()  # a full batch waits for no more company
        question.callers += 1
        return question

    async def _wait(
        self, questions: list[_Question], asked: float, timeout_s: float | None
    ) -> list[Answer]:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        answers: list[Answer] = []
        try:
            async with asyncio.timeout(timeout):
                for q in questions:
                    # shield: a caller that gives up must not cancel what others wait on
                    record, arrived = await asyncio.shield(q.future)
                    answers.append(self._deliver(record, arrived))
        except TimeoutError:
            self.stats.timeouts += 1
            what = questions[0].uid if len(questions) == 1 else f"{len(questions)} user IDs"
            raise TimeoutError(
                f"no answer for {what!s} of {self.target} within {timeout} s"
            ) from None
        return answers

    def _answered(self, asked: float) -> None:
        """A call (``get`` or ``get_many``) got its answers: how long it waited."""
        if self._listener is not None:
            self._listener.on_answer(self._clock.monotonic() - asked)

    def _withdraw(self, question: _Question) -> None:
        """One caller no longer waits; a question nobody waits for is not sent."""
        question.callers -= 1
        if question.callers <= 0 and self._waiting.get(question.uid) is question:
            del self._waiting[question.uid]
            question.future.cancel()

    def _deliver(self, record: Answer, arrived: float) -> Answer:
        out = record.copy()
        out["age_ms"] = max(0, round((self._clock.monotonic() - arrived) * 1000.0))
        return out

    def _event(self, source: str) -> None:
        if self._listener is not None:
            self._listener.on_question(source)

    # -- the cache ------------------------------------------------------------------------

    def _cached(self, uid: str, now: float) -> Answer | None:
        if self.cache_ttl_s <= 0:
            return None
        entry = self._cache.get(uid)
        if entry is None:
            return None
        record, arrived = entry
        if now - arrived > self.cache_ttl_s:
            del self._cache[uid]
            return None
        self._cache.move_to_end(uid)
        return self._deliver(record, arrived)

    def _remember(self, record: PresenceRecord, arrived: float) -> None:
        cache = self._cache
        cache[record["uid"]] = (record, arrived)
        cache.move_to_end(record["uid"])
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    # -- batches --------------------------------------------------------------------------

    def _start(self) -> None:
        self._work.set()
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(
                self._dispatch(), name=f"poller-lookup-{self.target}"
            )
            self._dispatcher.add_done_callback(self._dispatcher_done)

    def _dispatcher_done(self, task: asyncio.Task[None]) -> None:
        """A dispatcher that failed (a bug) answers what waits and is replaced when needed."""
        if task.cancelled() or (failure := task.exception()) is None:
            return
        log.error("lookup dispatcher of %s failed: %r", self.target, failure, exc_info=failure)
        if self._dispatcher is task:
            self._dispatcher = None
        self._answer_waiting("Error", f"not sent: internal error ({type(failure).__name__})")

    async def _dispatch(self) -> None:
        clock, waiting = self._clock, self._waiting
        while True:
            if not waiting:
                self._work.clear()
                await self._work.wait()
                continue
            if len(waiting) < self.batch_size:
                delay = next(iter(waiting.values())).asked_at + self.linger_s - clock.monotonic()
                if delay > 0:
                    await self._linger(delay)
                    continue  # questions may have come, or been withdrawn, meanwhile
            inflight = self._inflight()
            await inflight.acquire()
            try:
                waited = await self._meter.acquire()
            except BaseException:
                inflight.release()
                raise
            questions: list[_Question] = []
            while waiting and len(questions) < self.batch_size:
                _, q = waiting.popitem(last=False)
                self._in_flight[q.uid] = q
                questions.append(q)
            if not questions:  # every question was withdrawn while the slot was awaited
                inflight.release()
                continue
            task = asyncio.create_task(self._run(questions, waited, inflight))
            self._control.tasks.add(task)
            task.add_done_callback(self._control.tasks.discard)

    async def _linger(self, delay: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(delay))
        self._lingering = sleeper
        try:
            await asyncio.wait((sleeper,))  # returns early when a full batch cancels it
        finally:
            self._lingering = None
            sleeper.cancel()

    async def _run(
        self, questions: list[_Question], waited: float, inflight: asyncio.Semaphore
    ) -> None:
        batch = Batch(self.target, tuple(q.uid for q in questions))
        stats = self.stats
        stats.batches += 1
        stats.uids_sent += len(questions)
        if self._listener is not None:
            self._listener.on_batch(len(questions))
        ctx = SweepContext(
            stats=SweepStats(sweep=0, started_at=self._clock.monotonic()),
            deadline=None,
            fetcher=self._fetcher(),
            retrier=self._retrier,
            meters={self.target.api: self._meter},
            clock=self._clock,
            control=self._control,
        )
        records: list[Record] | None = None
        try:
            records = await poll_batch(ctx, batch, waited)
        except Exception:  # a bug, never a failed request: those are error records
            log.exception("lookup batch of %s failed", self.target)
            records = ctx.failed(batch, None, code="Error", message="internal error")
        finally:
            inflight.release()
            if records is None:  # cancelled
                records = ctx.failed(
                    batch, None, code=CANCELLED, message="cancelled: the lookup was closed"
                )
            self._settle(questions, records)

    def _settle(self, questions: list[_Question], records: list[Record]) -> None:
        arrived = self._clock.monotonic()
        # a batch yields presence and error records only
        by_uid = {r["uid"]: cast(Answer, r) for r in records}
        for q in questions:
            record = by_uid.get(q.uid) or error_record(
                self.target,
                q.uid,
                MISSING_IN_RESPONSE,
                "no record for this user ID",
                sweep=0,
                polled_at=epoch_ms(self._clock),
            )
            if record["type"] == "presence" and self.cache_ttl_s > 0:
                self._remember(record, arrived)
            if self._in_flight.get(q.uid) is q:
                del self._in_flight[q.uid]
            if not q.future.done():
                q.future.set_result((record, arrived))

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def settled(self) -> None:
        """Wait until the batches in flight now are answered (new ones may start meanwhile)."""
        tasks = list(self._control.tasks)
        if tasks:
            await asyncio.wait(tasks)

    async def aclose(self) -> None:
        """Stop: questions not sent yet and batches in flight are answered ``Cancelled``."""
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            self._on_close(self)
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            dispatcher.cancel()
            await asyncio.wait((dispatcher,))  # no CancelledError (and traceback) kept here
        self._answer_waiting(CANCELLED, "not sent: the lookup was closed")
        tasks = list(self._control.tasks)
        self._control.abort("cancelled in flight: the lookup was closed")
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _answer_waiting(self, code: str, message: str) -> None:
        """Answer every question not sent yet with an error record."""
        now = epoch_ms(self._clock)
        arrived = self._clock.monotonic()
        questions = list(self._waiting.values())
        self._waiting.clear()
        for q in questions:
            if not q.future.done():
                record = error_record(self.target, q.uid, code, message, sweep=0, polled_at=now)
                q.future.set_result((record, arrived))
