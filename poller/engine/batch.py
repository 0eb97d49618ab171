"""One batch's life, from its granted rate slot to the records it emits.

The batch is fetched and merged through the shared retry loop (:class:`~poller.core.retry.
Retrier`); user IDs a good answer left out are asked for once more; a failure becomes one error
record per UID; a batch cancelled by :meth:`~poller.engine.poller.Poller.abort_in_flight`
still yields ``Cancelled`` records. Whatever happens, every UID of the batch gets one record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from poller.core.clock import Clock, epoch_ms
from poller.core.errors import PollerError
from poller.core.merge import merge_answer
from poller.core.ratelimit import RateMeter
from poller.core.records import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    MISSING_IN_RESPONSE,
    Batch,
    Record,
    error_records,
)
from poller.core.retry import Outcome, Retrier
from poller.core.stats import SweepStats
from poller.wire.client import BatchFetcher

__all__ = ["StopControl", "SweepContext", "poll_batch"]

log = logging.getLogger("poller")


@dataclass(slots=True)
class StopControl:
    """A poller's stop flags and its in-flight batch tasks."""

    stopping: bool = False
    aborting: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    #: The message of the ``Cancelled`` records of batches cut off in flight.
    abort_message: str = "cancelled in flight: the drain timeout passed"

    def abort(self, message: str | None = None) -> None:
        if message is not None:
            self.abort_message = message
        self.stopping = self.aborting = True
        for task in list(self.tasks):
            task.cancel()


@dataclass(slots=True)
class SweepContext:
    """What the batches of one sweep share."""

    stats: SweepStats
    deadline: float | None
    fetcher: BatchFetcher
    retrier: Retrier
    #: The rate meter of each API action the sweep polls.
    meters: Mapping[str, RateMeter]
    clock: Clock
    control: StopControl
    #: Which UIDs this sweep polls (a fleet member's shards); ``None``: all of them.
    keep: Callable[[str], bool] | None = None

    def skip_reason(self) -> tuple[str, str] | None:
        """Why no further request of this sweep may start, if one may not."""
        stats = self.stats
        if stats.fatal is not None:
            return stats.fatal.code, f"not sent: {stats.fatal.message}"
        if self.control.stopping:
            stats.stopped = True
            return CANCELLED, "not sent: poller is stopping"
        if self.deadline is not None and self.clock.monotonic() >= self.deadline:
            return DEADLINE_EXCEEDED, "not sent: the sweep deadline passed"
        return None

    def stopping(self) -> bool:
        return self.skip_reason() is not None

    def unsent(self, batch: Batch, reason: tuple[str, str]) -> list[Record]:
        """Records for a batch that was never sent."""
        self.stats.batches_failed += 1
        return self.failed(batch, None, code=reason[0], message=reason[1], attempts=0)

    def failed(
        self,
        batch: Batch,
        error: PollerError | None,
        *,
        code: str | None = None,
        message: str | None = None,
        attempts: int | None = None,
    ) -> list[Record]:
        return error_records(
            batch,
            error,
            sweep=self.stats.sweep,
            polled_at=epoch_ms(self.clock),
            attempts=attempts,
            code=code,
            message=message,
        )


async def poll_batch(ctx: SweepContext, batch: Batch, slot_wait_s: float) -> list[Record]:
    """Every UID's record for ``batch``, whose first rate slot was granted after
    ``slot_wait_s`` seconds."""
    try:
        records = await _attempts(ctx, batch, slot_wait_s=slot_wait_s)
        return await _repoll_missing(ctx, batch, records)
    except asyncio.CancelledError:
        if not ctx.control.aborting:
            raise  # the sweep itself is being torn down
        ctx.stats.batches_failed += 1
        return ctx.failed(batch, None, code=CANCELLED, message=ctx.control.abort_message)


async def _attempts(
    ctx: SweepContext,
    batch: Batch,
    *,
    slot_wait_s: float | None = None,
    attempt: int = 1,
    retry_of: str | None = None,
) -> list[Record]:
    stats = ctx.stats
    first = attempt == 1

    async def fetch() -> list[Record]:
        answer = await ctx.fetcher.fetch(batch)
        return merge_answer(
            batch,
            answer.online_users,
            request_id=answer.request_id,
            sweep=stats.sweep,
            polled_at=epoch_ms(ctx.clock),
            counts=stats.merge,
        )

    outcome = await ctx.retrier.run(
        fetch,
        ctx.meters[batch.target.api],
        action=batch.target.api,
        sweep=stats.sweep,
        attempt=attempt,
        retry_of=retry_of,
        slot_wait_s=slot_wait_s,
        stopping=ctx.stopping,
        deadline=ctx.deadline,
    )
    if outcome.error is None:
        if first:
            stats.batches_ok += 1
        records = outcome.value or []
        if outcome.attempts > 1:
            for rec in records:
                if rec["type"] == "error":
                    rec["attempts"] = outcome.attempts
        return records
    if first:
        stats.batches_failed += 1
    return _failure_records(ctx, batch, outcome)


def _failure_records(ctx: SweepContext, batch: Batch, outcome: Outcome[Any]) -> list[Record]:
    err = outcome.error
    assert err is not None
    if err.fatal and ctx.stats.fatal is None:
        ctx.stats.fatal = err
        log.error("stopping the sweep: %s", err)
    if outcome.deadline:
        return ctx.failed(
            batch,
            err,
            attempts=outcome.attempts,
            code=DEADLINE_EXCEEDED,
            message=f"the sweep deadline passed while retrying ({err.code})",
        )
    return ctx.failed(batch, err, attempts=outcome.attempts)


async def _repoll_missing(ctx: SweepContext, batch: Batch, records: list[Record]) -> list[Record]:
    """Ask once more for UIDs an answer left out (a partial answer is worth one retry)."""
    missing = [r for r in records if r["type"] == "error" and r["code"] == MISSING_IN_RESPONSE]
    if not missing or (len(missing) == len(batch.uids) and len(batch.uids) > 1):
        return records  # an answer missing everything is suspicious: keep it as it is
    attempts = max(r.get("attempts", 1) for r in missing)
    if attempts >= ctx.retrier.policy.max_attempts or ctx.stopping():
        return records
    if not ctx.retrier.spend():
        return records
    sub = Batch(batch.target, tuple(r["uid"] for r in missing))
    again = await _attempts(ctx, sub, attempt=attempts + 1, retry_of=MISSING_IN_RESPONSE)
    by_uid = {r["uid"]: r for r in again}
    return [by_uid.get(r["uid"], r) if r["type"] == "error" else r for r in records]
