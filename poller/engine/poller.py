"""The poller: UID sources in, one merged record per UID out, at the rate ceiling and never over.

Data flow of one sweep::

    sources ─▶ Batcher (validate, dedupe, ≤20) ─▶ interleave targets ─▶ in-flight slot ─▶ rate slot
        ─▶ task: fetch (+ re-signed, re-paced retries) ─▶ merge ─▶ bounded queue ─▶ consumer/sinks

Rate and concurrency are two separate meters, both taken *before* a request task is spawned,
so live tasks never exceed ``max_in_flight`` whatever the input size. Every retry pays the rate
meter again. A failed batch is data (error records); only fatal conditions (credentials
rejected, a sink that cannot write, unreadable input) stop a sweep. The queue between polling
and the consumer is bounded: a slow consumer pauses polling instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Self

from poller.config import PollerConfig
from poller.core.batching import COMPACT_AFTER, Batcher, Rejected
from poller.core.clock import Clock, LoopClock, epoch_ms
from poller.core.errors import PermissionDenied, PollerError, ThrottledError
from poller.core.merge import error_records, merge_answer
from poller.core.ratelimit import PacedRateLimiter, RateMeter
from poller.core.records import Batch, ErrorRecord, Record, Target
from poller.core.retry import RetryBudget, RetryPolicy
from poller.core.stats import Observer, SweepStats, outcome_of
from poller.engine.sinks import Sink
from poller.engine.sources import UidFile, UidInput, iter_chunks
from poller.wire.client import BatchFetcher, LiveClient
from poller.wire.credentials import resolve_credentials
from poller.wire.signing import SigningCredentials

__all__ = ["Observer", "Poller", "SweepStats", "Work", "outcome_of"]

log = logging.getLogger("poller")

Work = tuple[Target, UidInput]


class _State:
    __slots__ = ("deadline", "stats")

    def __init__(self, stats: SweepStats, deadline: float | None) -> None:
        self.stats = stats
        self.deadline = deadline


class Poller:
    """Polls presence for any set of UIDs of one account.

    ::

        async with Poller(config) as poller:
            async for record in poller.sweep(Target("app", "group"), ["u1", "u2"]):
                ...

    Create it inside the event loop that will use it. The library never installs an event
    loop policy; the CLI runs it on uvloop where available.
    """

    def __init__(
        self,
        config: PollerConfig,
        *,
        fetcher: BatchFetcher | None = None,
        credentials: SigningCredentials | None = None,
        rate_meter: RateMeter | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.config = config
        self.observer = observer
        self._fetcher = fetcher
        self._credentials = credentials
        self._rate: RateMeter | None = rate_meter
        self._clock = clock or LoopClock()
        self._rng = rng or random.Random()
        self._policy = RetryPolicy.from_config(config.retry)
        self._budget = RetryBudget(config.retry.budget_ratio, config.retry.budget_min_tokens)
        self._client: LiveClient | None = None
        self._inflight: asyncio.Semaphore | None = None
        self._stop = False
        self._aborting = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeps = 0
        self._opened = False
        self.current: SweepStats | None = None
        self.last: SweepStats | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._opened:
            raise RuntimeError("a Poller can be opened only once")
        self._opened = True
        if self._fetcher is None:
            creds = self._credentials or resolve_credentials(self.config.credentials)
            self._client = LiveClient(
                self.config.api, creds, max_connections=self.config.limits.max_in_flight
            )
            await self._client.__aenter__()
            self._fetcher = self._client
        if self._rate is None:
            limits = self.config.limits
            self._rate = PacedRateLimiter(
                limits.qps,
                margin_s=limits.window_margin_ms / 1000.0,
                clock=self._clock,
                adaptive=limits.adaptive,
            )
        self._inflight = asyncio.Semaphore(self.config.limits.max_in_flight)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def request_stop(self) -> None:
        """Stop starting requests; in-flight ones finish, unsent UIDs get ``Cancelled`` records."""
        self._stop = True

    def abort_in_flight(self) -> None:
        """Cancel requests still in flight (after a drain timeout); their UIDs get ``Cancelled``."""
        self._stop = True
        self._aborting = True
        for task in list(self._tasks):
            task.cancel()

    @property
    def client(self) -> LiveClient | None:
        """The HTTP client (``None`` when a custom fetcher was given)."""
        return self._client

    @property
    def rate_meter(self) -> RateMeter:
        if self._rate is None:
            raise RuntimeError("Poller used outside 'async with'")
        return self._rate

    # -- public sweeps --------------------------------------------------------------------

    async def sweep(
        self, target: Target | tuple[str, str], uids: UidInput
    ) -> AsyncIterator[Record]:
        """One sweep over one target: yields exactly one record per distinct input UID."""
        if isinstance(target, tuple):
            target = Target(*target)
        async with contextlib.aclosing(self.sweep_batches([(target, uids)])) as batches:
            async for records in batches:
                for record in records:
                    yield record

    async def sweep_batches(self, work: Sequence[Work]) -> AsyncGenerator[list[Record], None]:
        """One sweep over several targets (their batches interleave), as lists of records.

        Raises the fatal error (e.g. :class:`~poller.core.errors.AuthError`) at the end if one
        stopped the sweep; every UID still got its record before that.
        """
        if self._inflight is None:
            raise RuntimeError("Poller used outside 'async with'")
        self._sweeps += 1
        stats = SweepStats(sweep=self._sweeps, started_at=self._clock.monotonic())
        deadline_s = self.config.sweep.deadline_s
        state = _State(stats, stats.started_at + deadline_s if deadline_s > 0 else None)
        self.current = stats
        opened_before = self._connections_opened()
        queue: asyncio.Queue[list[Record] | None] = asyncio.Queue(self.config.sweep.queue_size)

        async def produce() -> None:
            try:
                await self._run_sweep(work, state, queue)
            except asyncio.CancelledError:
                raise  # the consumer went away; nobody waits for the end marker
            except BaseException:
                await queue.put(None)  # the consumer is draining, so this cannot block for long
                raise
            await queue.put(None)

        task = asyncio.create_task(produce(), name=f"poller-sweep-{stats.sweep}")
        try:
            while (item := await queue.get()) is not None:
                yield item
            await task  # re-raises what stopped the producer, if anything
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            stats.finished_at = self._clock.monotonic()
            stats.connections_opened = self._connections_opened() - opened_before
            self.last = stats
        if stats.fatal is not None:
            raise stats.fatal

    def _connections_opened(self) -> int:
        fetcher = self._fetcher
        opened = fetcher.connections_opened if isinstance(fetcher, LiveClient) else None
        return opened or 0

    async def run_once(self, work: Sequence[Work], sinks: Iterable[Sink]) -> SweepStats:
        """One sweep written to ``sinks`` (flushed at the end). Returns its counters."""
        sinks = list(sinks)
        try:
            async with contextlib.aclosing(self.sweep_batches(work)) as batches:
                async for records in batches:
                    for sink in sinks:
                        await sink.write(records)
        finally:
            for sink in sinks:
                await sink.flush()
        assert self.last is not None
        return self.last

    # -- internals ------------------------------------------------------------------------

    async def _run_sweep(
        self, work: Sequence[Work], state: _State, queue: asyncio.Queue[list[Record] | None]
    ) -> None:
        stream = _interleave([self._batches(t, src, state.stats) for t, src in work])
        try:
            await self._spawn_batches(stream, state, queue)
        except BaseExceptionGroup as group:
            raise _collapse(group) from None
        finally:
            await stream.aclose()

    async def _spawn_batches(
        self,
        stream: AsyncGenerator[Batch | Rejected, None],
        state: _State,
        queue: asyncio.Queue[list[Record] | None],
    ) -> None:
        assert self._inflight is not None and self._rate is not None
        inflight, rate, stats = self._inflight, self._rate, state.stats
        async with asyncio.TaskGroup() as tg:
            async for item in stream:
                if isinstance(item, Rejected):
                    await self._emit(queue, stats, [_rejected_record(item, stats.sweep)])
                    continue
                reason = self._skip_reason(state)
                if reason is not None:
                    await self._emit(queue, stats, self._skipped(item, reason, stats))
                    continue
                await inflight.acquire()
                try:
                    waited = await rate.acquire()
                except BaseException:
                    inflight.release()
                    raise
                if self.observer is not None:
                    self.observer.rate_waited(waited)
                reason = self._skip_reason(state)
                if reason is not None:
                    inflight.release()
                    await self._emit(queue, stats, self._skipped(item, reason, stats))
                    continue
                self._budget.on_first_attempt()
                stats.first_attempts += 1
                task = tg.create_task(self._run_batch(item, state, queue))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _skip_reason(self, state: _State) -> tuple[str, str] | None:
        stats = state.stats
        if stats.fatal is not None:
            return stats.fatal.code, f"not sent: {stats.fatal.message}"
        if self._stop:
            stats.stopped = True
            return "Cancelled", "not sent: poller is stopping"
        if state.deadline is not None and self._clock.monotonic() >= state.deadline:
            return "DeadlineExceeded", "not sent: the sweep deadline passed"
        return None

    def _skipped(self, batch: Batch, reason: tuple[str, str], stats: SweepStats) -> list[Record]:
        stats.batches_failed += 1
        return error_records(
            batch,
            None,
            sweep=stats.sweep,
            polled_at=epoch_ms(),
            code=reason[0],
            message=reason[1],
            attempts=0,
        )

    async def _emit(
        self, queue: asyncio.Queue[list[Record] | None], stats: SweepStats, records: list[Record]
    ) -> None:
        counts = stats.records
        presence = 0
        for record in records:
            if record["type"] == "presence":
                presence += 1
            else:
                counts[record["code"] if record["type"] == "error" else record["type"]] += 1
        if presence:
            counts["presence"] += presence
        await queue.put(records)

    async def _batches(
        self, target: Target, source: UidInput, stats: SweepStats
    ) -> AsyncGenerator[Batch | Rejected, None]:
        cfg = self.config.sweep
        batcher = Batcher(
            target,
            dedupe=cfg.dedupe,
            max_uid_bytes=cfg.max_uid_bytes,
            compact=_compact(source) if cfg.dedupe else False,
        )
        try:
            async for chunk in iter_chunks(source):
                stats.uids_seen += len(chunk.uids)
                for i, uid in enumerate(chunk.uids):
                    out = batcher.add(uid)
                    if out is None:
                        continue
                    if isinstance(out, Rejected) and chunk.lines is not None:
                        out = dataclasses.replace(out, where=chunk.where(i))
                    yield out
            last = batcher.flush()
            if last is not None:
                yield last
        finally:
            stats.duplicates_in_input += batcher.duplicates

    async def _run_batch(
        self, batch: Batch, state: _State, queue: asyncio.Queue[list[Record] | None]
    ) -> None:
        assert self._inflight is not None and self._rate is not None and self._fetcher
        stats = state.stats
        try:
            try:
                records = await self._attempts(batch, state)
                records = await self._repoll_missing(batch, state, records)
            except asyncio.CancelledError:
                if not self._aborting:
                    raise  # the sweep itself is being torn down
                stats.batches_failed += 1
                records = error_records(
                    batch,
                    None,
                    sweep=stats.sweep,
                    polled_at=epoch_ms(),
                    code="Cancelled",
                    message="cancelled in flight: the drain timeout passed",
                )
            await self._emit(queue, stats, records)
        finally:
            self._inflight.release()

    async def _repoll_missing(
        self, batch: Batch, state: _State, records: list[Record]
    ) -> list[Record]:
        """Ask once more for UIDs an answer left out (a partial answer is worth one retry)."""
        missing = [r for r in records if r["type"] == "error" and r["code"] == "MissingInResponse"]
        if not missing or (len(missing) == len(batch.uids) and len(batch.uids) > 1):
            return records  # an answer missing everything is suspicious: keep it as it is
        attempts = max(r.get("attempts", 1) for r in missing)
        if attempts >= self._policy.max_attempts or self._skip_reason(state) is not None:
            return records
        if not self._budget.try_spend():
            return records
        state.stats.retries += 1
        if self.observer is not None:
            self.observer.retried("MissingInResponse")
        sub = Batch(batch.target, tuple(r["uid"] for r in missing))
        again = {r["uid"]: r for r in await self._attempts(sub, state, start=attempts + 1)}
        return [again.get(r["uid"], r) if r["type"] == "error" else r for r in records]

    async def _attempts(self, batch: Batch, state: _State, start: int = 1) -> list[Record]:
        assert self._rate is not None and self._fetcher is not None
        stats = state.stats
        attempts = start - 1
        while True:
            attempts += 1
            if attempts > 1:
                waited = await self._rate.acquire()
                if self.observer is not None:
                    self.observer.rate_waited(waited)
            stats.requests += 1
            started = self._clock.monotonic()
            try:
                answer = await self._fetcher.fetch(batch)
                records = merge_answer(
                    batch,
                    answer.online_users,
                    request_id=answer.request_id,
                    sweep=stats.sweep,
                    polled_at=epoch_ms(),
                    counts=stats.merge,
                )
            except PollerError as err:
                if self.observer is not None:
                    self.observer.request_done(outcome_of(err), self._clock.monotonic() - started)
                if isinstance(err, ThrottledError):
                    stats.throttled += 1
                    self._rate.on_throttled(err.retry_after_s)
                if isinstance(err, PermissionDenied):
                    stats.forbidden_requests += 1
                if err.fatal:
                    if stats.fatal is None:
                        stats.fatal = err
                        log.error("stopping the sweep: %s", err)
                elif self._policy.should_retry(err, attempts) and self._skip_reason(state) is None:
                    delay = self._policy.backoff_s(err, attempts, self._rng)
                    if state.deadline is not None and (
                        self._clock.monotonic() + delay >= state.deadline
                    ):
                        if start == 1:
                            stats.batches_failed += 1
                        return error_records(
                            batch,
                            err,
                            sweep=stats.sweep,
                            polled_at=epoch_ms(),
                            attempts=attempts,
                            code="DeadlineExceeded",
                            message=f"the sweep deadline passed while retrying ({err.code})",
                        )
                    if self._budget.try_spend():
                        stats.retries += 1
                        if self.observer is not None:
                            self.observer.retried(err.code)
                        await self._clock.sleep(delay)
                        continue
                if start == 1:
                    stats.batches_failed += 1
                return error_records(
                    batch, err, sweep=stats.sweep, polled_at=epoch_ms(), attempts=attempts
                )
            if self.observer is not None:
                self.observer.request_done("ok", self._clock.monotonic() - started)
            if start == 1:
                stats.batches_ok += 1
            if attempts > 1:
                for rec in records:
                    if rec["type"] == "error":
                        rec["attempts"] = attempts
            return records


async def _interleave(
    streams: list[AsyncGenerator[Batch | Rejected, None]],
) -> AsyncGenerator[Batch | Rejected, None]:
    """Round-robin over several batch streams so that no target starves another."""
    active = list(streams)
    try:
        while active:
            for stream in list(active):
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    active.remove(stream)
                    continue
                yield item
    finally:
        for stream in active:
            await stream.aclose()


def _compact(source: UidInput) -> bool | None:
    """How to de-duplicate a source (see :class:`~poller.core.batching.Batcher`)."""
    if isinstance(source, UidFile):
        try:
            # ~16 bytes a line for typical IDs: past COMPACT_AFTER lines, start compact.
            return True if source.path.stat().st_size > 16 * COMPACT_AFTER else None
        except OSError:
            return None
    if isinstance(source, list | tuple):
        return False  # the caller holds these strings anyway: a plain set adds the least
    return None


def _collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error that explains a failed sweep, instead of a TaskGroup's exception group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    if len(leaves) == 1:
        return leaves[0]
    return next((e for e in leaves if isinstance(e, PollerError)), group)


def _rejected_record(item: Rejected, sweep: int) -> ErrorRecord:
    message = item.reason if item.where is None else f"{item.reason} ({item.where})"
    return ErrorRecord(
        type="error",
        sweep=sweep,
        app_id=item.target.app_id,
        group_id=item.target.group_id,
        uid=item.uid,
        code="InvalidUserId",
        message=message,
        polled_at=epoch_ms(),
    )
